//! `keycard bundle`: the trust domain's own bundle (`show`), and the foreign bundles the
//! server holds (`set`, `list`, `delete`; static federation without an endpoint).

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;
use serde_json::json;

use super::federation::read_input;
use super::output::emit;
use super::{CliError, Connection, client};
use crate::server::admin::pb;

/// Bundle formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BundleFormatArg {
    /// X.509 authorities as PEM certificates.
    Pem,
    /// SPIFFE bundle JSON (X.509 and JWT authorities).
    Spiffe,
}

/// What to do with the bundle.
#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Print the trust domain's bundle.
    Show {
        /// Format of the bundle.
        #[arg(long, value_enum, default_value_t = BundleFormatArg::Pem)]
        format: BundleFormatArg,
    },
    /// Store (or replace) a foreign trust domain's bundle: its workloads' SVIDs are then
    /// trusted by entries that federate with it.
    Set {
        /// The foreign trust domain, for example example.com.
        #[arg(long, value_name = "TRUST_DOMAIN")]
        trust_domain: String,
        /// The bundle: SPIFFE bundle JSON or PEM certificates (`-`: standard input).
        #[arg(long, value_name = "FILE")]
        path: PathBuf,
    },
    /// List every foreign bundle held.
    List,
    /// Delete a foreign bundle set by hand (one kept by a federation relationship goes
    /// with `federation delete`).
    Delete {
        /// The foreign trust domain.
        #[arg(long, value_name = "TRUST_DOMAIN")]
        trust_domain: String,
    },
}

fn foreign_json(b: &pb::ForeignBundle) -> serde_json::Value {
    let bundle = serde_json::from_str(&b.json).unwrap_or_else(|_| json!(b.json));
    json!({
        "trust_domain": b.trust_domain,
        "sequence": b.sequence,
        "x509_authorities": b.x509_authorities,
        "jwt_authorities": b.jwt_authorities,
        "federated": b.federated,
        "bundle": bundle,
    })
}

fn foreign_text(b: &pb::ForeignBundle) -> String {
    let source = if b.federated { "federation relationship" } else { "set by hand" };
    format!(
        "Trust domain : {}\nSequence     : {}\nAuthorities  : {} X.509, {} JWT\nKept by      : {source}\n\n",
        b.trust_domain, b.sequence, b.x509_authorities, b.jwt_authorities
    )
}

/// Runs one bundle command.
pub(super) async fn run(
    conn: &Connection,
    command: BundleCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let mut c = client::connect(conn).await?;
    let reply = match command {
        BundleCommand::Show { format } => return show(conn, format, out).await,
        BundleCommand::Set { trust_domain, path } => {
            let bundle = read_input(&path, "bundle file", "--path")?;
            let req = pb::SetForeignBundleRequest { trust_domain, bundle };
            c.api.set_foreign_bundle(req).await.map_err(|s| c.fail(s))?.into_inner()
        }
        BundleCommand::Delete { trust_domain } => {
            let req = pb::TrustDomainRequest { trust_domain };
            c.api.delete_foreign_bundle(req).await.map_err(|s| c.fail(s))?.into_inner()
        }
        BundleCommand::List => {
            let req = pb::ListForeignBundlesRequest {};
            let list = c.api.list_foreign_bundles(req).await.map_err(|s| c.fail(s))?.into_inner();
            let text = || match list.bundles.is_empty() {
                true => "No foreign bundles.\n".to_owned(),
                false => list.bundles.iter().map(foreign_text).collect(),
            };
            let json = || json!(list.bundles.iter().map(foreign_json).collect::<Vec<_>>());
            return emit(out, conn.output, text, json).map_err(Into::into);
        }
    };
    emit(out, conn.output, || foreign_text(&reply), || foreign_json(&reply)).map_err(Into::into)
}

/// `bundle show`. Text output is the bundle itself, ready to save to a file.
async fn show(
    conn: &Connection,
    format: BundleFormatArg,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let mut c = client::connect(conn).await?;
    let wire = match format {
        BundleFormatArg::Pem => pb::BundleFormat::Pem,
        BundleFormatArg::Spiffe => pb::BundleFormat::Spiffe,
    };
    let req = pb::GetBundleRequest { format: wire.into() };
    let reply = c.api.get_bundle(req).await.map_err(|s| c.fail(s))?.into_inner();
    let text = || {
        let mut text = reply.text.clone();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text
    };
    let json = || {
        // The SPIFFE form is JSON already: embed it as a document, not as a string.
        let bundle = match format {
            BundleFormatArg::Spiffe => {
                serde_json::from_str(&reply.text).unwrap_or_else(|_| json!(reply.text))
            }
            BundleFormatArg::Pem => json!(reply.text),
        };
        json!({
            "trust_domain": reply.trust_domain,
            "sequence": reply.sequence,
            "bundle": bundle,
        })
    };
    emit(out, conn.output, text, json).map_err(Into::into)
}

//! `keycard bundle show`.

use std::io::Write;

use clap::Subcommand;
use serde_json::json;

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
}

/// Runs one bundle command. Text output is the bundle itself, ready to save to a file.
pub(super) async fn run(
    conn: &Connection,
    command: BundleCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let BundleCommand::Show { format } = command;
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

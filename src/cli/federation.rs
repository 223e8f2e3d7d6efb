//! `keycard federation`: relationships with foreign trust domains' bundle endpoints.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::output::{emit, time_text};
use super::{CliError, Connection, client};
use crate::server::admin::pb;

/// How a foreign bundle endpoint authenticates itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProfileArg {
    /// The endpoint presents an X509-SVID (--endpoint-spiffe-id), checked against the
    /// foreign domain's bundle (bootstrapped with --trust-domain-bundle).
    #[value(name = "https_spiffe")]
    HttpsSpiffe,
    /// Ordinary Web PKI: the system roots, or --ca-file.
    #[value(name = "https_web")]
    HttpsWeb,
}

impl ProfileArg {
    fn name(self) -> &'static str {
        match self {
            Self::HttpsSpiffe => "https_spiffe",
            Self::HttpsWeb => "https_web",
        }
    }
}

/// Flags naming one relationship.
#[derive(Debug, Args)]
pub struct TrustDomainArg {
    /// The foreign trust domain, for example example.com.
    #[arg(long, value_name = "TRUST_DOMAIN")]
    pub trust_domain: String,
}

/// `federation create` and `federation update` flags.
#[derive(Debug, Args)]
pub struct RelationshipArgs {
    /// The foreign trust domain, for example example.com.
    #[arg(long, value_name = "TRUST_DOMAIN")]
    pub trust_domain: String,
    /// Its bundle endpoint, for example https://example.com:8443/.
    #[arg(long, value_name = "URL")]
    pub bundle_endpoint_url: String,
    /// How the endpoint authenticates itself.
    #[arg(long, value_enum, value_name = "PROFILE")]
    pub bundle_endpoint_profile: ProfileArg,
    /// https_spiffe: the SPIFFE ID the endpoint presents, for example
    /// spiffe://example.com/keycard/server.
    #[arg(long, value_name = "ID")]
    pub endpoint_spiffe_id: Option<String>,
    /// https_spiffe: the foreign domain's bundle, obtained out of band (SPIFFE bundle JSON
    /// or PEM; `-`: standard input), to authenticate the endpoint the first time.
    #[arg(long, value_name = "FILE")]
    pub trust_domain_bundle: Option<PathBuf>,
    /// https_web: PEM CA certificates to trust instead of the system roots.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

/// What to do with federation relationships.
#[derive(Debug, Subcommand)]
pub enum FederationCommand {
    /// Create a relationship: the server fetches the domain's bundle now and then at its
    /// refresh hint.
    Create(RelationshipArgs),
    /// Replace a relationship's endpoint, profile or bootstrap bundle.
    Update(RelationshipArgs),
    /// List every relationship.
    List,
    /// Show one relationship and its last fetch.
    Show(TrustDomainArg),
    /// Delete a relationship and the bundle held for it: workloads stop receiving it.
    Delete(TrustDomainArg),
    /// Fetch the domain's bundle now; fails with the reason when the fetch fails.
    Refresh(TrustDomainArg),
}

/// Reads a file named by a flag (`-`: standard input).
pub(super) fn read_input(
    path: &Path,
    what: &'static str,
    flag: &'static str,
) -> Result<Vec<u8>, CliError> {
    let fail = |source| CliError::InputFile { what, flag, path: path.to_path_buf(), source };
    if path == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut bytes).map_err(fail)?;
        return Ok(bytes);
    }
    std::fs::read(path).map_err(fail)
}

fn request(args: &RelationshipArgs) -> Result<pb::FederationRequest, CliError> {
    let read = |p: &Option<PathBuf>, what, flag| {
        p.as_deref().map(|p| read_input(p, what, flag)).transpose().map(Option::unwrap_or_default)
    };
    Ok(pb::FederationRequest {
        trust_domain: args.trust_domain.clone(),
        bundle_endpoint_url: args.bundle_endpoint_url.clone(),
        bundle_endpoint_profile: args.bundle_endpoint_profile.name().to_owned(),
        endpoint_spiffe_id: args.endpoint_spiffe_id.clone().unwrap_or_default(),
        trust_domain_bundle: read(
            &args.trust_domain_bundle,
            "bundle file",
            "--trust-domain-bundle",
        )?,
        ca_pem: read(&args.ca_file, "CA file", "--ca-file")?,
    })
}

fn optional_time(secs: i64) -> Value {
    if secs == 0 { Value::Null } else { json!(time_text(secs)) }
}

/// The JSON form of a relationship.
pub fn federation_json(f: &pb::Federation) -> Value {
    json!({
        "trust_domain": f.trust_domain,
        "bundle_endpoint_url": f.bundle_endpoint_url,
        "bundle_endpoint_profile": f.bundle_endpoint_profile,
        "endpoint_spiffe_id": (!f.endpoint_spiffe_id.is_empty()).then_some(&f.endpoint_spiffe_id),
        "custom_ca": f.custom_ca,
        "created_at": time_text(f.created_at),
        "updated_at": time_text(f.updated_at),
        "next_refresh_at": time_text(f.next_refresh_at),
        "last_attempt_at": optional_time(f.last_attempt_at),
        "last_success_at": optional_time(f.last_success_at),
        "last_error": (!f.last_error.is_empty()).then_some(&f.last_error),
        "bundle_held": f.bundle_held,
        "bundle_sequence": f.bundle_sequence,
        "x509_authorities": f.x509_authorities,
        "jwt_authorities": f.jwt_authorities,
    })
}

/// The text form of a relationship: one `Label : value` line per field, a blank line after.
pub fn federation_text(f: &pb::Federation) -> String {
    let mut lines = vec![
        format!("Trust domain     : {}", f.trust_domain),
        format!("Endpoint URL     : {}", f.bundle_endpoint_url),
        format!("Endpoint profile : {}", f.bundle_endpoint_profile),
    ];
    if !f.endpoint_spiffe_id.is_empty() {
        lines.push(format!("Endpoint ID      : {}", f.endpoint_spiffe_id));
    }
    if f.bundle_endpoint_profile == "https_web" {
        let roots = if f.custom_ca { "the CA file given" } else { "system roots" };
        lines.push(format!("Trusted roots    : {roots}"));
    }
    if f.bundle_held {
        lines.push(format!(
            "Bundle           : sequence {}, {} X.509 and {} JWT authorities",
            f.bundle_sequence, f.x509_authorities, f.jwt_authorities
        ));
    } else {
        lines.push("Bundle           : none held yet".into());
    }
    if f.last_success_at != 0 {
        lines.push(format!("Last fetched     : {}", time_text(f.last_success_at)));
    }
    if !f.last_error.is_empty() {
        lines.push(format!(
            "Last error       : {} ({})",
            f.last_error,
            time_text(f.last_attempt_at)
        ));
    }
    lines.push(format!("Next refresh     : {}", time_text(f.next_refresh_at)));
    lines.join("\n") + "\n\n"
}

/// Runs one federation command.
pub(super) async fn run(
    conn: &Connection,
    command: FederationCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let mut c = client::connect(conn).await?;
    let one = |f: pb::Federation, out: &mut dyn Write| {
        emit(out, conn.output, || federation_text(&f), || federation_json(&f))
    };
    let td = |a: TrustDomainArg| pb::TrustDomainRequest { trust_domain: a.trust_domain };
    match command {
        FederationCommand::Create(args) => {
            let reply = c.api.create_federation(request(&args)?).await.map_err(|s| c.fail(s))?;
            one(reply.into_inner(), out)?;
        }
        FederationCommand::Update(args) => {
            let reply = c.api.update_federation(request(&args)?).await.map_err(|s| c.fail(s))?;
            one(reply.into_inner(), out)?;
        }
        FederationCommand::Show(a) => {
            let reply = c.api.get_federation(td(a)).await.map_err(|s| c.fail(s))?;
            one(reply.into_inner(), out)?;
        }
        FederationCommand::Delete(a) => {
            let reply = c.api.delete_federation(td(a)).await.map_err(|s| c.fail(s))?;
            one(reply.into_inner(), out)?;
        }
        FederationCommand::Refresh(a) => {
            let reply = c.api.refresh_federation(td(a)).await.map_err(|s| c.fail(s))?;
            one(reply.into_inner(), out)?;
        }
        FederationCommand::List => {
            let req = pb::ListFederationsRequest {};
            let list = c.api.list_federations(req).await.map_err(|s| c.fail(s))?.into_inner();
            let text = || match list.federations.is_empty() {
                true => "No federation relationships.\n".to_owned(),
                false => list.federations.iter().map(federation_text).collect(),
            };
            let json = || json!(list.federations.iter().map(federation_json).collect::<Vec<_>>());
            emit(out, conn.output, text, json)?;
        }
    }
    Ok(())
}

//! `keycard api ...`: a workload's view of the Workload API, from the command line.
//!
//! Every command takes `--socket` as a path or `unix:///path` and falls back to
//! `SPIFFE_ENDPOINT_SOCKET`; `--output json` prints one JSON document (per update, for
//! `watch`). The calls are made as this process, so the agent attests *this* process:
//! run them as the user (or under the program) the identity is meant for.

use std::io::Write;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use clap::{Args, Subcommand};
use keycard_workload_api::client::{ClientError, JwtSvidToken, parse_x509_response};
use keycard_workload_api::{SpiffeId, WorkloadApiClient, X509Context};
use serde_json::{Value, json};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::CliError;
use super::output::{OutputFormat, count_text, emit, time_text};
use crate::secret::Secret;

/// `keycard api`: flags shared by every Workload API command, and the command.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// The Workload API socket: a path or unix:///path (default: $SPIFFE_ENDPOINT_SOCKET).
    #[arg(long, global = true, value_name = "SOCKET")]
    pub socket: Option<String>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: ApiCommand,
}

/// The Workload API commands.
#[derive(Debug, Subcommand)]
pub enum ApiCommand {
    /// Fetch this process's SVIDs or the bundles.
    #[command(subcommand)]
    Fetch(FetchCommand),
    /// Have the agent validate a token.
    #[command(subcommand)]
    Validate(ValidateCommand),
    /// Print this process's X.509-SVIDs now and again after every change, until Ctrl-C.
    Watch {
        /// Stop after this many updates (for scripts).
        #[arg(long, value_name = "N")]
        max_updates: Option<usize>,
    },
}

/// `keycard api fetch ...`.
#[derive(Debug, Subcommand)]
pub enum FetchCommand {
    /// X.509-SVIDs (with their keys) and bundles.
    X509 {
        /// Also write the files `keycard helper` writes into this directory: svid.pem,
        /// svid_key.pem (0600) and svid_bundle.pem for the default SVID, and
        /// svid.N.pem, svid_key.N.pem, svid_bundle.N.pem for any further one; and each
        /// federated bundle as federated_bundle.I.J.pem (SPIRE's names: SVID I from 0,
        /// federated trust domain J in name order).
        #[arg(long, value_name = "DIR")]
        write: Option<PathBuf>,
    },
    /// JWT-SVIDs for one or more audiences.
    Jwt {
        /// Audience the token is for (repeat for several).
        #[arg(long, required = true, value_name = "AUDIENCE")]
        audience: Vec<String>,
        /// Only the identity with this SPIFFE ID (default: one token per identity).
        #[arg(long, value_name = "ID")]
        spiffe_id: Option<SpiffeId>,
    },
    /// The X.509 and JWT bundles.
    Bundles,
    /// What the agent would send Envoy over SDS for these resource names, decoded (keys
    /// withheld).
    Sds {
        /// A resource name: a SPIFFE ID, spiffe://<trust domain>, default, ROOTCA or ALL
        /// (repeat for several; none: everything).
        #[arg(long, value_name = "NAME")]
        name: Vec<String>,
    },
}

/// `keycard api validate ...`.
#[derive(Debug, Subcommand)]
pub enum ValidateCommand {
    /// Validate a JWT-SVID for an audience.
    Jwt {
        /// The audience the token must name.
        #[arg(long, value_name = "AUDIENCE")]
        audience: String,
        /// The token (compact JWS).
        #[arg(long, value_name = "TOKEN", value_parser = non_empty_token)]
        svid: Secret,
        /// Also require the token to be bound (RFC 8705 `cnf`, `--jwt-svid-binding x509`)
        /// to this certificate: a PEM file whose first certificate is the client's leaf, as
        /// a resource server would see it on the TLS connection.
        #[arg(long, value_name = "CERT.pem")]
        bound_to: Option<PathBuf>,
    },
}

/// Checks that the validated token (`id`, `claims`) is bound to the leaf in `path`;
/// returns the leaf's thumbprint.
fn check_bound_to(path: &Path, id: &SpiffeId, claims: &Value) -> Result<String, CliError> {
    let certs = crate::pemfile::read_certificates(path)
        .map_err(|e| CliError::WorkloadApi(format!("--bound-to {}: {e}", path.display())))?;
    let leaf = certs.first().ok_or_else(|| {
        CliError::WorkloadApi(format!("--bound-to {}: no certificate in the file", path.display()))
    })?;
    let svid = keycard_workload_api::JwtSvid {
        spiffe_id: id.clone(),
        audience: Vec::new(),
        expiry: SystemTime::now(),
        claims: claims.as_object().cloned().unwrap_or_default(),
        token: String::new(),
    };
    keycard_workload_api::check_binding(&svid, Some(leaf), keycard_workload_api::Unbound::Refuse)
        .map_err(|e| {
        CliError::WorkloadApi(format!(
            "the JWT-SVID is valid but refused for the certificate in {}: {e}",
            path.display()
        ))
    })?;
    Ok(keycard_workload_api::x5t_s256(leaf))
}

/// `--svid` must hold something: an empty value (often an unset shell variable) is a usage
/// error naming the flag, not a token the agent would call invalid.
fn non_empty_token(value: &str) -> Result<Secret, String> {
    if value.trim().is_empty() {
        Err("the token is empty (is the shell variable you passed set?): give a JWT-SVID, \
             such as one printed by `keycard api fetch jwt --audience AUDIENCE`"
            .into())
    } else {
        Ok(Secret::from(value))
    }
}

/// Runs one Workload API command on a fresh runtime, writing to stdout.
pub fn run_api(args: ApiArgs) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut stdout = std::io::stdout();
    runtime.block_on(execute(args, &mut stdout))
}

/// The advice for a failed Workload API call.
fn advice(error: ClientError) -> CliError {
    use tonic::Code;
    let message = match &error {
        ClientError::Connect { path, reason } => format!(
            "cannot connect to the Workload API at {} ({reason}): is the agent running? start \
             one with `keycard agent run` (or `keycard dev`) and pass its socket with --socket",
            path.display()
        ),
        ClientError::Status(s) if s.code() == Code::PermissionDenied => {
            let uid = std::fs::metadata("/proc/self").map(|m| m.uid().to_string());
            format!(
                "the agent has no identity for this process (uid {}, pid {}): register an entry \
                 whose selectors match it (for example --selector unix:uid:{0}), or run \
                 `keycard agent explain --pid {1}` on the node to see why",
                uid.unwrap_or_else(|_| "?".into()),
                std::process::id()
            )
        }
        _ => error.to_string(),
    };
    CliError::WorkloadApi(message)
}

/// Runs one Workload API command, writing its output to `out`.
pub async fn execute(args: ApiArgs, out: &mut (dyn Write + Send)) -> Result<(), CliError> {
    let format = args.output;
    let started = Instant::now();
    if let ApiCommand::Fetch(FetchCommand::Sds { name }) = args.command {
        return sds::fetch(args.socket.as_deref(), name, format, out).await;
    }
    let mut client = WorkloadApiClient::connect(args.socket.as_deref()).await.map_err(advice)?;
    match args.command {
        ApiCommand::Fetch(FetchCommand::X509 { write }) => {
            let context = client.fetch_x509_context().await.map_err(advice)?;
            let took = started.elapsed();
            if let Some(dir) = &write {
                files::write_files(dir, &context)?;
            }
            emit(
                out,
                format,
                || x509_text(&context, took, write.as_deref()),
                || x509_json(&context),
            )?;
        }
        ApiCommand::Fetch(FetchCommand::Jwt { audience, spiffe_id }) => {
            let svids =
                client.fetch_jwt_svids(&audience, spiffe_id.as_ref()).await.map_err(advice)?;
            emit(out, format, || jwt_text(&svids), || jwt_json(&svids))?;
        }
        ApiCommand::Fetch(FetchCommand::Sds { .. }) => unreachable!("answered above"),
        ApiCommand::Fetch(FetchCommand::Bundles) => {
            let x509 = client.fetch_x509_bundles().await.map_err(advice)?;
            let jwt = client.fetch_jwt_bundles().await.map_err(advice)?;
            let text = || {
                let mut t = String::new();
                for b in x509.iter() {
                    t += &format!(
                        "X.509 bundle of {} ({}):\n{}",
                        b.trust_domain(),
                        count_text(b.len() as u64, "CA", "CAs"),
                        b.to_pem()
                    );
                }
                for b in jwt.iter() {
                    t += &format!(
                        "JWT bundle of {}: {}\n",
                        b.trust_domain(),
                        count_text(b.len() as u64, "key", "keys")
                    );
                }
                t
            };
            let json = || {
                let x: Vec<Value> = x509
                    .iter()
                    .map(|b| json!({"trust_domain": b.trust_domain().to_string(), "pem": b.to_pem()}))
                    .collect();
                let j: Vec<Value> = jwt
                    .iter()
                    .map(|b| json!({"trust_domain": b.trust_domain().to_string(), "keys": b.len()}))
                    .collect();
                json!({"x509": x, "jwt": j})
            };
            emit(out, format, text, json)?;
        }
        ApiCommand::Validate(ValidateCommand::Jwt { audience, svid, bound_to }) => {
            let (id, claims) =
                client.validate_jwt_svid(&audience, svid.expose()).await.map_err(|e| match e {
                    ClientError::Status(s) if s.code() == tonic::Code::InvalidArgument => {
                        CliError::WorkloadApi(format!("the JWT-SVID is not valid: {}", s.message()))
                    }
                    other => advice(other),
                })?;
            let claims = struct_json(&claims);
            let bound = bound_to.as_deref().map(|p| check_bound_to(p, &id, &claims)).transpose()?;
            let text = || {
                let pretty = serde_json::to_string_pretty(&claims).unwrap_or_default();
                let mut t = format!("The JWT-SVID is valid.\nSPIFFE ID: {id}\n");
                if let Some(thumbprint) = &bound {
                    t += &format!("Bound to:  x5t#S256={thumbprint} (the certificate given)\n");
                }
                t + &format!("Claims:    {pretty}\n")
            };
            let json = || {
                let mut doc = json!({"spiffe_id": id.to_string(), "claims": claims});
                if let Some(thumbprint) = &bound {
                    doc["bound_to"] = json!({ "x5t#S256": thumbprint });
                }
                doc
            };
            emit(out, format, text, json)?;
        }
        ApiCommand::Watch { max_updates } => {
            let mut stream = client.watch_x509().await.map_err(advice)?;
            let mut seen = 0;
            while max_updates.is_none_or(|max| seen < max) {
                let Some(msg) = stream.message().await.map_err(|s| advice(s.into()))? else {
                    return Err(CliError::WorkloadApi("the agent closed the stream".into()));
                };
                let context = parse_x509_response(&msg).map_err(advice)?;
                let took = started.elapsed();
                emit(out, format, || x509_text(&context, took, None), || x509_json(&context))?;
                out.flush()?;
                seen += 1;
            }
        }
    }
    Ok(())
}

/// The leaf's validity and serial, for display.
fn leaf_facts(svid: &keycard_workload_api::X509Svid) -> (i64, i64, String) {
    match X509Certificate::from_der(svid.leaf()) {
        Ok((_, cert)) => (
            cert.validity().not_before.timestamp(),
            cert.validity().not_after.timestamp(),
            hex::encode(cert.raw_serial()),
        ),
        Err(_) => (0, 0, String::new()),
    }
}

fn x509_text(context: &X509Context, took: std::time::Duration, written: Option<&Path>) -> String {
    let n = context.svids.len();
    let mut t = format!("Received {n} SVID{} after {took:.1?}\n", if n == 1 { "" } else { "s" });
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs()
        as i64;
    for svid in &context.svids {
        let (not_before, not_after, serial) = leaf_facts(svid);
        t += &format!("\nSPIFFE ID:         {}\n", svid.spiffe_id());
        if let Some(hint) = svid.hint() {
            t += &format!("Hint:              {hint}\n");
        }
        t += &format!("Serial:            {serial}\n");
        t += &format!("SVID valid after:  {}\n", time_text(not_before));
        t += &format!(
            "SVID valid until:  {} ({}s left)\n",
            time_text(not_after),
            (not_after - now).max(0)
        );
        t += &format!("Chain length:      {}\n", svid.cert_chain().len());
    }
    let list = |bundles: Vec<&keycard_workload_api::X509Bundle>| {
        let tds: Vec<String> = bundles
            .iter()
            .map(|b| format!("{} ({})", b.trust_domain(), count_text(b.len() as u64, "CA", "CAs")))
            .collect();
        tds.join(", ")
    };
    t += &format!("\nBundles:           {}\n", list(files::own_bundles(context)));
    let federated = files::federated_bundles(context);
    if !federated.is_empty() {
        t += &format!("Federated bundles: {}\n", list(federated));
    }
    if let Some(dir) = written {
        t += &format!("Written to:        {}\n", dir.display());
    }
    t
}

fn x509_json(context: &X509Context) -> Value {
    let svids: Vec<Value> = context
        .svids
        .iter()
        .map(|svid| {
            let (not_before, not_after, serial) = leaf_facts(svid);
            json!({
                "spiffe_id": svid.spiffe_id().to_string(),
                "hint": svid.hint().unwrap_or_default(),
                "serial": serial,
                "not_before": not_before,
                "not_after": not_after,
                "chain_pem": svid.chain_pem(),
            })
        })
        .collect();
    let bundle = |b: &keycard_workload_api::X509Bundle, federated: bool| json!({"trust_domain": b.trust_domain().to_string(), "federated": federated, "pem": b.to_pem()});
    let own = files::own_bundles(context).into_iter().map(|b| bundle(b, false));
    let federated = files::federated_bundles(context).into_iter().map(|b| bundle(b, true));
    let bundles: Vec<Value> = own.chain(federated).collect();
    json!({"svids": svids, "bundles": bundles})
}

fn jwt_text(svids: &[JwtSvidToken]) -> String {
    svids
        .iter()
        .map(|s| {
            let exp = s.expires_at.map(|t| {
                time_text(
                    t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs() as i64
                )
            });
            format!(
                "token({}) expires {}:\n{}\n",
                s.spiffe_id,
                exp.unwrap_or_else(|| "?".into()),
                s.token
            )
        })
        .collect()
}

fn jwt_json(svids: &[JwtSvidToken]) -> Value {
    let list: Vec<Value> = svids
        .iter()
        .map(|s| {
            let exp = s.expires_at.map(|t| t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs());
            json!({"spiffe_id": s.spiffe_id.to_string(), "token": s.token, "hint": s.hint, "expires_at": exp})
        })
        .collect();
    json!({"svids": list})
}

/// A protobuf `Struct` as JSON.
fn struct_json(s: &prost_types::Struct) -> Value {
    Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), value_json(v))).collect())
}

fn value_json(v: &prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(n)) => {
            serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number)
        }
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StructValue(s)) => struct_json(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value_json).collect()),
    }
}

mod files;
#[cfg(test)]
mod tests;

mod sds;

//! `keycard helper`: the sidecar for programs that read certificates from files.
//!
//! It follows the Workload API (an [`X509Source`]) and, on every rotation, writes into
//! `--cert-dir`, each file atomically: `svid.pem` (the chain, leaf first), `svid_key.pem`
//! (PKCS#8, 0600), `svid_bundle.pem` (the SVID's trust domain bundle, then any federated
//! ones; the names spiffe-helper's examples use, and `keycard api fetch x509 --write`
//! writes the same) and, for each `--jwt-audience A`, `jwt_svid.A.token` (0600). After each write it
//! either starts `--cmd` (the first time) and then sends it `--renew-signal`, or runs
//! `--reload-cmd` through `sh -c`. `--once` writes once and exits (for init containers).
//! With `--health-address`, `/ready` is true while the written SVID is valid.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use keycard_workload_api::client::{ClientError, X509Context};
use keycard_workload_api::{WorkloadApiClient, X509Source};
use tokio::process::{Child, Command};

use crate::shutdown::Shutdown;
use crate::telemetry::health::{self, HealthEndpoints, Readiness};

mod signal;

pub use signal::{RenewSignal, SignalError};

/// How long `helper` waits for the first SVID before giving up.
const FIRST_SVID_TIMEOUT: Duration = Duration::from_secs(60);

/// Flags of `keycard helper`.
#[derive(Debug, Clone, clap::Args)]
pub struct HelperArgs {
    /// The Workload API socket: a path or unix:///path (default: $SPIFFE_ENDPOINT_SOCKET).
    #[arg(long, value_name = "SOCKET")]
    pub socket: Option<String>,
    /// Where to write svid.pem, svid_key.pem and svid_bundle.pem.
    #[arg(long, value_name = "DIR")]
    pub cert_dir: PathBuf,
    /// Write the files once and exit.
    #[arg(long, conflicts_with_all = ["cmd", "reload_cmd"])]
    pub once: bool,
    /// Program to start after the first write; its arguments follow `--`.
    #[arg(long, value_name = "PROGRAM")]
    pub cmd: Option<String>,
    /// Arguments of --cmd.
    #[arg(last = true, value_name = "ARGS")]
    pub cmd_args: Vec<String>,
    /// Signal sent to --cmd after each renewal.
    #[arg(long, value_name = "SIGNAL", default_value = "SIGHUP", requires = "cmd")]
    pub renew_signal: RenewSignal,
    /// Shell command run (sh -c) after each write instead of signalling a child.
    #[arg(long, value_name = "COMMAND", conflicts_with = "cmd")]
    pub reload_cmd: Option<String>,
    /// Also write jwt_svid.<AUDIENCE>.token for this audience (repeatable).
    #[arg(long, value_name = "AUDIENCE")]
    pub jwt_audience: Vec<String>,
    /// Address for /live, /ready and /metrics, ip:port.
    #[arg(long, value_name = "ADDR")]
    pub health_address: Option<std::net::SocketAddr>,
}

/// Why the helper stopped.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    /// The Workload API failed.
    #[error("Workload API: {0}")]
    WorkloadApi(#[from] ClientError),
    /// No SVID came in time.
    #[error("no SVID from the agent within {0:?}: is an entry registered for this process?")]
    NoSvid(Duration),
    /// The context holds no SVID.
    #[error("the agent sent no SVID")]
    Empty,
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The child could not be started or signalled.
    #[error("--cmd {program}: {reason}")]
    Child {
        /// The program.
        program: String,
        /// What went wrong.
        reason: String,
    },
    /// The reload command failed.
    #[error("--reload-cmd failed: {0}")]
    Reload(String),
    /// The health endpoints could not be bound.
    #[error(transparent)]
    Health(#[from] health::HealthError),
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), HelperError> {
    crate::fsutil::write_atomic(path, bytes, mode)
        .map_err(|source| HelperError::Write { path: path.display().to_string(), source })
}

/// The chain file's name (leaf first, PEM).
pub const SVID_FILE: &str = "svid.pem";
/// The private key file's name (PKCS#8 PEM, 0600).
pub const KEY_FILE: &str = "svid_key.pem";
/// The bundle file's name (the SVID's own trust domain first, then federated ones).
pub const BUNDLE_FILE: &str = "svid_bundle.pem";

/// `name` with `.N` before its extension (`svid.pem`, 1: `svid.1.pem`); `name` for `None`.
pub fn numbered(name: &str, index: Option<usize>) -> String {
    match (index, name.rsplit_once('.')) {
        (Some(i), Some((stem, ext))) => format!("{stem}.{i}.{ext}"),
        _ => name.to_owned(),
    }
}

/// Writes `svid`, its key (0600) and the bundles (its own trust domain's first) into
/// `dir` under the helper's file names, numbered by `index` when given; the key first, so
/// that a reader that sees the new certificate finds its key already there.
pub fn write_svid_files(
    dir: &Path,
    svid: &keycard_workload_api::X509Svid,
    bundles: &keycard_workload_api::X509BundleSet,
    index: Option<usize>,
) -> Result<(), HelperError> {
    let own = svid.spiffe_id().trust_domain();
    let mut bundle_pem = bundles.get(&own).map(|b| b.to_pem()).unwrap_or_default();
    for other in bundles.iter().filter(|b| *b.trust_domain() != own) {
        bundle_pem.push_str(&other.to_pem());
    }
    write(&dir.join(numbered(KEY_FILE, index)), svid.key_pem().as_bytes(), 0o600)?;
    write(&dir.join(numbered(SVID_FILE, index)), svid.chain_pem().as_bytes(), 0o644)?;
    write(&dir.join(numbered(BUNDLE_FILE, index)), bundle_pem.as_bytes(), 0o644)
}

/// Writes the default SVID, its key and the bundles into `dir`; returns the leaf's expiry.
pub fn write_x509_files(dir: &Path, context: &X509Context) -> Result<SystemTime, HelperError> {
    let svid = context.default_svid().ok_or(HelperError::Empty)?;
    write_svid_files(dir, svid, &context.bundles, None)?;
    Ok(leaf_expiry(svid.leaf()).unwrap_or(SystemTime::UNIX_EPOCH))
}

fn leaf_expiry(leaf: &[u8]) -> Option<SystemTime> {
    use x509_parser::prelude::FromDer as _;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf).ok()?;
    let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// A file-name-safe form of an audience.
fn audience_file(audience: &str) -> String {
    let safe: String = audience
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' })
        .collect();
    format!("jwt_svid.{safe}.token")
}

/// Fetches and writes one JWT-SVID per audience.
async fn write_jwt_files(args: &HelperArgs) -> Result<(), HelperError> {
    if args.jwt_audience.is_empty() {
        return Ok(());
    }
    let mut client = WorkloadApiClient::connect(args.socket.as_deref()).await?;
    for audience in &args.jwt_audience {
        let svids = client.fetch_jwt_svids(std::slice::from_ref(audience), None).await?;
        let token = svids.first().ok_or(HelperError::Empty)?;
        write(&args.cert_dir.join(audience_file(audience)), token.token.as_bytes(), 0o600)?;
    }
    Ok(())
}

/// Writes everything; logs what it wrote.
async fn write_all(args: &HelperArgs, context: &X509Context) -> Result<SystemTime, HelperError> {
    let expiry = write_x509_files(&args.cert_dir, context)?;
    write_jwt_files(args).await?;
    if let Some(svid) = context.default_svid() {
        tracing::info!(spiffe_id = %svid.spiffe_id(), dir = %args.cert_dir.display(), "wrote the SVID files");
    }
    Ok(expiry)
}

/// Starts `--cmd` with default signal dispositions and an empty signal mask, so that it
/// can trap `--renew-signal` even when the helper runs under `nohup`.
fn start_child(args: &HelperArgs, program: &str) -> Result<Child, HelperError> {
    let mut command = Command::new(program);
    command.args(&args.cmd_args).stdin(Stdio::null()).kill_on_drop(true);
    signal::reset_in_child(&mut command);
    command
        .spawn()
        .map_err(|e| HelperError::Child { program: program.into(), reason: e.to_string() })
}

/// Runs `--reload-cmd` through `sh -c`, with the same signal state as `--cmd` gets.
async fn reload(command: &str) -> Result<(), HelperError> {
    let mut shell = Command::new("sh");
    shell.args(["-c", command]);
    signal::reset_in_child(&mut shell);
    let status = shell.status().await.map_err(|e| HelperError::Reload(e.to_string()))?;
    if status.success() {
        Ok(())
    } else {
        Err(HelperError::Reload(format!("{command:?} exited with {status}")))
    }
}

/// Runs the helper until `shutdown`, the child's exit, or (with `--once`) the first write.
pub async fn run(args: HelperArgs, shutdown: Shutdown) -> Result<(), HelperError> {
    std::fs::create_dir_all(&args.cert_dir).map_err(|source| HelperError::Write {
        path: args.cert_dir.display().to_string(),
        source,
    })?;
    let source = tokio::time::timeout(FIRST_SVID_TIMEOUT, X509Source::new(args.socket.as_deref()))
        .await
        .map_err(|_| HelperError::NoSvid(FIRST_SVID_TIMEOUT))??;
    let mut updates = source.updated();
    let first = updates.borrow_and_update().clone();
    let expiry = Arc::new(AtomicU64::new(0));
    let set_expiry = |at: SystemTime| {
        let secs = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
        expiry.store(secs, Ordering::Relaxed);
    };
    set_expiry(write_all(&args, &first).await?);
    if args.once {
        return Ok(());
    }
    if let Some(addr) = args.health_address {
        let listener = health::bind(addr).await?;
        let bound = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(address = %bound, "health endpoints listening");
        let expiry = expiry.clone();
        let readiness = Arc::new(move || {
            let at = SystemTime::UNIX_EPOCH + Duration::from_secs(expiry.load(Ordering::Relaxed));
            if at > SystemTime::now() {
                Readiness::ready()
            } else {
                Readiness::not_ready("the written SVID is expired")
            }
        });
        let endpoints = HealthEndpoints { readiness, metrics: Arc::new(String::new) };
        tokio::spawn(health::serve(listener, endpoints, shutdown.wait()));
    }
    let mut child = match &args.cmd {
        Some(program) => Some(start_child(&args, program)?),
        None => None,
    };
    loop {
        tokio::select! {
            () = shutdown.wait() => break,
            status = async { match child.as_mut() { Some(c) => c.wait().await, None => std::future::pending().await } } => {
                let program = args.cmd.clone().unwrap_or_default();
                let reason = match status { Ok(s) => format!("exited with {s}"), Err(e) => e.to_string() };
                return Err(HelperError::Child { program, reason });
            }
            changed = updates.changed() => {
                if changed.is_err() { break; }
                let context = updates.borrow_and_update().clone();
                if context.svids.is_empty() {
                    // The agent revoked this process's identity: keep waiting for one.
                    tracing::warn!("the agent no longer issues an SVID to this process; files left as they were");
                    set_expiry(SystemTime::UNIX_EPOCH);
                    continue;
                }
                set_expiry(write_all(&args, &context).await?);
                if let Some(c) = &child {
                    let pid = c.id().unwrap_or(0);
                    signal::send(pid, args.renew_signal).map_err(|e| HelperError::Child {
                        program: args.cmd.clone().unwrap_or_default(),
                        reason: e.to_string(),
                    })?;
                    tracing::info!(pid, signal = ?args.renew_signal, "signalled the child after a renewal");
                } else if let Some(command) = &args.reload_cmd {
                    reload(command).await?;
                }
            }
        }
    }
    if let Some(c) = &child
        && let Some(pid) = c.id()
    {
        // Pass the stop on to the child, then give it a moment.
        let _ = signal::send(pid, RenewSignal::Term);
    }
    if let Some(mut c) = child {
        let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
    }
    Ok(())
}

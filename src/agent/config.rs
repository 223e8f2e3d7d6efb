//! The agent's configuration: a TOML file (`--config`) and command-line flags that
//! override it, checked at start-up into an [`AgentConfig`]. Unknown keys and bad values
//! stop the agent with a message that names the key ([`ConfigError`]).
//!
//! Relative paths are relative to the agent's working directory. Durations are humantime
//! strings (`5s`, `1m`).
//!
//! | Key | Default | Meaning |
//! |-----|---------|---------|
//! | `trust_domain` | required | Trust domain of the server, e.g. `example.org` (`--trust-domain`) |
//! | `server_address` | required | The server's agent API, `host:port`, or a list of servers sharing one datastore (`["10.0.0.1:8081", "10.0.0.2:8081"]`): the agent talks to one and moves to the next when it stops answering (`--server-address`, repeatable) |
//! | `server_request_timeout` | `30s` | Deadline of each call to the server (and of each dial); a server that does not answer within it is left for the next one listed |
//! | `trust_bundle_path` | none | PEM file of the server's trust bundle, used to authenticate the server until the agent has the bundle from the server itself (`--trust-bundle`) |
//! | `insecure_bootstrap` | `false` | Trust whatever server answers on the first connection (no bundle needed); logs a warning. Development only (`--insecure-bootstrap`) |
//! | `join_token` | none | Single-use join token for node attestation (`--join-token`) |
//! | `[x509pop]` `cert_file`, `key_file` | none | Node certificate (chain) and PKCS#8 key for x509pop attestation; the agent re-attests with them by itself when it must (`--x509pop-cert`, `--x509pop-key`) |
//! | `socket_path` | `/tmp/keycard-agent/public/api.sock` | Workload API socket, a path or `unix:///path` (`--socket-path`) |
//! | `admin_socket` | `<data_dir>/private/admin.sock` | Agent admin socket (for `keycard agent explain`), 0600 in a 0700 dir (`--agent-admin-socket`) |
//! | `data_dir` | `.keycard/agent` | Agent SVID, key and bundle (0600 files in a 0700 dir) (`--data-dir`) |
//! | `sync_interval` | `5s` | Time between syncs with the server while it answers |
//! | `workload_key_type` | `ec-p256` | Key type of workload SVIDs: `ec-p256`, `ec-p384` or `ed25519` |
//! | `disk_cache` | `false` | Keep workload SVIDs on disk (`<data_dir>/cache`), so that an agent restarted while the server is down still serves them |
//! | `unix_sha256` | `false` | Add `unix:sha256:<hex>` of each caller's executable to its selectors |
//! | `unix_sha256_max_size` | `67108864` | Largest executable hashed for `unix:sha256`, in bytes |
//! | `[workload_api]` `enabled` | `true` | Serve the SPIFFE Workload API on `socket_path`; `false` leaves only SDS there (calls get `Unimplemented`) |
//! | `[sds]` `enabled` | `true` | Serve Envoy's Secret Discovery Service (SDS v3) on `socket_path`, attested like the Workload API, without its security header ([`sds`](crate::agent::sds)) |
//! | `[sds]` `default_svid_name`, `default_bundle_name`, `default_all_bundles_name` | `default`, `ROOTCA`, `ALL` | SDS resource names of the caller's first SVID, of the own trust bundle, and of every bundle as one SPIFFE validator (SPIRE's names and keys); none may start with `spiffe://` |
//! | `[sds]` `max_streams_per_caller` | `256` | SDS streams one process may hold open (Envoy opens one per secret name) |
//! | `[workload_api]` `max_connections`, `max_connections_per_uid`, `first_request_timeout` | `8192`, `512`, `10s` | Caps on Workload API connections, in all and per uid, and the time a connection has to make its first request ([`limits`]) |
//! | `health_address` | none | `ip:port` for `/live`, `/ready` and `/metrics` (`--health-address`) |
//! | `log_format` | `text` | `text` or `json` (`--log-format`) |
//! | `log_level` | `info` | Level or filter directive; `RUST_LOG` overrides it (`--log-level`) |

use std::path::{Path, PathBuf};
use std::time::Duration;
use std::{fmt, net::SocketAddr};

use keycard_workload_api::TrustDomain;

use super::attest::UnixAttestorOptions;
use crate::ca::KeyType;
pub use crate::config::ConfigError;
use crate::config::{load_toml, parse_positive_duration, parse_socket_addr, parse_value};
use crate::secret::Secret;
use crate::telemetry::logging::{self, LogFormat};
use crate::unixsock::MAX_SOCKET_PATH_LEN;
use file::{FileConfig, FileX509Pop};

/// Name of this configuration in error messages.
const CONFIG: &str = "agent";
/// Default Workload API socket (SPIRE's layout: a `public` directory anyone may enter).
pub const DEFAULT_SOCKET_PATH: &str = "/tmp/keycard-agent/public/api.sock";
/// Default data directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = ".keycard/agent";
/// Default time between syncs.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(5);

/// The agent admin socket used when none is configured: `<data_dir>/private/admin.sock`.
pub fn default_admin_socket(data_dir: &Path) -> PathBuf {
    data_dir.join("private").join("admin.sock")
}

/// Command-line flags of `keycard agent run`; each overrides the same key of the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AgentArgs {
    /// TOML configuration file (see conf/agent.toml).
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Trust domain, such as example.org (key trust_domain).
    #[arg(long, value_name = "NAME")]
    pub trust_domain: Option<TrustDomain>,
    /// The server's agent API, host:port; repeat it to list several servers, tried in
    /// order when one stops answering (key server_address).
    #[arg(long, value_name = "HOST:PORT")]
    pub server_address: Vec<String>,
    /// PEM trust bundle that authenticates the server at first contact (key trust_bundle_path).
    #[arg(long, value_name = "FILE")]
    pub trust_bundle: Option<PathBuf>,
    /// Trust the first server that answers, without a bundle: development only (key insecure_bootstrap).
    #[arg(long)]
    pub insecure_bootstrap: bool,
    /// Single-use join token for node attestation (key join_token).
    #[arg(long, value_name = "TOKEN", env = "KEYCARD_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<Secret>,
    /// x509pop node certificate, PEM (key x509pop.cert_file).
    #[arg(long, value_name = "FILE", requires = "x509pop_key")]
    pub x509pop_cert: Option<PathBuf>,
    /// x509pop node private key, PKCS#8 PEM (key x509pop.key_file).
    #[arg(long, value_name = "FILE", requires = "x509pop_cert")]
    pub x509pop_key: Option<PathBuf>,
    /// Workload API socket, a path or unix:///path (key socket_path).
    #[arg(long, value_name = "PATH")]
    pub socket_path: Option<String>,
    /// Agent admin socket, used by `keycard agent explain` (key admin_socket).
    #[arg(id = "agent_admin_socket", long = "agent-admin-socket", value_name = "PATH")]
    pub admin_socket: Option<PathBuf>,
    /// Data directory (key data_dir).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address for /live, /ready and /metrics, ip:port (key health_address).
    #[arg(long, value_name = "ADDR")]
    pub health_address: Option<SocketAddr>,
    /// Log format (key log_format).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log level or filter, such as info or debug,h2=warn (key log_level).
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
}

/// How the agent authenticates the server before it has the bundle from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// A PEM file of trusted CA certificates.
    Bundle(PathBuf),
    /// Trust the first server that answers (logged loudly).
    Insecure,
    /// Neither: the agent must find a bundle in its data directory from an earlier run.
    Stored,
}

/// How the agent proves its node's identity to the server.
#[derive(Clone, PartialEq, Eq)]
pub enum NodeAttestation {
    /// A single-use join token.
    JoinToken(String),
    /// x509pop: a node certificate and its key on disk.
    X509Pop {
        /// PEM certificate, leaf first.
        cert_file: PathBuf,
        /// PEM PKCS#8 key.
        key_file: PathBuf,
    },
    /// None configured: the agent must have a valid SVID from an earlier run.
    None,
}

impl fmt::Debug for NodeAttestation {
    /// Never shows the join token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::JoinToken(_) => f.write_str("JoinToken(<redacted>)"),
            Self::X509Pop { cert_file, key_file } => f
                .debug_struct("X509Pop")
                .field("cert_file", cert_file)
                .field("key_file", key_file)
                .finish(),
            Self::None => f.write_str("None"),
        }
    }
}

/// The checked agent configuration; see the module documentation for keys and defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// The trust domain of the server and of every SVID.
    pub trust_domain: TrustDomain,
    /// The servers' agent API, `host:port` each, at least one, none twice: the agent talks
    /// to one at a time, starting with the first, and moves to the next when it stops
    /// answering.
    pub server_addresses: Vec<String>,
    /// Deadline of each call to the server, and of each dial.
    pub server_request_timeout: Duration,
    /// How the server is authenticated at first contact.
    pub bootstrap: Bootstrap,
    /// How the node attests.
    pub attestation: NodeAttestation,
    /// The Workload API socket.
    pub socket_path: PathBuf,
    /// The agent admin socket.
    pub admin_socket: PathBuf,
    /// State directory.
    pub data_dir: PathBuf,
    /// Time between syncs.
    pub sync_interval: Duration,
    /// Workload key type.
    pub workload_key_type: KeyType,
    /// Whether workload SVIDs are kept on disk.
    pub disk_cache: bool,
    /// Unix attestor options.
    pub unix: UnixAttestorOptions,
    /// Caps on Workload API connections (`[workload_api]`).
    pub workload_limits: super::workload_api::limits::ConnectionLimits,
    /// The APIs served on the socket (`[workload_api] enabled`, `[sds]`).
    pub apis: super::workload_api::Apis,
    /// Health and metrics address; `None` disables the endpoints.
    pub health_address: Option<SocketAddr>,
    /// Log format.
    pub log_format: LogFormat,
    /// Log level or filter directive (already checked).
    pub log_level: String,
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::InvalidValue { config: CONFIG, key: key.into(), reason: reason.into() }
}

fn conflict(key: &str, other: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Conflict {
        config: CONFIG,
        key: key.into(),
        other: other.into(),
        reason: reason.into(),
    }
}

fn non_empty(key: &str, p: PathBuf) -> Result<PathBuf, ConfigError> {
    if p.as_os_str().is_empty() { Err(invalid(key, "must not be empty")) } else { Ok(p) }
}

/// Strips `unix://` (or `unix:`) from a socket address as `SPIFFE_ENDPOINT_SOCKET` writes
/// it; the rest must be an absolute path when a scheme was given.
pub fn socket_path_from(key: &str, value: &str) -> Result<PathBuf, ConfigError> {
    let path = match value.strip_prefix("unix://").or_else(|| value.strip_prefix("unix:")) {
        Some(rest) if rest.starts_with('/') => rest,
        Some(_) => {
            return Err(invalid(
                key,
                format!(
                    "{value:?}: a unix: address needs an absolute path, like unix:///run/keycard/api.sock"
                ),
            ));
        }
        None if value.contains("://") => {
            return Err(invalid(key, format!("{value:?}: only unix:// addresses are supported")));
        }
        None => value,
    };
    let path = non_empty(key, PathBuf::from(path))?;
    check_socket_len(key, &path)?;
    Ok(path)
}

fn check_socket_len(key: &str, path: &Path) -> Result<(), ConfigError> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH_LEN {
        return Err(invalid(
            key,
            format!(
                "{} is {len} bytes long; Unix socket paths are limited to {MAX_SOCKET_PATH_LEN}",
                path.display()
            ),
        ));
    }
    Ok(())
}

impl AgentConfig {
    /// Reads `args.config` (when given), applies the flags over it, fills in defaults and
    /// checks every rule.
    pub fn load(args: &AgentArgs) -> Result<AgentConfig, ConfigError> {
        let file = match &args.config {
            Some(p) => load_toml::<FileConfig>(CONFIG, p)?,
            None => FileConfig::default(),
        };
        Self::merge(args, file)
    }

    /// Like [`AgentConfig::load`] with the file's text given (`path` names it in errors).
    pub fn from_toml(args: &AgentArgs, path: &Path, text: &str) -> Result<Self, ConfigError> {
        let file = crate::config::parse_toml::<FileConfig>(CONFIG, path, text)?;
        Self::merge(args, file)
    }

    fn merge(args: &AgentArgs, f: FileConfig) -> Result<Self, ConfigError> {
        let missing = |key: &str, flag: &str| ConfigError::MissingKey {
            config: CONFIG,
            key: key.into(),
            flag: Some(flag.into()),
        };
        let trust_domain = match (&args.trust_domain, f.trust_domain) {
            (Some(td), _) => td.clone(),
            (None, Some(v)) => {
                TrustDomain::new(&v).map_err(|e| invalid("trust_domain", format!("{v:?}: {e}")))?
            }
            (None, None) => return Err(missing("trust_domain", "--trust-domain")),
        };
        let Some(server_addresses) =
            servers::server_addresses(&args.server_address, f.server_address)?
        else {
            return Err(missing("server_address", "--server-address"));
        };
        let server_request_timeout = match f.server_request_timeout {
            Some(v) => parse_positive_duration(CONFIG, "server_request_timeout", &v)?,
            None => crate::wire::REQUEST_TIMEOUT,
        };
        let insecure = args.insecure_bootstrap || f.insecure_bootstrap.unwrap_or(false);
        let bootstrap = match (args.trust_bundle.clone().or(f.trust_bundle_path), insecure) {
            (Some(_), true) => {
                return Err(conflict(
                    "insecure_bootstrap",
                    "trust_bundle_path",
                    "give a trust bundle or ask for an insecure bootstrap, not both",
                ));
            }
            (Some(p), false) => Bootstrap::Bundle(non_empty("trust_bundle_path", p)?),
            (None, true) => Bootstrap::Insecure,
            (None, false) => Bootstrap::Stored,
        };
        let x509pop = match (&args.x509pop_cert, &args.x509pop_key) {
            (Some(c), Some(k)) => {
                Some(FileX509Pop { cert_file: Some(c.clone()), key_file: Some(k.clone()) })
            }
            _ => f.x509pop,
        };
        let attestation = match (args.join_token.clone().or(f.join_token), x509pop) {
            (Some(_), Some(_)) => {
                return Err(conflict(
                    "join_token",
                    "x509pop",
                    "choose one node attestor: a join token or an x509pop certificate",
                ));
            }
            (Some(t), None) if t.expose().trim().is_empty() => {
                return Err(invalid("join_token", "must not be empty"));
            }
            (Some(t), None) => NodeAttestation::JoinToken(t.expose().trim().to_owned()),
            (None, Some(x)) => {
                let need = |key: &str, v: Option<PathBuf>| {
                    let key = format!("x509pop.{key}");
                    match v {
                        Some(p) => non_empty(&key, p),
                        None => Err(ConfigError::MissingKey { config: CONFIG, key, flag: None }),
                    }
                };
                NodeAttestation::X509Pop {
                    cert_file: need("cert_file", x.cert_file)?,
                    key_file: need("key_file", x.key_file)?,
                }
            }
            (None, None) => NodeAttestation::None,
        };
        let socket_path = match args.socket_path.clone().or(f.socket_path) {
            Some(v) => socket_path_from("socket_path", &v)?,
            None => PathBuf::from(DEFAULT_SOCKET_PATH),
        };
        let data_dir = non_empty(
            "data_dir",
            args.data_dir.clone().or(f.data_dir).unwrap_or(DEFAULT_DATA_DIR.into()),
        )?;
        let admin_socket = match args.admin_socket.clone().or(f.admin_socket) {
            Some(p) => non_empty("admin_socket", p)?,
            None => default_admin_socket(&data_dir),
        };
        check_socket_len("admin_socket", &admin_socket)?;
        if admin_socket == socket_path {
            return Err(conflict("admin_socket", "socket_path", "both name the same socket"));
        }
        let sync_interval = match f.sync_interval {
            Some(v) => parse_positive_duration(CONFIG, "sync_interval", &v)?,
            None => DEFAULT_SYNC_INTERVAL,
        };
        let workload_key_type = match f.workload_key_type {
            Some(v) => parse_value(CONFIG, "workload_key_type", &v)?,
            None => KeyType::EcP256,
        };
        let mut unix =
            UnixAttestorOptions { sha256: f.unix_sha256.unwrap_or(false), ..Default::default() };
        if let Some(max) = f.unix_sha256_max_size {
            if max == 0 {
                return Err(invalid("unix_sha256_max_size", "must be more than zero bytes"));
            }
            unix.max_binary_size = max;
        }
        let health_address = match (args.health_address, f.health_address) {
            (Some(a), _) => Some(a),
            (None, Some(v)) => Some(parse_socket_addr(CONFIG, "health_address", &v)?),
            (None, None) => None,
        };
        let log_format = match (args.log_format, f.log_format) {
            (Some(v), _) => v,
            (None, Some(v)) => parse_value(CONFIG, "log_format", &v)?,
            (None, None) => LogFormat::default(),
        };
        let log_level = args.log_level.clone().or(f.log_level).unwrap_or("info".into());
        logging::parse_level(&log_level).map_err(|e| invalid("log_level", e.to_string()))?;
        Ok(AgentConfig {
            trust_domain,
            server_addresses,
            server_request_timeout,
            bootstrap,
            attestation,
            socket_path,
            admin_socket,
            data_dir,
            sync_interval,
            workload_key_type,
            disk_cache: f.disk_cache.unwrap_or(false),
            unix,
            apis: sds::apis(f.workload_api.as_ref(), f.sds)?,
            workload_limits: limits::connection_limits(f.workload_api)?,
            health_address,
            log_format,
            log_level,
        })
    }
}

mod file;
pub mod limits;
mod sds;
mod servers;
#[cfg(test)]
mod tests;

//! The server's configuration: a TOML file (`--config`) and command-line flags that
//! override it, checked at start-up into a [`ServerConfig`]. Unknown keys and bad values
//! stop the server with a message that names the key ([`ConfigError`]).
//!
//! Relative paths are relative to the server's working directory (as with SPIRE), not to
//! the config file. Durations are humantime strings (`30s`, `5m`, `1h`, `1h 30m`).
//!
//! | Key | Default | Meaning |
//! |-----|---------|---------|
//! | `trust_domain` | required | Trust domain name, e.g. `example.org` (flag `--trust-domain`) |
//! | `bind_address` | `127.0.0.1:8081` | Agent API (TLS gRPC) address; port 0 picks a free port, which is logged (`--bind-address`) |
//! | `data_dir` | `.keycard/server` | Directory for the datastore, keys and journal (`--data-dir`) |
//! | `admin_socket` | `<data_dir>/private/admin.sock` | Admin API Unix socket; its directory is made 0700, the socket 0600 (`--admin-socket`) |
//! | `ca_key_type` | `ec-p256` | X.509 authority key: `ec-p256`, `ec-p384` or `ed25519` |
//! | `ca_ttl` | `24h` | Lifetime of each X.509 and JWT authority |
//! | `default_x509_svid_ttl` | `1h` | X.509-SVID lifetime for entries without their own; at most `ca_ttl / 6` |
//! | `default_jwt_svid_ttl` | `5m` | JWT-SVID lifetime for entries without their own; at most `ca_ttl / 6` |
//! | `agent_svid_ttl` | `default_x509_svid_ttl` | Lifetime of agents' own X.509-SVIDs; at most `ca_ttl / 6` |
//! | `jwt_key_type` | `ec-p256` | JWT authority key: `ec-p256` or `ec-p384` (JWT-SVIDs have no EdDSA) |
//! | `backdate` | `30s` | How far `notBefore` is set in the past, for clock skew |
//! | `bundle_refresh_hint` | `5m` | `spiffe_refresh_hint` published with the bundle |
//! | `[bundle_endpoint]` `address` | `127.0.0.1:8443` | Federation bundle endpoint (HTTPS `GET /`); the table's presence turns it on |
//! | `[bundle_endpoint]` `profile` | `https_spiffe` | `https_spiffe` (the server's own SVID) or `https_web` (needs `cert_file` and `key_file`, PEM) |
//! | `[bundle_endpoint]` `refresh_hint` | `5m` | The bundle's `spiffe_refresh_hint`, like `bundle_refresh_hint` (set one of the two) |
//! | `[[federates_with]]` `trust_domain`, `bundle_endpoint_url`, `bundle_endpoint_profile` (`https_spiffe` default, or `https_web`), `endpoint_spiffe_id`, `trust_domain_bundle` (file), `ca_file` | none | Federation relationships, as `keycard federation create` makes them; written to the datastore at start-up |
//! | `svids_per_second_per_agent` | `500` | Workload X.509-SVIDs one agent may have signed per second (bursts of twice that); an agent asking faster is told when to retry |
//! | `[upstream_authority]` `cert_file`, `key_file` | none | PEM certificate (chain) and PKCS#8 key of an upstream CA; when set, keycard's authorities are its intermediates |
//! | `[datastore]` `type` | `sqlite` | Datastore kind: `sqlite` (one server) or `postgres` (several servers, HA) |
//! | `[datastore]` `path` | `<data_dir>/datastore.sqlite3` | SQLite database file (`type = "sqlite"` only) |
//! | `[datastore]` `url` | none | PostgreSQL URL `postgres://user[:password]@host:port/db` (`type = "postgres"`, required there; `--datastore-url`, which implies the type) |
//! | `x509pop_ca_bundle` | none | PEM CA certificates for `x509pop` node attestation; unset disables x509pop |
//! | `health_address` | none | `ip:port` for `/live`, `/ready` and `/metrics`; unset disables them (`--health-address`) |
//! | `log_format` | `text` | `text` or `json` (`--log-format`) |
//! | `log_level` | `info` | Level or filter directive such as `info,h2=warn`; `RUST_LOG` overrides it (`--log-level`) |

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use keycard_workload_api::{SpiffeId, SpiffeIdError, TrustDomain};

use crate::ca::{CaConfig, KeyType, UpstreamAuthority, max_svid_ttl};
pub use crate::config::ConfigError;
use crate::config::{load_toml, parse_positive_duration, parse_socket_addr, parse_value};
use crate::server::entry::SERVER_PATH;
use crate::server::federation::BundleEndpointConfig;
use crate::server::federation::declared::DeclaredFederation;
use crate::telemetry::logging::{self, LogFormat};
use file::{FileConfig, FileDatastore, FileUpstream};

/// Name of this configuration in error messages.
const CONFIG: &str = "server";
/// Default agent API address.
pub const DEFAULT_BIND_ADDRESS: &str = "127.0.0.1:8081";
/// Port of [`DEFAULT_BIND_ADDRESS`].
const DEFAULT_BIND_PORT: u16 = 8081;
/// Default data directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = ".keycard/server";
/// Default lifetime of authorities.
pub const DEFAULT_CA_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default X.509-SVID lifetime.
pub const DEFAULT_X509_SVID_TTL: Duration = Duration::from_secs(3600);
/// Default JWT-SVID lifetime.
pub const DEFAULT_JWT_SVID_TTL: Duration = Duration::from_secs(300);
/// Default bundle refresh hint.
pub const DEFAULT_BUNDLE_REFRESH_HINT: Duration = Duration::from_secs(300);
/// Default number of workload SVIDs one agent may have signed per second.
pub const DEFAULT_SVIDS_PER_SECOND_PER_AGENT: u32 = 500;
/// The most `svids_per_second_per_agent` may be.
pub const MAX_SVIDS_PER_SECOND_PER_AGENT: u32 = 1_000_000;
/// Default log level.
pub const DEFAULT_LOG_LEVEL: &str = "info";
pub use crate::unixsock::MAX_SOCKET_PATH_LEN;

/// The admin socket used when none is configured: `<data_dir>/private/admin.sock`. Admin
/// CLI commands default to `default_admin_socket(Path::new(DEFAULT_DATA_DIR))`.
pub fn default_admin_socket(data_dir: &Path) -> PathBuf {
    data_dir.join("private").join("admin.sock")
}

/// Command-line flags of `keycard server run`; each overrides the same key of the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerArgs {
    /// TOML configuration file (see conf/server.toml).
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Trust domain, such as example.org (key trust_domain).
    #[arg(long, value_name = "NAME")]
    pub trust_domain: Option<TrustDomain>,
    /// Agent API address, ip:port; port 0 picks a free port (key bind_address).
    #[arg(long, value_name = "ADDR")]
    pub bind_address: Option<SocketAddr>,
    /// Data directory (key data_dir).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Admin API Unix socket (key admin_socket).
    #[arg(long, value_name = "PATH")]
    pub admin_socket: Option<PathBuf>,
    /// PostgreSQL URL, postgres://user@host:port/db; implies datastore type postgres (key
    /// datastore.url).
    #[arg(long, value_name = "URL")]
    pub datastore_url: Option<crate::secret::Secret>,
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

/// Where the server keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatastoreConfig {
    /// The embedded SQLite database (`type = "sqlite"`).
    Sqlite {
        /// The database file.
        path: PathBuf,
    },
    /// A PostgreSQL database shared by several servers (`type = "postgres"`).
    Postgres {
        /// `postgres://user[:password]@host:port/db` (a secret: it may hold a password).
        url: crate::secret::Secret,
    },
}

/// An upstream CA on disk that signs keycard's X.509 authorities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamAuthorityConfig {
    /// PEM certificate, optionally followed by its chain up to the root.
    pub cert_file: PathBuf,
    /// PEM PKCS#8 private key of that certificate.
    pub key_file: PathBuf,
}

/// The checked server configuration; see the module documentation for keys and defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// The trust domain every SVID belongs to.
    pub trust_domain: TrustDomain,
    /// Agent API listen address (port 0: the OS picks).
    pub bind_address: SocketAddr,
    /// State directory.
    pub data_dir: PathBuf,
    /// Admin API Unix socket.
    pub admin_socket: PathBuf,
    /// X.509 authority key type.
    pub ca_key_type: KeyType,
    /// Lifetime of every authority.
    pub ca_ttl: Duration,
    /// X.509-SVID lifetime for entries without their own.
    pub default_x509_svid_ttl: Duration,
    /// JWT-SVID lifetime for entries without their own.
    pub default_jwt_svid_ttl: Duration,
    /// Lifetime of agents' own SVIDs.
    pub agent_svid_ttl: Duration,
    /// JWT authority key type (ECDSA only).
    pub jwt_key_type: KeyType,
    /// Clock-skew allowance on `notBefore`.
    pub backdate: Duration,
    /// `spiffe_refresh_hint` of the published bundle.
    pub bundle_refresh_hint: Duration,
    /// Workload SVIDs one agent may have signed per second (bursts of twice that).
    pub svids_per_second_per_agent: u32,
    /// Upstream CA, if keycard is an intermediate.
    pub upstream_authority: Option<UpstreamAuthorityConfig>,
    /// The datastore.
    pub datastore: DatastoreConfig,
    /// CA bundle for x509pop attestation; `None` disables x509pop.
    pub x509pop_ca_bundle: Option<PathBuf>,
    /// The federation bundle endpoint; `None` (no `[bundle_endpoint]` table) disables it.
    pub bundle_endpoint: Option<BundleEndpointConfig>,
    /// Federation relationships declared in the file (`[[federates_with]]`), written to
    /// the datastore at start-up.
    pub federates_with: Vec<DeclaredFederation>,
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

fn path(key: &str, p: PathBuf) -> Result<PathBuf, ConfigError> {
    if p.as_os_str().is_empty() { Err(invalid(key, "must not be empty")) } else { Ok(p) }
}

fn duration(key: &str, v: Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    v.map_or(Ok(default), |v| parse_positive_duration(CONFIG, key, &v))
}

fn key_type(key: &str, v: Option<String>) -> Result<KeyType, ConfigError> {
    v.map_or(Ok(KeyType::default()), |v| parse_value(CONFIG, key, &v))
}

/// The flag's value if given, else the file's value parsed, else `None`.
fn pick<T>(
    flag: Option<T>,
    file: Option<String>,
    parse: impl FnOnce(&str) -> Result<T, ConfigError>,
) -> Result<Option<T>, ConfigError> {
    match (flag, file) {
        (Some(v), _) => Ok(Some(v)),
        (None, Some(v)) => parse(&v).map(Some),
        (None, None) => Ok(None),
    }
}

/// `svids_per_second_per_agent`: a whole number from 1 to [`MAX_SVIDS_PER_SECOND_PER_AGENT`].
fn svid_rate(v: Option<toml::Value>) -> Result<u32, ConfigError> {
    const KEY: &str = "svids_per_second_per_agent";
    let Some(v) = v else { return Ok(DEFAULT_SVIDS_PER_SECOND_PER_AGENT) };
    let max = MAX_SVIDS_PER_SECOND_PER_AGENT;
    match v.as_integer() {
        Some(n) if (1..=i64::from(max)).contains(&n) => Ok(n as u32),
        _ => Err(invalid(KEY, format!("{v} is not a whole number from 1 to {max}"))),
    }
}

fn trust_domain(v: &str) -> Result<TrustDomain, ConfigError> {
    TrustDomain::new(v).map_err(|e: SpiffeIdError| invalid("trust_domain", format!("{v:?}: {e}")))
}

impl ServerConfig {
    /// Reads `args.config` (when given), applies the flags over it, fills in defaults and
    /// checks every rule.
    pub fn load(args: &ServerArgs) -> Result<ServerConfig, ConfigError> {
        let file = match &args.config {
            Some(p) => load_toml::<FileConfig>(CONFIG, p)?,
            None => FileConfig::default(),
        };
        Self::merge(args, file)
    }

    /// Like [`ServerConfig::load`] with the file's text given (`path` names it in errors).
    pub fn from_toml(args: &ServerArgs, path: &Path, text: &str) -> Result<Self, ConfigError> {
        let file = crate::config::parse_toml::<FileConfig>(CONFIG, path, text)?;
        Self::merge(args, file)
    }

    fn merge(args: &ServerArgs, f: FileConfig) -> Result<Self, ConfigError> {
        let trust_domain = pick(args.trust_domain.clone(), f.trust_domain, trust_domain)?
            .ok_or_else(|| ConfigError::MissingKey {
                config: CONFIG,
                key: "trust_domain".into(),
                flag: Some("--trust-domain".into()),
            })?;
        let bind_address = pick(args.bind_address, f.bind_address, |v| {
            parse_socket_addr(CONFIG, "bind_address", v)
        })?
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], DEFAULT_BIND_PORT)));
        let data_dir = path(
            "data_dir",
            args.data_dir.clone().or(f.data_dir).unwrap_or(DEFAULT_DATA_DIR.into()),
        )?;
        let admin_socket = match args.admin_socket.clone().or(f.admin_socket) {
            Some(p) => path("admin_socket", p)?,
            None => default_admin_socket(&data_dir),
        };
        let len = admin_socket.as_os_str().len();
        if len > MAX_SOCKET_PATH_LEN {
            let reason = format!(
                "{} is {len} bytes long; Unix socket paths are limited to {MAX_SOCKET_PATH_LEN} \
                 (set a shorter admin_socket or data_dir)",
                admin_socket.display()
            );
            return Err(invalid("admin_socket", reason));
        }
        let ca_key_type = key_type("ca_key_type", f.ca_key_type)?;
        let jwt_key_type = key_type("jwt_key_type", f.jwt_key_type)?;
        if jwt_key_type == KeyType::Ed25519 {
            return Err(invalid(
                "jwt_key_type",
                "JWT-SVIDs cannot use ed25519; use ec-p256 or ec-p384",
            ));
        }
        let ca_ttl = duration("ca_ttl", f.ca_ttl, DEFAULT_CA_TTL)?;
        let default_x509_svid_ttl =
            duration("default_x509_svid_ttl", f.default_x509_svid_ttl, DEFAULT_X509_SVID_TTL)?;
        let default_jwt_svid_ttl =
            duration("default_jwt_svid_ttl", f.default_jwt_svid_ttl, DEFAULT_JWT_SVID_TTL)?;
        let agent_svid_ttl = duration("agent_svid_ttl", f.agent_svid_ttl, default_x509_svid_ttl)?;
        for (key, ttl) in [
            ("default_x509_svid_ttl", default_x509_svid_ttl),
            ("default_jwt_svid_ttl", default_jwt_svid_ttl),
            ("agent_svid_ttl", agent_svid_ttl),
        ] {
            check_ttl(key, ttl, ca_ttl)?;
        }
        let backdate = match f.backdate {
            Some(v) => crate::config::parse_duration(CONFIG, "backdate", &v)?,
            None => crate::ca::DEFAULT_BACKDATE,
        };
        if backdate >= ca_ttl {
            return Err(conflict("backdate", "ca_ttl", "backdate must be shorter than ca_ttl"));
        }
        let svids_per_second_per_agent = svid_rate(f.svids_per_second_per_agent)?;
        let upstream_authority = f.upstream_authority.map(upstream).transpose()?;
        let datastore =
            datastore(f.datastore.unwrap_or_default(), args.datastore_url.clone(), &data_dir)?;
        let x509pop_ca_bundle =
            f.x509pop_ca_bundle.map(|p| path("x509pop_ca_bundle", p)).transpose()?;
        let health_address = pick(args.health_address, f.health_address, |v| {
            parse_socket_addr(CONFIG, "health_address", v)
        })?;
        if health_address.is_some_and(|h| h == bind_address && h.port() != 0) {
            return Err(conflict("health_address", "bind_address", "both name the same address"));
        }
        let taken = [("bind_address", Some(bind_address)), ("health_address", health_address)];
        let top_hint = f.bundle_refresh_hint.is_some();
        let (bundle_endpoint, endpoint_hint) = match f.bundle_endpoint {
            Some(table) => BundleEndpointConfig::from_file(CONFIG, table, top_hint, &taken)
                .map(|(endpoint, hint)| (Some(endpoint), hint))?,
            None => (None, None),
        };
        let federates_with = f
            .federates_with
            .iter()
            .enumerate()
            .map(|(i, table)| DeclaredFederation::from_file(CONFIG, &trust_domain, i, table))
            .collect::<Result<Vec<_>, _>>()?;
        let bundle_refresh_hint = match endpoint_hint {
            Some(hint) => hint,
            None => {
                duration("bundle_refresh_hint", f.bundle_refresh_hint, DEFAULT_BUNDLE_REFRESH_HINT)?
            }
        };
        let log_format =
            pick(args.log_format, f.log_format, |v| parse_value(CONFIG, "log_format", v))?
                .unwrap_or_default();
        let log_level = args.log_level.clone().or(f.log_level).unwrap_or(DEFAULT_LOG_LEVEL.into());
        logging::parse_level(&log_level).map_err(|e| invalid("log_level", e.to_string()))?;
        Ok(ServerConfig {
            trust_domain,
            bind_address,
            data_dir,
            admin_socket,
            ca_key_type,
            ca_ttl,
            default_x509_svid_ttl,
            default_jwt_svid_ttl,
            agent_svid_ttl,
            jwt_key_type,
            backdate,
            bundle_refresh_hint,
            svids_per_second_per_agent,
            upstream_authority,
            datastore,
            x509pop_ca_bundle,
            bundle_endpoint,
            federates_with,
            health_address,
            log_format,
            log_level,
        })
    }

    /// The server's own SPIFFE ID, `spiffe://<td>/keycard/server`.
    pub fn server_id(&self) -> SpiffeId {
        // SERVER_PATH is a constant valid path, and the trust domain is already checked.
        self.trust_domain.spiffe_id(SERVER_PATH).unwrap_or_else(|_| self.trust_domain.id())
    }

    /// The CA manager's settings; `upstream` is the loaded [`Self::upstream_authority`].
    pub fn ca_config(&self, upstream: Option<Arc<UpstreamAuthority>>) -> CaConfig {
        CaConfig {
            trust_domain: self.trust_domain.clone(),
            x509_key_type: self.ca_key_type,
            jwt_key_type: self.jwt_key_type,
            ca_ttl: self.ca_ttl,
            backdate: self.backdate,
            upstream,
            refresh_hint: self.bundle_refresh_hint,
        }
    }
}

fn conflict(key: &str, other: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Conflict {
        config: CONFIG,
        key: key.into(),
        other: other.into(),
        reason: reason.into(),
    }
}

/// SPIRE's rule: an SVID lives at most one sixth of its CA's life, because the next CA is
/// activated when one sixth remains.
fn check_ttl(key: &str, ttl: Duration, ca_ttl: Duration) -> Result<(), ConfigError> {
    let max = max_svid_ttl(ca_ttl);
    if ttl > max {
        return Err(conflict(
            key,
            "ca_ttl",
            format!(
                "{key} ({}) is longer than ca_ttl / 6 ({}); lower {key} or raise ca_ttl to at least {}",
                humantime::format_duration(ttl),
                humantime::format_duration(max),
                humantime::format_duration(ttl * 6),
            ),
        ));
    }
    Ok(())
}

fn upstream(u: FileUpstream) -> Result<UpstreamAuthorityConfig, ConfigError> {
    let need = |key: &str, v: Option<PathBuf>| {
        let key = format!("upstream_authority.{key}");
        match v {
            Some(p) => path(&key, p),
            None => Err(ConfigError::MissingKey { config: CONFIG, key, flag: None }),
        }
    };
    Ok(UpstreamAuthorityConfig {
        cert_file: need("cert_file", u.cert_file)?,
        key_file: need("key_file", u.key_file)?,
    })
}

/// `[datastore]`, with `--datastore-url` (which implies `type = "postgres"`).
fn datastore(
    d: FileDatastore,
    flag_url: Option<crate::secret::Secret>,
    data_dir: &Path,
) -> Result<DatastoreConfig, ConfigError> {
    if let Some(url) = flag_url {
        return Ok(DatastoreConfig::Postgres { url: postgres_url("--datastore-url", url)? });
    }
    match d.kind.as_deref().unwrap_or("sqlite") {
        "sqlite" => {
            if d.url.is_some() {
                return Err(conflict(
                    "datastore.url",
                    "datastore.type",
                    "a URL is for type = \"postgres\"; set that type or remove the url",
                ));
            }
            Ok(DatastoreConfig::Sqlite {
                path: match d.path {
                    Some(p) => path("datastore.path", p)?,
                    None => data_dir.join("datastore.sqlite3"),
                },
            })
        }
        "postgres" => {
            if d.path.is_some() {
                return Err(conflict(
                    "datastore.path",
                    "datastore.type",
                    "a path is for type = \"sqlite\"; PostgreSQL takes a url",
                ));
            }
            let url = d.url.ok_or_else(|| {
                invalid(
                    "datastore.url",
                    "is required with type = \"postgres\" (for example \
                     \"postgres://keycard@127.0.0.1:5432/keycard\"), or pass --datastore-url",
                )
            })?;
            Ok(DatastoreConfig::Postgres { url: postgres_url("datastore.url", url)? })
        }
        other => Err(invalid(
            "datastore.type",
            format!("{other:?} is not supported; use \"sqlite\" or \"postgres\""),
        )),
    }
}

/// Checks the form of a PostgreSQL URL (the database checks the rest when connecting).
fn postgres_url(
    key: &str,
    url: crate::secret::Secret,
) -> Result<crate::secret::Secret, ConfigError> {
    let text = url.expose();
    let Some(rest) = text.strip_prefix("postgres://").or(text.strip_prefix("postgresql://")) else {
        return Err(invalid(
            key,
            "must start with postgres:// (for example postgres://keycard@127.0.0.1:5432/keycard)",
        ));
    };
    if rest.is_empty() || rest.starts_with('/') && !rest.contains("host=") {
        return Err(invalid(key, "names no host; write postgres://user@host:port/database"));
    }
    Ok(url)
}

mod file;
#[cfg(test)]
mod tests;

//! `keycard dev`: a CA server and a node agent on this machine with development defaults,
//! and an entry for the calling user, so that a first SVID is one command away.
//!
//! The two daemons run in this process but share nothing in memory: the agent reaches the
//! server only over the agent API (mTLS on 127.0.0.1:8081), exactly as on two machines,
//! and the set-up (bundle, join token, entry) goes through the admin socket, as an
//! operator's CLI would. State lives in one directory (default `./.keycard-dev`):
//! `server/` (datastore, CA keys, admin socket), `agent/` (agent SVID, bundle, admin
//! socket), `bundle.pem` and the Workload API socket `agent.sock`. Running it again reuses
//! all of it: the CA, the entries and the agent's SVID (a new join token is made only
//! when the agent has no valid SVID).

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keycard_workload_api::TrustDomain;
use tokio::task::JoinSet;

use crate::agent::config::{AgentArgs, AgentConfig};
use crate::secret::Secret;
use crate::server::config::{ServerArgs, ServerConfig};
use crate::shutdown::Shutdown;

mod setup;

use setup::set_up;
pub use setup::{AgentPlan, plan_agent};

/// The development trust domain.
pub const TRUST_DOMAIN: &str = "example.org";
/// The server's agent API address.
pub const SERVER_ADDRESS: &str = "127.0.0.1:8081";
/// The server's health address.
pub const SERVER_HEALTH: &str = "127.0.0.1:8082";
/// The agent's health address.
pub const AGENT_HEALTH: &str = "127.0.0.1:8083";
/// The agent's own SPIFFE ID in dev mode.
pub const AGENT_ID: &str = "spiffe://example.org/node/dev";
/// How long to wait for the server's admin socket.
const STARTUP: Duration = Duration::from_secs(30);

/// Why dev mode could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// A configuration built from the defaults was refused (a bad `--dir`).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The server stopped with an error.
    #[error("server: {0}")]
    Server(#[from] crate::server::run::RunError),
    /// The agent stopped with an error.
    #[error("agent: {0}")]
    Agent(#[from] crate::agent::run::RunError),
    /// The set-up over the admin socket failed.
    #[error("set-up over the admin socket {socket}: {reason}")]
    Setup {
        /// The admin socket.
        socket: String,
        /// What failed.
        reason: String,
    },
    /// A file of the state directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A background task panicked.
    #[error("internal task failed: {0}")]
    Task(String),
}

/// Flags of `keycard dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Where the development state lives.
    #[arg(long, default_value = ".keycard-dev")]
    pub dir: std::path::PathBuf,
    /// The server's agent API address.
    #[arg(long, default_value = SERVER_ADDRESS, value_name = "ADDR")]
    pub server_address: std::net::SocketAddr,
    /// The server's /live, /ready and /metrics address.
    #[arg(long, default_value = SERVER_HEALTH, value_name = "ADDR")]
    pub server_health: std::net::SocketAddr,
    /// The agent's /live, /ready and /metrics address.
    #[arg(long, default_value = AGENT_HEALTH, value_name = "ADDR")]
    pub agent_health: std::net::SocketAddr,
}

/// Where everything lives under the state directory.
#[derive(Debug, Clone)]
pub struct DevPaths {
    /// The state directory (absolute).
    pub dir: PathBuf,
    /// The server's admin socket.
    pub admin_socket: PathBuf,
    /// The Workload API socket.
    pub workload_socket: PathBuf,
    /// The agent's admin socket.
    pub agent_admin_socket: PathBuf,
    /// The trust bundle, PEM.
    pub bundle: PathBuf,
}

impl DevPaths {
    /// The layout under `dir` (which should be absolute).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            admin_socket: crate::server::config::default_admin_socket(&dir.join("server")),
            workload_socket: dir.join("agent.sock"),
            agent_admin_socket: crate::agent::config::default_admin_socket(&dir.join("agent")),
            bundle: dir.join("bundle.pem"),
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DevError + '_ {
    move |source| DevError::Io { path: path.display().to_string(), source }
}

/// Runs the server and the agent until `shutdown` triggers or either fails; `ready` is
/// called once the agent serves the calling user its SVID (or, with a warning, after
/// [`SERVING_PATIENCE`]).
pub async fn run(
    paths: &DevPaths,
    args: &DevArgs,
    shutdown: Shutdown,
    ready: impl FnOnce(&DevPaths),
) -> Result<(), DevError> {
    std::fs::create_dir_all(&paths.dir).map_err(io_err(&paths.dir))?;
    let server_config = ServerConfig::load(&ServerArgs {
        trust_domain: Some(
            TrustDomain::new(TRUST_DOMAIN).map_err(|e| DevError::Task(e.to_string()))?,
        ),
        data_dir: Some(paths.dir.join("server")),
        bind_address: Some(args.server_address),
        health_address: Some(args.server_health),
        admin_socket: Some(paths.admin_socket.clone()),
        ..Default::default()
    })?;
    let mut tasks: JoinSet<Result<(), DevError>> = JoinSet::new();
    tasks.spawn({
        let shutdown = shutdown.clone();
        async move { Ok(crate::server::run(server_config, shutdown).await?) }
    });

    let setup = tokio::select! {
        setup = set_up(paths) => Some(setup),
        // The server stopped before it was ready: its error is the one to report.
        first = wait_first(&mut tasks) => {
            shutdown.trigger();
            return first;
        }
        () = shutdown.wait() => None,
    };
    match setup {
        Some(Ok(token)) => {
            let agent_config = AgentConfig::load(&AgentArgs {
                trust_domain: TrustDomain::new(TRUST_DOMAIN).ok(),
                server_address: vec![args.server_address.to_string()],
                trust_bundle: Some(paths.bundle.clone()),
                join_token: token.map(Secret::from),
                socket_path: Some(paths.workload_socket.display().to_string()),
                admin_socket: Some(paths.agent_admin_socket.clone()),
                data_dir: Some(paths.dir.join("agent")),
                health_address: Some(args.agent_health),
                ..Default::default()
            })?;
            tasks.spawn({
                let shutdown = shutdown.clone();
                async move { Ok(crate::agent::run::run(agent_config, shutdown).await?) }
            });
            // "Paste next" only once what it names works: the caller's SVID and `explain`.
            tokio::select! {
                serving = wait_until_serving(paths) => {
                    if !serving {
                        tracing::warn!(
                            "the agent has not served this user an SVID within \
                             {SERVING_PATIENCE:?}; see its log above"
                        );
                    }
                    ready(paths);
                }
                // A daemon stopped first: stop the other and report the first error.
                first = wait_first(&mut tasks) => {
                    shutdown.trigger();
                    let rest = join_all(&mut tasks, &shutdown).await;
                    return first.and(rest);
                }
                () = shutdown.wait() => {}
            }
        }
        Some(Err(e)) => {
            shutdown.trigger();
            let _ = join_all(&mut tasks, &shutdown).await;
            return Err(e);
        }
        None => {}
    }
    join_all(&mut tasks, &shutdown).await
}

/// How long `dev` waits for its agent to serve the calling user before it prints anyway.
const SERVING_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether, within [`SERVING_PATIENCE`], the agent's admin socket is up and it serves this
/// process an X.509-SVID over the Workload API (asked every 100 ms). The entry dev makes is
/// for the owner of the state directory: when this process runs as another uid (root in a
/// user's directory), only the socket is waited for.
async fn wait_until_serving(paths: &DevPaths) -> bool {
    use keycard_workload_api::WorkloadApiClient;
    let owner = std::fs::metadata(&paths.dir).map(|m| m.uid()).ok();
    let for_this_uid = owner.is_some() && crate::unixsock::own_uid().ok() == owner;
    let deadline = tokio::time::Instant::now() + SERVING_PATIENCE;
    while tokio::time::Instant::now() < deadline {
        if paths.agent_admin_socket.exists()
            && let Ok(mut client) = WorkloadApiClient::connect_path(&paths.workload_socket).await
            && (!for_this_uid || client.fetch_x509_context().await.is_ok())
        {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

/// Waits for the first task to end and returns its result (pending forever if none).
async fn wait_first(tasks: &mut JoinSet<Result<(), DevError>>) -> Result<(), DevError> {
    match tasks.join_next().await {
        Some(joined) => joined.map_err(|e| DevError::Task(e.to_string())).and_then(|r| r),
        None => std::future::pending().await,
    }
}

/// Joins every task; the first to stop stops the others; the first error is returned.
async fn join_all(
    tasks: &mut JoinSet<Result<(), DevError>>,
    shutdown: &Shutdown,
) -> Result<(), DevError> {
    let mut outcome = Ok(());
    while let Some(joined) = tasks.join_next().await {
        let result = joined.map_err(|e| DevError::Task(e.to_string())).and_then(|r| r);
        if let Err(e) = result
            && outcome.is_ok()
        {
            outcome = Err(e);
        }
        shutdown.trigger();
    }
    outcome
}

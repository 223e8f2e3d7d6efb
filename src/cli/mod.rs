//! The admin commands of the `keycard` CLI: clients of the admin API on its Unix socket.
//!
//! `main.rs` parses [`AdminCommand`] (flattened into its own subcommands) and calls
//! [`run_admin`]. Every command takes `--admin-socket` (env `KEYCARD_ADMIN_SOCKET`) and
//! `--output text|json`; each group lives in its own file (`entry.rs`, `token.rs`, ...),
//! the connection in `client.rs` and the printing in `output.rs`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};

mod agent;
pub mod api;
mod authority;
mod bundle;
mod client;
mod entry;
pub mod entry_file;
mod explain;
mod federation;
mod healthcheck;
pub mod output;
mod token;

pub use agent::AgentCommand;
pub use authority::{AuthorityAction, AuthorityKindCommand};
pub use bundle::{BundleCommand, BundleFormatArg};
pub use entry::EntryCommand;
pub use federation::FederationCommand;
pub use output::OutputFormat;
pub use token::TokenCommand;

use crate::server::config::{DEFAULT_DATA_DIR, default_admin_socket};

/// Why an admin command failed; every message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// No socket at the path.
    #[error(
        "no admin socket at {0}: is the server running? start it with `keycard server run`, \
         or point --admin-socket (or KEYCARD_ADMIN_SOCKET) at its socket"
    )]
    ServerNotRunning(PathBuf),
    /// A socket file, but nobody listening.
    #[error(
        "nothing listens on the admin socket {0}: is the server running? start it with \
         `keycard server run`"
    )]
    ConnectionRefused(PathBuf),
    /// The file system refused access to the socket or its directory.
    #[error(
        "permission denied on the admin socket {0}: run this command as the user the server \
         runs as, or as root"
    )]
    PermissionDenied(PathBuf),
    /// The server dropped the connection (it refuses uids other than its own and root).
    #[error(
        "the server closed the connection on {path} ({detail}): the admin socket serves only \
         the server's own uid{owner} and root; run this command as that user"
    )]
    Closed {
        /// The socket.
        path: PathBuf,
        /// What the transport said.
        detail: String,
        /// ` (uid N)` when the socket's owner is known.
        owner: String,
    },
    /// Another connection failure.
    #[error("could not connect to the admin socket {path}: {detail}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The server refused the request; its message names the problem and the fix.
    #[error("{message} ({code:?})")]
    Server {
        /// The gRPC code.
        code: tonic::Code,
        /// The server's message.
        message: String,
    },
    /// An entry file could not be used, or the server refused its batch.
    #[error(transparent)]
    EntryFile(#[from] entry_file::EntryFileError),
    /// `entry update` without anything to change.
    #[error(
        "nothing to change: give at least one of --spiffe-id, --parent-id, --selector, \
         --x509-ttl, --jwt-ttl, --dns, --hint, --admin, --no-admin"
    )]
    NothingToUpdate,
    /// The server answered that it is not healthy.
    #[error("the server is not healthy: {0}")]
    Unhealthy(String),
    /// A file named by a flag could not be read.
    #[error("could not read the {what} {path}: {source}; check the path given to {flag}")]
    InputFile {
        /// What the file is for ("bundle file", "CA file").
        what: &'static str,
        /// The flag that named it.
        flag: &'static str,
        /// The path given.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// Writing the output failed.
    #[error("could not write the output: {0}")]
    Output(#[from] std::io::Error),
    /// A Workload API call failed; the message says why and what to do.
    #[error("{0}")]
    WorkloadApi(String),
    /// The agent's admin socket did not answer.
    #[error(
        "cannot reach the agent admin socket {path} ({detail}): is the agent running \
         (`keycard agent run`)? point --agent-admin-socket (or KEYCARD_AGENT_ADMIN_SOCKET) at \
         its admin socket, and run this as the agent's user or root"
    )]
    AgentUnreachable {
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The agent's admin socket (or its directory) is closed to this user, or the agent
    /// dropped the connection because of the caller's uid.
    #[error(
        "permission refused on the agent admin socket {path} ({detail}): it serves only the \
         agent's own uid{owner} and root (directory 0700, socket 0600, peer uid checked); run \
         this command as that user or as root"
    )]
    AgentPermissionDenied {
        /// The socket.
        path: PathBuf,
        /// What the connection said.
        detail: String,
        /// ` (uid N)` when the socket's owner can be read.
        owner: String,
    },
    /// A daemon command reached the admin-command runner (only the binary can start one).
    #[error("`{0}` starts a daemon; run it from the keycard binary, not as an admin command")]
    Daemon(&'static str),
}

/// Where the admin socket is and how to print replies; shared by every admin command.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// Path of the server's admin socket.
    #[arg(
        long,
        global = true,
        env = "KEYCARD_ADMIN_SOCKET",
        default_value_os_t = default_admin_socket(Path::new(DEFAULT_DATA_DIR)),
        value_name = "PATH"
    )]
    pub admin_socket: PathBuf,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// The admin commands.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create, show, update, delete and count registration entries.
    Entry {
        /// Socket and output.
        #[command(flatten)]
        conn: Connection,
        /// What to do.
        #[command(subcommand)]
        command: EntryCommand,
    },
    /// Generate join tokens for new agents.
    Token {
        /// Socket and output.
        #[command(flatten)]
        conn: Connection,
        /// What to do.
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// List, show, evict and ban attested agents.
    Agent {
        /// Socket and output.
        #[command(flatten)]
        conn: Connection,
        /// What to do.
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// Relationships with foreign trust domains' bundle endpoints (SPIFFE Federation).
    Federation {
        /// Socket and output.
        #[command(flatten)]
        conn: Connection,
        /// What to do.
        #[command(subcommand)]
        command: FederationCommand,
    },
    /// Show the trust domain's bundle; set, list and delete foreign bundles.
    Bundle {
        /// Socket and output.
        #[command(flatten)]
        conn: Connection,
        /// What to do.
        #[command(subcommand)]
        command: BundleCommand,
    },
    /// Show and rotate the CA's X.509 and JWT authorities by hand.
    Authority {
        /// Socket and output.
        #[command(flatten)]
        conn: Connection,
        /// Which kind of authority.
        #[command(subcommand)]
        kind: AuthorityKindCommand,
    },
    /// Ask the server whether it is healthy (datastore reachable, active authorities).
    Healthcheck {
        /// Socket and output.
        #[command(flatten)]
        conn: Connection,
    },
}

/// Parses a TTL such as `1h`, `90s` or `5m` (whole seconds).
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = humantime::parse_duration(text)
        .map_err(|e| format!("{e}; write a duration such as 90s, 5m or 1h"))?;
    if ttl.subsec_nanos() != 0 {
        return Err("a TTL must be whole seconds, for example 90s or 1h".into());
    }
    Ok(ttl)
}

/// Runs one admin command and prints its result on standard output.
pub fn run_admin(command: AdminCommand) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut stdout = std::io::stdout().lock();
    runtime.block_on(execute(command, &mut stdout))
}

/// Runs one admin command, writing its output to `out`.
pub async fn execute(command: AdminCommand, out: &mut dyn Write) -> Result<(), CliError> {
    match command {
        AdminCommand::Entry { conn, command } => entry::run(&conn, command, out).await,
        AdminCommand::Token { conn, command } => token::run(&conn, command, out).await,
        AdminCommand::Agent { conn, command } => agent::run(&conn, command, out).await,
        AdminCommand::Bundle { conn, command } => bundle::run(&conn, command, out).await,
        AdminCommand::Federation { conn, command } => federation::run(&conn, command, out).await,
        AdminCommand::Authority { conn, kind } => authority::run(&conn, kind, out).await,
        AdminCommand::Healthcheck { conn } => healthcheck::run(&conn, out).await,
    }
}

#[cfg(test)]
mod tests;

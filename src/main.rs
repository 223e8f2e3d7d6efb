//! The `keycard` command line: parses arguments and hands off to the library.

use clap::Parser;

/// keycard: a SPIFFE certificate authority (server), node agent and Workload API.
#[derive(Debug, Parser)]
#[command(name = "keycard", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

/// The daemons and commands keycard offers so far.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Check SPIFFE IDs against the SPIFFE-ID standard and explain what is wrong with each.
    CheckId {
        /// The SPIFFE IDs to check, such as spiffe://example.org/web.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Start a development server and agent with embedded defaults (trust domain
    /// example.org, state in ./.keycard-dev) and an entry for the calling user.
    Dev(keycard::dev::DevArgs),
    /// The CA server daemon.
    Server {
        #[command(subcommand)]
        command: ServerCommand,
    },
    /// Workload API commands: what a workload on this node gets from the agent.
    Api(keycard::cli::api::ApiArgs),
    /// The sidecar for programs that read certificate files: writes the SVID, key and
    /// bundle on every rotation and signals (or starts) the program.
    Helper(Box<keycard::helper::HelperArgs>),
    /// Admin commands: clients of a running server's admin socket.
    #[command(flatten)]
    Admin(Box<keycard::cli::AdminCommand>),
}

/// What `keycard server` does.
#[derive(Debug, clap::Subcommand)]
enum ServerCommand {
    /// Run the server: agent API, admin socket, CA rotation, health endpoints.
    Run(keycard::server::config::ServerArgs),
}

/// Runs the command; an error is printed as one plain message (never a backtrace, even
/// with `RUST_BACKTRACE` set) and the process exits with status 1.
fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {}", error_text(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, `outer: cause: cause`, each cause once: many of
/// our errors already print their source in their own message (`"...: {source}"`, which
/// thiserror also reports as the source), so a cause whose text is already there is left
/// out instead of printed a second time.
fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let message = cause.to_string();
        if text.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
    }
    text
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => {
            use clap::CommandFactory;
            Cli::command().print_help()?;
            Ok(())
        }
        Some(Command::CheckId { ids }) => check_ids(&ids),
        Some(Command::Server { command: ServerCommand::Run(args) }) => run_server(&args),
        Some(Command::Dev(args)) => run_dev(&args),
        Some(Command::Api(args)) => Ok(keycard::cli::api::run_api(args)?),
        Some(Command::Helper(args)) => run_helper(*args),
        Some(Command::Admin(command)) => match *command {
            keycard::cli::AdminCommand::Agent {
                command: keycard::cli::AgentCommand::Run(args),
                ..
            } => run_agent(&args),
            command => Ok(keycard::cli::run_admin(command)?),
        },
    }
}

/// `keycard dev`: a server and an agent with development defaults, and what to paste next.
fn run_dev(args: &keycard::dev::DevArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)?;
    let paths = keycard::dev::DevPaths::new(&std::fs::canonicalize(&args.dir)?);
    keycard::telemetry::logging::init(keycard::telemetry::logging::LogFormat::Text, "info")?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let shutdown = keycard::shutdown::on_signals()?;
        let (server, server_health, agent_health) =
            (args.server_address, args.server_health, args.agent_health);
        keycard::dev::run(&paths, args, shutdown, |paths| {
            print_next_steps(paths, server, server_health, agent_health)
        })
        .await?;
        Ok(())
    })
}

/// What a newcomer pastes next, printed once the agent starts.
fn print_next_steps(
    paths: &keycard::dev::DevPaths,
    server: std::net::SocketAddr,
    server_health: std::net::SocketAddr,
    agent_health: std::net::SocketAddr,
) {
    let socket = paths.workload_socket.display();
    println!();
    println!("keycard dev: server and agent for trust domain {}", keycard::dev::TRUST_DOMAIN);
    println!("  state          : {}", paths.dir.display());
    println!("  Workload API   : {socket}");
    println!("  admin socket   : {}", paths.admin_socket.display());
    println!("  agent API      : {server} (mTLS)");
    println!(
        "  health/metrics : http://{server_health}/ready (server), http://{agent_health}/ready (agent)"
    );
    println!("In another terminal:");
    println!("  export SPIFFE_ENDPOINT_SOCKET=unix://{socket}");
    println!("  export KEYCARD_ADMIN_SOCKET={}", paths.admin_socket.display());
    println!("  export KEYCARD_AGENT_ADMIN_SOCKET={}", paths.agent_admin_socket.display());
    println!("  cargo run --release -- api fetch x509 --socket {socket}");
    println!("  cargo run --release -- entry show");
    println!("Ctrl-C stops both; running it again reuses the state.");
    println!();
    // Scripts (and the e2e tests) wait for this line before pasting anything.
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
}

/// Loads the configuration, sets up logging, and runs the server until SIGINT or SIGTERM.
fn run_server(args: &keycard::server::config::ServerArgs) -> anyhow::Result<()> {
    let config = keycard::server::config::ServerConfig::load(args)?;
    keycard::telemetry::logging::init(config.log_format, &config.log_level)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let shutdown = keycard::shutdown::on_signals()?;
        keycard::server::run(config, shutdown).await?;
        Ok(())
    })
}

/// Loads the agent configuration, sets up logging, and runs the agent until SIGINT or
/// SIGTERM.
fn run_agent(args: &keycard::agent::config::AgentArgs) -> anyhow::Result<()> {
    let config = keycard::agent::config::AgentConfig::load(args)?;
    keycard::telemetry::logging::init(config.log_format, &config.log_level)?;
    keycard::agent::run::tune_allocator();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let shutdown = keycard::shutdown::on_signals()?;
        keycard::agent::run::run(config, shutdown).await?;
        Ok(())
    })
}

/// Runs the sidecar until SIGINT or SIGTERM (or once, with `--once`).
fn run_helper(args: keycard::helper::HelperArgs) -> anyhow::Result<()> {
    keycard::telemetry::logging::init(keycard::telemetry::logging::LogFormat::Text, "info")?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let shutdown = keycard::shutdown::on_signals()?;
        keycard::helper::run(args, shutdown).await?;
        Ok(())
    })
}

/// Prints one line per ID and fails if any ID is invalid.
fn check_ids(ids: &[String]) -> anyhow::Result<()> {
    let mut bad = 0;
    for id in ids {
        match keycard_workload_api::SpiffeId::parse(id) {
            Ok(id) => println!("ok      {id} (trust domain {})", id.trust_domain_name()),
            Err(e) => {
                bad += 1;
                println!("invalid {id:?}: {e}");
            }
        }
    }
    if bad > 0 {
        anyhow::bail!("{bad} of {} SPIFFE IDs are invalid", ids.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_prints_once() {
        // A thiserror variant that prints its source and also reports it as the source.
        let in_use = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let os = in_use.to_string();
        let bind =
            keycard::server::RunError::Bind { address: "127.0.0.1:8081".into(), source: in_use };
        let text = error_text(&anyhow::Error::new(bind));
        assert!(text.starts_with(&format!("cannot listen on 127.0.0.1:8081: {os} (")), "{text}");
        assert_eq!(text.matches(&os).count(), 1, "{text}");

        // Context added on top, and a cause not in the message, are both kept.
        let read = std::io::Error::other("disk on fire");
        let error = anyhow::Error::new(read).context("cannot read the config").context("start-up");
        assert_eq!(error_text(&error), "start-up: cannot read the config: disk on fire");
    }
}

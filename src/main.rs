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
    /// The CA server daemon.
    Server {
        #[command(subcommand)]
        command: ServerCommand,
    },
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
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
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
        Some(Command::Admin(command)) => Ok(keycard::cli::run_admin(*command)?),
    }
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

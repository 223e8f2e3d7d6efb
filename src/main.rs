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
    /// Start a development server with embedded defaults (trust domain example.org, state
    /// in ./.keycard-dev); the node agent joins it once it lands.
    Dev {
        /// Where the development state lives.
        #[arg(long, default_value = ".keycard-dev")]
        dir: std::path::PathBuf,
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
        Some(Command::Dev { dir }) => run_dev(&dir),
        Some(Command::Admin(command)) => Ok(keycard::cli::run_admin(*command)?),
    }
}

/// `keycard dev`: a server with development defaults, and what to paste next.
fn run_dev(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let dir = std::fs::canonicalize(dir)?;
    let args = keycard::server::config::ServerArgs {
        trust_domain: Some("example.org".parse()?),
        data_dir: Some(dir.join("server")),
        bind_address: Some("127.0.0.1:8081".parse()?),
        health_address: Some("127.0.0.1:8082".parse()?),
        ..Default::default()
    };
    let socket = keycard::server::config::default_admin_socket(&dir.join("server"));
    println!("keycard dev: CA server for trust domain example.org, state in {}", dir.display());
    println!("  admin socket : {}", socket.display());
    println!("  agent API    : 127.0.0.1:8081 (mTLS)");
    println!("  health       : http://127.0.0.1:8082/ready and /metrics");
    println!("Try, in another terminal:");
    println!("  export KEYCARD_ADMIN_SOCKET={}", socket.display());
    println!("  cargo run --release -- token generate --spiffe-id spiffe://example.org/node/dev");
    println!("  cargo run --release -- bundle show");
    println!("Ctrl-C stops it; running it again reuses the state.");
    run_server(&args)
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

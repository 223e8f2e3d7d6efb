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
    /// Admin commands: clients of a running server's admin socket.
    #[command(flatten)]
    Admin(Box<keycard::cli::AdminCommand>),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => {
            use clap::CommandFactory;
            Cli::command().print_help()?;
            Ok(())
        }
        Some(Command::CheckId { ids }) => check_ids(&ids),
        Some(Command::Admin(command)) => Ok(keycard::cli::run_admin(*command)?),
    }
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

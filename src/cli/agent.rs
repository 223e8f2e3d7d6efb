//! `keycard agent run` (the daemon, started by main.rs), `keycard agent explain` (a client
//! of the agent's admin socket) and the server-side agent admin commands
//! `keycard agent list|show|evict|ban`.

use std::io::Write;

use clap::Subcommand;
use keycard_workload_api::SpiffeId;
use serde_json::json;

use super::output::{agent_json, agent_text, count_text, emit};
use super::{CliError, Connection, client};
use crate::server::admin::pb;

/// What to do with agents.
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Run the node agent: attest to the server, keep workload SVIDs renewed, and serve
    /// the SPIFFE Workload API on a Unix socket.
    Run(Box<crate::agent::config::AgentArgs>),
    /// Ask the local agent which selectors it finds for a process and, for every entry it
    /// holds, whether it matches and which selectors are missing.
    Explain {
        /// The process to explain.
        #[arg(long)]
        pid: i32,
        /// The agent's admin socket.
        #[arg(
            long,
            env = "KEYCARD_AGENT_ADMIN_SOCKET",
            default_value_os_t = super::explain::default_agent_admin_socket(),
            value_name = "PATH"
        )]
        agent_admin_socket: std::path::PathBuf,
    },
    /// List attested agents (every page unless a page is asked for).
    List {
        /// Fetch one page of this many agents instead of all pages.
        #[arg(long)]
        page_size: Option<u32>,
        /// Fetch the page after this token (from a previous page).
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Show one agent.
    Show {
        /// The agent's SPIFFE ID.
        #[arg(long, value_name = "ID")]
        id: SpiffeId,
    },
    /// Forget an agent: it must attest again (a banned agent is unbanned this way).
    Evict {
        /// The agent's SPIFFE ID.
        #[arg(long, value_name = "ID")]
        id: SpiffeId,
    },
    /// Refuse an agent everything until it is evicted.
    Ban {
        /// The agent's SPIFFE ID.
        #[arg(long, value_name = "ID")]
        id: SpiffeId,
    },
}

/// Runs one agent command.
pub(super) async fn run(
    conn: &Connection,
    command: AgentCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match &command {
        AgentCommand::Run(_) => return Err(CliError::Daemon("keycard agent run")),
        AgentCommand::Explain { pid, agent_admin_socket } => {
            return super::explain::run(agent_admin_socket, *pid, conn.output, out).await;
        }
        _ => {}
    }
    let mut c = client::connect(conn).await?;
    let format = conn.output;
    let req = |id: SpiffeId| pb::AgentRequest { id: id.to_string() };
    match command {
        AgentCommand::List { page_size, page_token } => {
            let one_page = page_size.is_some() || page_token.is_some();
            let mut req = pb::ListAgentsRequest {
                page_size: page_size.unwrap_or(0),
                page_token: page_token.unwrap_or_default(),
            };
            let mut agents = Vec::new();
            let next = loop {
                let page =
                    c.api.list_agents(req.clone()).await.map_err(|s| c.fail(s))?.into_inner();
                agents.extend(page.agents);
                if one_page || page.next_page_token.is_empty() {
                    break page.next_page_token;
                }
                req.page_token = page.next_page_token;
            };
            let text = || {
                let mut text =
                    format!("Found {}\n\n", count_text(agents.len() as u64, "agent", "agents"));
                text.extend(agents.iter().map(agent_text));
                if !next.is_empty() {
                    text += &format!("Next page token: {next}\n");
                }
                text
            };
            let json = || {
                let list: Vec<_> = agents.iter().map(agent_json).collect();
                json!({ "agents": list, "next_page_token": next })
            };
            emit(out, format, text, json)?;
        }
        AgentCommand::Show { id } => {
            let agent = c.api.get_agent(req(id)).await.map_err(|s| c.fail(s))?.into_inner();
            emit(out, format, || agent_text(&agent), || agent_json(&agent))?;
        }
        AgentCommand::Evict { id } => {
            let shown = id.to_string();
            c.api.evict_agent(req(id)).await.map_err(|s| c.fail(s))?;
            let text = || format!("Evicted agent {shown}\n");
            emit(out, format, text, || json!({ "evicted": shown }))?;
        }
        AgentCommand::Ban { id } => {
            let agent = c.api.ban_agent(req(id)).await.map_err(|s| c.fail(s))?.into_inner();
            let text = || format!("Banned agent {}\n", agent.id);
            emit(out, format, text, || agent_json(&agent))?;
        }
        AgentCommand::Run(_) | AgentCommand::Explain { .. } => {
            unreachable!("handled before connecting")
        }
    }
    Ok(())
}

//! `keycard token generate`.

use std::io::Write;
use std::time::Duration;

use clap::Subcommand;
use keycard_workload_api::SpiffeId;
use serde_json::json;

use super::output::{emit, time_text};
use super::{CliError, Connection, client, parse_ttl};
use crate::server::admin::pb;

/// What to do with join tokens.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Generate a single-use join token; the token is shown once, here.
    Generate {
        /// The agent ID to assign (default: spiffe://<td>/keycard/agent/join_token/<token id>).
        #[arg(long, value_name = "ID")]
        spiffe_id: Option<SpiffeId>,
        /// How long the token stays valid.
        #[arg(long, value_parser = parse_ttl, default_value = "600s", value_name = "TTL")]
        ttl: Duration,
    },
}

/// The text form of a generated token.
pub fn token_text(reply: &pb::GenerateJoinTokenResponse) -> String {
    format!(
        "Token    : {}\nToken ID : {}\nAgent ID : {}\nExpires  : {}\n",
        reply.token,
        reply.token_id,
        reply.agent_id,
        time_text(reply.expires_at)
    )
}

/// Runs one token command.
pub(super) async fn run(
    conn: &Connection,
    command: TokenCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let TokenCommand::Generate { spiffe_id, ttl } = command;
    let mut c = client::connect(conn).await?;
    let req = pb::GenerateJoinTokenRequest {
        ttl_seconds: ttl.as_secs(),
        agent_id: spiffe_id.map(|i| i.to_string()).unwrap_or_default(),
    };
    let reply = c.api.generate_join_token(req).await.map_err(|s| c.fail(s))?.into_inner();
    let json = || {
        json!({
            "token": reply.token,
            "token_id": reply.token_id,
            "agent_id": reply.agent_id,
            "expires_at": reply.expires_at,
        })
    };
    emit(out, conn.output, || token_text(&reply), json).map_err(Into::into)
}

//! `keycard healthcheck`: exits with an error unless the server is healthy.

use std::io::Write;

use serde_json::json;

use super::output::emit;
use super::{CliError, Connection, client};
use crate::server::admin::pb;

/// Why the server is unhealthy, in one line.
pub fn problems(reply: &pb::HealthResponse) -> String {
    let mut problems = Vec::new();
    if !reply.datastore_error.is_empty() {
        problems.push(format!("datastore: {}", reply.datastore_error));
    }
    if reply.active_x509_authority.is_empty() {
        problems.push("no active X.509 authority".to_owned());
    }
    if reply.active_jwt_authority.is_empty() {
        problems.push("no active JWT authority".to_owned());
    }
    problems.join("; ")
}

/// Asks the server for its health and prints it.
pub(super) async fn run(conn: &Connection, out: &mut dyn Write) -> Result<(), CliError> {
    let mut c = client::connect(conn).await?;
    let reply = c.api.health(pb::HealthRequest {}).await.map_err(|s| c.fail(s))?.into_inner();
    if conn.output == super::OutputFormat::Json {
        let doc = json!({
            "healthy": reply.healthy,
            "trust_domain": reply.trust_domain,
            "datastore_error": reply.datastore_error,
            "active_x509_authority": reply.active_x509_authority,
            "active_jwt_authority": reply.active_jwt_authority,
            "datastore_kind": reply.datastore_kind,
            "server_id": reply.server_id,
            "peers": reply.peers.iter().map(|p| json!({
                "id": p.id,
                "address": p.address,
                "last_seen_unix": p.last_seen_unix,
                "live": p.live,
            })).collect::<Vec<_>>(),
        });
        emit(out, conn.output, String::new, || doc)?;
    }
    if !reply.healthy {
        return Err(CliError::Unhealthy(problems(&reply)));
    }
    let text = || {
        let mut text = format!(
            "Server is healthy (trust domain {}, server {}, datastore {}).\n",
            reply.trust_domain, reply.server_id, reply.datastore_kind
        );
        for p in &reply.peers {
            let seen = if p.live { "live" } else { "not seen in the last 30 s" };
            text.push_str(&format!("Peer {} at {} ({seen}).\n", p.id, p.address));
        }
        text
    };
    if conn.output == super::OutputFormat::Text {
        emit(out, conn.output, text, || json!(null))?;
    }
    Ok(())
}

//! `keycard agent explain --pid N`: asks the local agent (over its admin socket) which
//! selectors it finds for a process and, for every entry it holds, whether the entry
//! matches and which selectors are missing: "why does my workload get no SVID?".

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::CliError;
use super::output::{OutputFormat, emit, time_text};
use crate::agent::admin::pb::{self, agent_admin_client::AgentAdminClient};

/// The agent admin socket the CLI uses by default (the agent's default data directory).
pub fn default_agent_admin_socket() -> PathBuf {
    crate::agent::config::default_admin_socket(Path::new(crate::agent::config::DEFAULT_DATA_DIR))
}

/// Runs `agent explain`.
pub(super) async fn run(
    socket: &Path,
    pid: i32,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let unreachable =
        |detail: String| CliError::AgentUnreachable { path: socket.to_path_buf(), detail };
    let channel = keycard_workload_api::client::unix_channel(socket).await.map_err(|e| {
        let detail =
            std::error::Error::source(&e).map_or_else(|| e.to_string(), ToString::to_string);
        unreachable(detail)
    })?;
    let reply = AgentAdminClient::new(channel)
        .explain(pb::ExplainRequest { pid })
        .await
        .map_err(|s| match s.code() {
            tonic::Code::Unknown | tonic::Code::Unavailable => unreachable(s.message().to_owned()),
            code => CliError::Server { code, message: s.message().to_owned() },
        })?
        .into_inner();
    emit(out, format, || text(&reply), || explain_json(&reply))?;
    Ok(())
}

fn text(reply: &pb::ExplainResponse) -> String {
    let mut t = format!("Process {} has {} selectors:\n", reply.pid, reply.selectors.len());
    for s in &reply.selectors {
        t += &format!("  {s}\n");
    }
    t += &format!("\nEntries on this agent: {}\n", reply.entries.len());
    for e in &reply.entries {
        let verdict = if e.matches { "MATCH   " } else { "NO MATCH" };
        t += &format!("  {verdict}  {}  (entry {})\n", e.spiffe_id, e.entry_id);
        if e.matches {
            if e.has_svid {
                t += &format!("            SVID valid until {}\n", time_text(e.svid_expires_at));
            } else {
                t += "            no SVID yet: the agent is still fetching it from the server\n";
            }
        } else if e.selectors.is_empty() {
            t += "            the entry has no selectors, so it matches no process\n";
        } else {
            t += &format!("            missing: {}\n", e.missing_selectors.join(" "));
        }
    }
    if !reply.entries.iter().any(|e| e.matches) {
        let uid = reply.selectors.iter().find_map(|s| s.strip_prefix("unix:uid:")).unwrap_or("UID");
        t += &format!(
            "\nNo entry matches this process, so it gets no SVID. Register one, for example:\n  \
             keycard entry create --parent-id <this agent's SPIFFE ID> \
             --spiffe-id spiffe://<trust domain>/<name> --selector unix:uid:{uid}\n"
        );
    }
    t
}

fn explain_json(reply: &pb::ExplainResponse) -> serde_json::Value {
    let entries: Vec<_> = reply
        .entries
        .iter()
        .map(|e| {
            json!({
                "entry_id": e.entry_id,
                "spiffe_id": e.spiffe_id,
                "selectors": e.selectors,
                "matches": e.matches,
                "missing_selectors": e.missing_selectors,
                "has_svid": e.has_svid,
                "svid_expires_at": e.svid_expires_at,
            })
        })
        .collect();
    json!({ "pid": reply.pid, "selectors": reply.selectors, "entries": entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(matches: bool) -> pb::ExplainResponse {
        pb::ExplainResponse {
            pid: 42,
            selectors: vec!["unix:uid:1000".into(), "unix:user:alice".into()],
            entries: vec![pb::EntryMatch {
                entry_id: "e1".into(),
                spiffe_id: "spiffe://example.org/web".into(),
                selectors: vec!["unix:uid:1000".into(), "unix:gid:50".into()],
                matches,
                missing_selectors: if matches { vec![] } else { vec!["unix:gid:50".into()] },
                has_svid: matches,
                svid_expires_at: if matches { 1_800_000_000 } else { 0 },
            }],
        }
    }

    #[test]
    fn text_names_the_missing_selectors_and_the_fix() {
        let t = text(&reply(false));
        assert!(t.contains("Process 42 has 2 selectors"), "{t}");
        assert!(t.contains("NO MATCH  spiffe://example.org/web  (entry e1)"), "{t}");
        assert!(t.contains("missing: unix:gid:50"), "{t}");
        assert!(
            t.contains("keycard entry create") && t.contains("--selector unix:uid:1000"),
            "{t}"
        );
        let t = text(&reply(true));
        assert!(
            t.contains("MATCH     spiffe://example.org/web") && t.contains("valid until 2027"),
            "{t}"
        );
        assert!(!t.contains("No entry matches"), "{t}");
        let j = explain_json(&reply(false));
        assert_eq!(j["entries"][0]["missing_selectors"][0], "unix:gid:50");
        assert_eq!(j["pid"], 42);
    }
}

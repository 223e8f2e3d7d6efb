//! `keycard agent explain --pid N`: asks the local agent (over its admin socket) which
//! selectors it finds for a process and, for every entry it holds, whether the entry
//! matches and which selectors are missing: "why does my workload get no SVID?".

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use super::CliError;
use super::client::{io_kind, owner_of};
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
    let channel = keycard_workload_api::client::unix_channel(socket).await.map_err(|e| {
        let detail =
            std::error::Error::source(&e).map_or_else(|| e.to_string(), ToString::to_string);
        connect_failed(socket, io_kind(&e), detail)
    })?;
    let reply = AgentAdminClient::new(channel)
        .explain(pb::ExplainRequest { pid })
        .await
        .map_err(|s| call_failed(socket, &s))?
        .into_inner();
    emit(out, format, || text(&reply), || explain_json(&reply))?;
    Ok(())
}

/// Connecting failed: the file system refused (EACCES), nobody listens (no socket, or a
/// stale one), or the agent accepted and closed the connection before the HTTP/2
/// handshake, which only its peer-uid check does.
fn connect_failed(socket: &Path, kind: Option<io::ErrorKind>, detail: String) -> CliError {
    let refused = |detail| CliError::AgentPermissionDenied {
        path: socket.to_path_buf(),
        detail,
        owner: owner_of(socket),
    };
    match kind {
        Some(io::ErrorKind::PermissionDenied) => refused(detail),
        None
        | Some(
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::UnexpectedEof,
        ) => refused(format!("the agent closed the connection: {detail}")),
        Some(_) => CliError::AgentUnreachable { path: socket.to_path_buf(), detail },
    }
}

/// The call failed. A status without a transport error under it is the agent's answer;
/// a connection the agent accepted and then closed is its peer-uid check.
fn call_failed(socket: &Path, status: &tonic::Status) -> CliError {
    let Some(source) = std::error::Error::source(status) else {
        return CliError::Server { code: status.code(), message: status.message().to_owned() };
    };
    match io_kind(source) {
        Some(kind @ (io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied)) => {
            connect_failed(socket, Some(kind), status.message().to_owned())
        }
        _ => connect_failed(socket, None, status.message().to_owned()),
    }
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

    /// The agent's listener accepts, reads the peer uid, and closes the connection of a uid
    /// it does not serve: the CLI says permission was refused, not "is the agent running?".
    #[tokio::test]
    async fn a_connection_the_agent_drops_is_reported_as_a_permission_refusal() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("admin.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let dropper = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        });
        let err = run(&path, 1, OutputFormat::Text, &mut Vec::new()).await.unwrap_err();
        dropper.abort();
        assert!(matches!(err, CliError::AgentPermissionDenied { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("permission refused") && text.contains("and root"), "{text}");
        assert!(!text.contains("is the agent running"), "{text}");
        // Nobody listening at all is still "is the agent running?".
        let none = tmp.path().join("none.sock");
        let err = run(&none, 1, OutputFormat::Text, &mut Vec::new()).await.unwrap_err();
        assert!(matches!(err, CliError::AgentUnreachable { .. }), "{err}");
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

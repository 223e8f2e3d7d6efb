//! How admin replies are printed: aligned text for people, JSON for scripts.
//!
//! JSON keeps the wire field names and numbers (times in seconds since the Unix epoch);
//! text shows times in RFC 3339 and TTLs in humantime form.

use std::io::{self, Write};
use std::time::Duration;

use serde_json::{Value, json};

use crate::server::admin::pb;

/// Output format of every admin command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned text for people.
    Text,
    /// One JSON document for scripts.
    Json,
}

/// Writes the text or the JSON form of a reply, whichever `format` asks for.
pub fn emit(
    out: &mut dyn Write,
    format: OutputFormat,
    text: impl FnOnce() -> String,
    json: impl FnOnce() -> Value,
) -> io::Result<()> {
    match format {
        OutputFormat::Text => out.write_all(text().as_bytes()),
        OutputFormat::Json => {
            let doc = serde_json::to_string_pretty(&json()).map_err(io::Error::other)?;
            writeln!(out, "{doc}")
        }
    }
}

/// `n` and the noun in the right number: `count_text(1, "entry", "entries")` is
/// `1 entry`, `count_text(0, "entry", "entries")` is `0 entries`.
pub fn count_text(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A Unix time in RFC 3339 (UTC), or the number itself if it is out of range.
pub fn time_text(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| secs.to_string())
}

fn ttl_text(secs: u64) -> String {
    if secs == 0 {
        "server default".into()
    } else {
        humantime::format_duration(Duration::from_secs(secs)).to_string()
    }
}

/// The binding mode as shown: the wire's empty string is the default, `none`.
fn binding_text(binding: &str) -> &str {
    if binding.is_empty() { "none" } else { binding }
}

/// The JSON form of an entry.
pub fn entry_json(entry: &pb::Entry) -> Value {
    let spec = entry.spec.clone().unwrap_or_default();
    let mut doc = json!({
        "id": entry.id,
        "spiffe_id": spec.spiffe_id,
        "parent_id": spec.parent_id,
        "selectors": spec.selectors,
        "x509_ttl_seconds": spec.x509_ttl_seconds,
        "jwt_ttl_seconds": spec.jwt_ttl_seconds,
        "dns_names": spec.dns_names,
        "hint": spec.hint,
        "admin": spec.admin,
        "jwt_svid_binding": binding_text(&spec.jwt_svid_binding),
        "federates_with": spec.federates_with,
        "revision": entry.revision,
        "created_at": entry.created_at,
        "updated_at": entry.updated_at,
    });
    // Only in create and update replies: the parent does not exist yet (see `entry.rs`).
    if entry.parent_missing {
        doc["parent_missing"] = Value::Bool(true);
    }
    doc
}

/// The text form of an entry: one `Label : value` line per field, a blank line after.
pub fn entry_text(entry: &pb::Entry) -> String {
    let spec = entry.spec.clone().unwrap_or_default();
    let mut lines = vec![
        format!("Entry ID         : {}", entry.id),
        format!("SPIFFE ID        : {}", spec.spiffe_id),
        format!("Parent ID        : {}", spec.parent_id),
        format!("Revision         : {}", entry.revision),
        format!("X509-SVID TTL    : {}", ttl_text(spec.x509_ttl_seconds)),
        format!("JWT-SVID TTL     : {}", ttl_text(spec.jwt_ttl_seconds)),
    ];
    lines.extend(spec.selectors.iter().map(|s| format!("Selector         : {s}")));
    lines.extend(spec.dns_names.iter().map(|d| format!("DNS name         : {d}")));
    if !spec.hint.is_empty() {
        lines.push(format!("Hint             : {}", spec.hint));
    }
    if spec.admin {
        lines.push("Admin            : true".into());
    }
    if binding_text(&spec.jwt_svid_binding) != "none" {
        lines.push(format!("JWT-SVID binding : {}", spec.jwt_svid_binding));
    }
    lines.extend(spec.federates_with.iter().map(|td| format!("Federates with   : {td}")));
    lines.push(format!("Updated          : {}", time_text(entry.updated_at)));
    lines.join("\n") + "\n\n"
}

/// The JSON form of an agent.
pub fn agent_json(agent: &pb::Agent) -> Value {
    json!({
        "id": agent.id,
        "attestation_type": agent.attestation_type,
        "selectors": agent.selectors,
        "svid_serial": agent.svid_serial,
        "svid_expires_at": agent.svid_expires_at,
        "banned": agent.banned,
        "can_reattest": agent.can_reattest,
        "created_at": agent.created_at,
        "updated_at": agent.updated_at,
    })
}

/// The text form of an agent.
pub fn agent_text(agent: &pb::Agent) -> String {
    let mut lines = vec![
        format!("Agent ID         : {}", agent.id),
        format!("Attestation type : {}", agent.attestation_type),
        format!("SVID serial      : {}", agent.svid_serial),
        format!("SVID expires     : {}", time_text(agent.svid_expires_at)),
        format!("Banned           : {}", agent.banned),
    ];
    lines.extend(agent.selectors.iter().map(|s| format!("Selector         : {s}")));
    lines.join("\n") + "\n\n"
}

fn kind_name(kind: i32) -> &'static str {
    match pb::AuthorityKind::try_from(kind) {
        Ok(pb::AuthorityKind::X509) => "x509",
        Ok(pb::AuthorityKind::Jwt) => "jwt",
        _ => "unknown",
    }
}

/// The JSON form of an authority.
pub fn authority_json(a: &pb::Authority) -> Value {
    json!({
        "kind": kind_name(a.kind),
        "id": a.id,
        "state": a.state,
        "tainted": a.tainted,
        "issued_at": a.issued_at,
        "not_after": a.not_after,
        "server_id": a.server_id,
    })
}

/// The text form of authorities: one row each under a header.
pub fn authorities_text(list: &[pb::Authority]) -> String {
    let mut text =
        format!("{:<42} {:<9} {:<8} {:<25} {}\n", "ID", "STATE", "TAINTED", "EXPIRES", "SERVER");
    for a in list {
        let tainted = if a.tainted { "yes" } else { "no" };
        let expires = time_text(a.not_after);
        text +=
            &format!("{:<42} {:<9} {:<8} {expires:<25} {}\n", a.id, a.state, tainted, a.server_id);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> pb::Entry {
        pb::Entry {
            id: "e-1".into(),
            spec: Some(pb::EntrySpec {
                spiffe_id: "spiffe://example.org/web".into(),
                parent_id: "spiffe://example.org/keycard/server".into(),
                selectors: vec!["unix:uid:1000".into()],
                x509_ttl_seconds: 3600,
                dns_names: vec!["web.example.org".into()],
                ..Default::default()
            }),
            revision: 4,
            created_at: 0,
            updated_at: 1_700_000_000,
            parent_missing: false,
        }
    }

    #[test]
    fn entries_print_as_labelled_text_and_as_json() {
        let text = entry_text(&entry());
        assert!(text.contains("Entry ID         : e-1\n"), "{text}");
        assert!(text.contains("X509-SVID TTL    : 1h\n"), "{text}");
        assert!(text.contains("JWT-SVID TTL     : server default\n"), "{text}");
        assert!(text.contains("Selector         : unix:uid:1000\n"), "{text}");
        assert!(text.contains("Updated          : 2023-11-14T22:13:20Z\n"), "{text}");
        let mut out = Vec::new();
        emit(&mut out, OutputFormat::Json, || unreachable!(), || entry_json(&entry())).unwrap();
        let doc: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(doc["spiffe_id"], "spiffe://example.org/web");
        assert_eq!(doc["selectors"][0], "unix:uid:1000");
        assert_eq!(doc["x509_ttl_seconds"], 3600);
        assert_eq!(doc["revision"], 4);
    }

    #[test]
    fn counts_take_the_singular_only_for_one() {
        assert_eq!(count_text(1u32, "entry", "entries"), "1 entry");
        assert_eq!(count_text(0u32, "entry", "entries"), "0 entries");
        assert_eq!(count_text(2u64, "agent", "agents"), "2 agents");
        assert_eq!(format!("Found {}", count_text(1u32, "entry", "entries")), "Found 1 entry");
    }

    #[test]
    fn text_format_writes_only_the_text() {
        let mut out = Vec::new();
        emit(&mut out, OutputFormat::Text, || "hello\n".into(), || unreachable!()).unwrap();
        assert_eq!(out, b"hello\n");
    }

    #[test]
    fn authorities_print_as_a_table() {
        let a = pb::Authority {
            kind: pb::AuthorityKind::Jwt.into(),
            id: "kid1".into(),
            state: "active".into(),
            tainted: false,
            issued_at: 0,
            not_after: 86_400,
            server_id: "3f2a9c01d4e5b6a7".into(),
        };
        let text = authorities_text(std::slice::from_ref(&a));
        assert!(text.starts_with("ID "), "{text}");
        assert!(text.contains("kid1") && text.contains("active") && text.contains("1970-01-02"));
        assert!(text.lines().nth(1).unwrap().ends_with(" 3f2a9c01d4e5b6a7"), "{text}");
        assert_eq!(authority_json(&a)["kind"], "jwt");
        assert_eq!(authority_json(&a)["server_id"], "3f2a9c01d4e5b6a7");
    }
}

//! `entry create --file` and `entry delete --file` against live admin APIs.

use std::io::Cursor;
use std::path::Path;

use clap::Parser;
use serde_json::Value;

use super::*;
use crate::cli::{AdminCommand, Connection, execute};
use crate::server::admin::tests::{AGENT_ID, Harness};

#[derive(Debug, Parser)]
struct TestCli {
    #[command(subcommand)]
    command: AdminCommand,
}

/// Runs one command line against `h`; returns the output or the error text.
async fn run(h: &Harness, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["keycard"];
    all.extend_from_slice(args);
    all.extend(["--admin-socket", h.socket.to_str().unwrap()]);
    let command = TestCli::try_parse_from(all).map_err(|e| e.to_string())?.command;
    let mut out = Vec::new();
    execute(command, &mut out).await.map_err(|e| e.to_string())?;
    Ok(String::from_utf8(out).unwrap())
}

const FILE: &str = r#"[
  {"spiffe_id": "spiffe://example.org/web", "parent_id": "spiffe://example.org/keycard/agent/x509pop/a1",
   "selectors": ["unix:uid:1000", "unix:gid:50"], "dns_names": ["web.example.org"],
   "x509_ttl_seconds": 3600, "jwt_ttl_seconds": 300, "hint": "blue", "admin": true,
   "jwt_svid_binding": "x509"},
  {"spiffe_id": "spiffe://example.org/db", "parent_id": "spiffe://example.org/keycard/agent/x509pop/a1",
   "selectors": ["unix:uid:1001"]}
]"#;

/// The entries of `entry show --output json` without what the server assigns.
fn specs_of(show_json: &str) -> Vec<Value> {
    let doc: Value = serde_json::from_str(show_json).unwrap();
    let mut specs: Vec<Value> = doc["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let mut e = e.clone();
            for key in ["id", "revision", "created_at", "updated_at"] {
                e.as_object_mut().unwrap().remove(key);
            }
            e
        })
        .collect();
    specs.sort_by_key(|e| e["spiffe_id"].as_str().unwrap().to_owned());
    specs
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn show_output_creates_the_same_entries_on_a_fresh_server_and_deletes_them() {
    let first = Harness::start(vec![]).await;
    let tmp = tempfile::tempdir().unwrap();
    let file = write(tmp.path(), "entries.json", FILE);
    let text = run(&first, &["entry", "create", "--file", &file]).await.unwrap();
    assert!(text.starts_with("Created 2 entries\n"), "{text}");
    assert!(text.contains("  spiffe://example.org/db\n"), "{text}");
    let shown = run(&first, &["entry", "show", "--output", "json"]).await.unwrap();
    let wanted = specs_of(&shown);
    assert_eq!(wanted.len(), 2);
    assert_eq!(wanted[1]["dns_names"][0], "web.example.org");
    assert_eq!(wanted[1]["hint"], "blue");
    assert_eq!(
        (&wanted[0]["jwt_svid_binding"], &wanted[1]["jwt_svid_binding"]),
        (&"none".into(), &"x509".into())
    );

    let fresh = Harness::start(vec![]).await;
    let dump = write(tmp.path(), "dump.json", &shown);
    let args = ["entry", "create", "--file", &dump, "--output", "json"];
    let created = run(&fresh, &args).await.unwrap();
    let again = run(&fresh, &["entry", "show", "--output", "json"]).await.unwrap();
    assert_eq!(specs_of(&again), wanted);
    // Reading the same document again is refused whole: every entry is a duplicate.
    let err = run(&fresh, &["entry", "create", "--file", &dump]).await.unwrap_err();
    assert!(err.starts_with("nothing was created: 2 of 2 entries break a rule:\n  #0 "), "{err}");
    assert!(err.contains("already exists"), "{err}");

    // The create reply reads back as a delete file, as does `entry show` output.
    let created_file = write(tmp.path(), "created.json", &created);
    let text = run(&fresh, &["entry", "delete", "--file", &created_file]).await.unwrap();
    assert!(text.starts_with("Deleted 2 entries\n"), "{text}");
    assert_eq!(run(&fresh, &["entry", "count"]).await.unwrap(), "0 registration entries\n");
    let err = run(&fresh, &["entry", "delete", "--file", &created_file]).await.unwrap_err();
    assert!(err.starts_with("nothing was deleted: 2 of 2"), "{err}");
    assert!(err.contains("no entry with ID"), "{err}");
    run(&first, &["entry", "delete", "--file", &dump]).await.unwrap();
    assert_eq!(run(&first, &["entry", "count"]).await.unwrap(), "0 registration entries\n");
}

#[tokio::test]
async fn standard_input_is_read_for_a_dash() {
    let h = Harness::start(vec![]).await;
    let conn = Connection { admin_socket: h.socket.clone(), output: OutputFormat::Json };
    let mut c = super::super::client::connect(&conn).await.unwrap();
    let one = format!(
        r#"{{"spiffe_id": "spiffe://example.org/solo", "parent_id": "{AGENT_ID}", "selectors": ["unix:uid:9"]}}"#
    );
    let mut out = Vec::new();
    let mut stdin = Cursor::new(one.into_bytes());
    create(&mut c, OutputFormat::Json, Path::new("-"), &mut stdin, &mut out).await.unwrap();
    let doc: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(doc["entries"][0]["spiffe_id"], "spiffe://example.org/solo");
    assert_eq!(doc["entries"][0]["parent_missing"], true);
    let id = doc["entries"][0]["id"].as_str().unwrap().to_owned();
    let mut stdin = Cursor::new(format!("[\"{id}\"]").into_bytes());
    let mut out = Vec::new();
    delete(&mut c, OutputFormat::Text, Path::new("-"), &mut stdin, &mut out).await.unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("Deleted 1 entry\n{id}  spiffe://example.org/solo\n")
    );
    assert_eq!(run(&h, &["entry", "count"]).await.unwrap(), "0 registration entries\n");
}

#[test]
fn bad_files_name_each_bad_entry_and_the_accepted_forms() {
    let path = Path::new("f.json");
    let text = r#"[{"spiffe_id": "spiffe://example.org/a", "parent_id": "spiffe://example.org/b",
        "selectors": ["unix:uid:1"]},
       {"spiffe_id": "spiffe://example.org/a", "parent_id": "spiffe://example.org/b",
        "selector": ["unix:uid:1"]},
       {"spiffe_id": "spiffe://example.org/c", "selectors": ["unix:uid:1"]}]"#;
    let err = create_request(path, text).unwrap_err().to_string();
    assert!(err.contains("entry #1: unknown field `selector`"), "{err}");
    assert!(err.contains("entry #2: missing field `parent_id`"), "{err}");
    assert!(!err.contains("entry #0"), "{err}");
    let err = create_request(path, "[]").unwrap_err().to_string();
    assert!(err.contains("keycard entry show --output json"), "{err}");
    let err = create_request(path, "{\"entries\": 3}").unwrap_err().to_string();
    assert!(err.contains("holds no entries"), "{err}");
    assert!(matches!(create_request(path, "[1,"), Err(EntryFileError::NotJson { .. })));
    let err = delete_request(path, "[\"e-1\", 5, {\"spiffe_id\": \"x\"}]").unwrap_err().to_string();
    assert!(err.contains("entry #1: neither") && err.contains("entry #2: no \"id\""), "{err}");
    let ids = delete_request(path, r#"{"entries": [{"id": "e-1"}], "next_page_token": ""}"#);
    assert_eq!(ids.unwrap().ids, vec!["e-1"]);
    let too_many = format!("[{}\"x\"]", "\"x\",".repeat(MAX_BATCH_ENTRIES));
    let err = delete_request(path, &too_many).unwrap_err().to_string();
    assert!(err.contains("10001 entries, more than the 10000"), "{err}");
    let err = read_source(Path::new("/nonexistent/entries.json"), &mut Cursor::new(vec![]));
    assert!(err.unwrap_err().to_string().starts_with("cannot read /nonexistent/entries.json"));
}

#[test]
fn file_and_flags_do_not_mix() {
    let parse = |args: &[&str]| {
        TestCli::try_parse_from(std::iter::once("keycard").chain(args.iter().copied()))
    };
    assert!(parse(&["entry", "create", "--file", "-"]).is_ok());
    assert!(parse(&["entry", "create", "--file", "-", "--spiffe-id", "spiffe://e.org/a"]).is_err());
    assert!(parse(&["entry", "create", "--file", "-", "--hint", "x"]).is_err());
    assert!(parse(&["entry", "delete", "--file", "ids.json"]).is_ok());
    assert!(parse(&["entry", "delete", "--file", "ids.json", "--id", "e-1"]).is_err());
    assert!(parse(&["entry", "delete"]).is_err());
}

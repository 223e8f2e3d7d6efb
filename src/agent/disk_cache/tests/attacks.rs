//! Edits an attacker could make to `workload_cache.json`, each of which today's checks
//! refuse: none of them reaches a workload or a file written by `keycard api fetch --write`.

use serde_json::Value;

use super::*;
use crate::agent::attest::UnixAttestorOptions;
use crate::agent::cache::CachedSvid;
use crate::cli::api::{ApiArgs, ApiCommand, FetchCommand, execute};
use crate::cli::output::OutputFormat;
use crate::telemetry::AgentMetrics;

/// The file's body as JSON, for editing.
fn read_body(f: &Fixture) -> (Value, Value) {
    let envelope: Value = serde_json::from_slice(&std::fs::read(f.file()).unwrap()).unwrap();
    let body: Value = serde_json::from_str(envelope["body"].as_str().unwrap()).unwrap();
    (envelope, body)
}

/// Writes `body` back; with `resign`, with a fresh tag made with the agent's own key (an
/// attacker who could also read `workload_cache.key`), otherwise with the old tag.
fn write_body(f: &Fixture, mut envelope: Value, body: &Value, resign: bool) {
    let text = serde_json::to_string(body).unwrap();
    if resign {
        let key = std::fs::read(f.dir.path().join(crate::agent::storage::CACHE_KEY_FILE)).unwrap();
        let key = hmac::Key::new(hmac::HMAC_SHA256, &key);
        envelope["mac"] = Value::from(hex::encode(hmac::sign(&key, text.as_bytes()).as_ref()));
    }
    envelope["body"] = Value::from(text);
    std::fs::write(f.file(), serde_json::to_vec(&envelope).unwrap()).unwrap();
}

fn b64_entry(e: &pb::Entry) -> Value {
    Value::from(B64.encode(e.encode_to_vec()))
}

#[tokio::test]
async fn an_edited_entry_selector_in_the_cache_file_is_not_served() {
    let f = Fixture::saved().await;
    let (envelope, mut body) = read_body(&f);
    // Entry "a" now selects uid 666, the attacker's.
    let mut a = entry("a");
    a.selectors = vec!["unix:uid:666".into()];
    let entries = body["entries"].as_array_mut().unwrap();
    let index = entries.iter().position(|e| *e == b64_entry(&entry("a"))).unwrap();
    entries[index] = b64_entry(&a);
    write_body(&f, envelope, &body, false);

    let (fresh, restored) = f.load();
    let e = restored.unwrap_err().to_string();
    assert!(e.contains("workload_cache.json") && e.contains("not authenticated"), "{e}");
    assert!(fresh.svids_for(&selectors(&["unix:uid:666"])).is_empty());
    assert!(fresh.entry_ids().is_empty(), "nothing from the edited file is taken");
}

/// An entry selecting this process's uid, its SVID signed by `foreign` (a CA the attacker
/// holds), and `foreign` appended to the cached bundle.
fn plant_foreign_ca_and_svid(f: &Fixture, foreign: &CaManager, uid: u32, resign: bool) {
    let (envelope, mut body) = read_body(f);
    let evil = pb::Entry {
        id: "evil".into(),
        spiffe_id: "spiffe://example.org/admin".into(),
        selectors: vec![format!("unix:uid:{uid}")],
        ..Default::default()
    };
    body["entries"].as_array_mut().unwrap().push(b64_entry(&evil));
    let mut bundle =
        SpiffeBundle::parse(f.td.clone(), body["bundle"].as_str().unwrap().as_bytes()).unwrap();
    bundle.x509_authorities.extend(foreign.bundle().unwrap().x509_authorities);
    body["bundle"] = Value::from(bundle.to_json().unwrap());
    let minted = crate::agent::cache::test_svid(
        foreign,
        "evil",
        "spiffe://example.org/admin",
        Duration::from_secs(600),
    );
    let svid = CachedSvid {
        entry_id: "evil".into(),
        spiffe_id: keycard_workload_api::SpiffeId::parse("spiffe://example.org/admin").unwrap(),
        chain: minted.chain.into(),
        key: Arc::new(crate::agent::cache::SvidKey::of(&minted.key)),
        serial: minted.serial.into(),
        issued_at: minted.issued_at,
        expires_at: minted.renew_at,
        authority_id: None,
        renew_at: minted.renew_at,
    };
    let stored = serde_json::to_value(StoredSvid::of(&svid)).unwrap();
    body["svids"].as_array_mut().unwrap().push(stored);
    write_body(f, envelope, &body, resign);
}

#[tokio::test]
async fn a_foreign_ca_appended_to_the_cached_bundle_and_its_svid_are_neither_served_nor_written() {
    let f = Fixture::saved().await;
    let uid = std::fs::metadata(f.dir.path()).unwrap().uid();
    let foreign = crate::ca::manager::test_ca(f.td.clone());

    // With the old tag: the file is not this agent's.
    plant_foreign_ca_and_svid(&f, &foreign, uid, false);
    let e = f.load().1.unwrap_err().to_string();
    assert!(e.contains("not authenticated"), "{e}");

    // Even re-tagged with the agent's key: the cached bundle is not the agent's bundle.json.
    let f = Fixture::saved().await;
    plant_foreign_ca_and_svid(&f, &foreign, uid, true);
    let (fresh, restored) = f.load();
    let e = restored.unwrap_err().to_string();
    assert!(e.contains("bundle.json"), "{e}");
    assert!(fresh.bundle().is_none(), "the planted bundle is not taken");
    assert!(fresh.svid("evil").is_none());

    // A workload of this uid asks the agent's real Workload API, over a real socket, for
    // its SVIDs and has them written out: nothing from the planted file is.
    let fresh = Arc::new(fresh);
    let socket = f.dir.path().join("agent.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::agent::workload_api::serve(
        listener,
        fresh.clone(),
        UnixAttestorOptions::default(),
        Arc::new(AgentMetrics::new()),
        None,
        async move {
            let _ = stopped.await;
        },
    ));
    let out_dir = f.dir.path().join("written");
    let args = ApiArgs {
        socket: Some(format!("unix://{}", socket.display())),
        output: OutputFormat::Text,
        command: ApiCommand::Fetch(FetchCommand::X509 { write: Some(out_dir.clone()) }),
    };
    let mut out = Vec::new();
    let e = execute(args, &mut out).await.unwrap_err().to_string();
    assert!(e.contains("no identity"), "{e}");
    let written = std::fs::read_dir(&out_dir).map(|d| d.count()).unwrap_or(0);
    assert_eq!(written, 0, "no SVID or bundle file is written");
    let _ = stop.send(());
    let _ = server.await;
}

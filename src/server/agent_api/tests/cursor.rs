//! Sync by cursor through a real server: sizes on the wire, and every way the authorized
//! set changes (deletion, re-parenting, node aliases, re-attestation, unknown cursors).

use std::collections::BTreeSet;
use std::time::SystemTime;

use super::*;
use std::collections::BTreeMap;

use keycard_workload_api::SpiffeBundle;

use crate::agent::client::SyncDelta;
use crate::server::agent_api::cursor_sync::Cursor;

/// What an agent holds, as these tests follow it (the agent's cache keeps it otherwise).
#[derive(Debug, Clone, Default)]
struct Held {
    revision: u64,
    entries: BTreeMap<String, pb::Entry>,
    bundle: Option<SpiffeBundle>,
}

impl Held {
    /// Merges what `delta` changed.
    fn apply(&mut self, delta: &SyncDelta) {
        if delta.full {
            self.entries.clear();
        }
        for id in &delta.removed {
            self.entries.remove(id);
        }
        for e in &delta.entries {
            self.entries.insert(e.id.clone(), e.clone());
        }
        self.revision = delta.revision;
    }
}

/// One by-cursor sync of `agent` from `state`, applied to it.
async fn sync(agent: &mut ServerClient, state: &mut (Held, Vec<u8>)) -> SyncDelta {
    let seq = state.0.bundle.as_ref().and_then(|b| b.sequence).unwrap_or(0);
    let delta = agent.sync_delta(&state.1, seq, state.0.revision).await.unwrap();
    if let Some(b) = &delta.bundle {
        state.0.bundle = Some(b.clone());
    }
    state.1 = delta.cursor.clone();
    state.0.apply(&delta);
    delta
}

fn ids(state: &(Held, Vec<u8>)) -> BTreeSet<String> {
    state.0.entries.keys().cloned().collect()
}

fn sent(delta: &SyncDelta) -> BTreeSet<String> {
    delta.entries.iter().map(|e| e.id.clone()).collect()
}

#[tokio::test]
async fn an_idle_sync_of_many_entries_is_a_few_bytes_and_one_change_is_one_entry() {
    let h = Harness::start().await;
    let mut agent = h.agent().await;
    let me = agent.identity().unwrap().spiffe_id.clone();
    let count = 100_000;
    let specs: Vec<EntrySpec> = (0..count)
        .map(|n| {
            EntrySpec::new(
                id(&format!("spiffe://example.org/w{n}")),
                me.clone(),
                selectors(&["unix:uid:1"]),
            )
        })
        .collect();
    let made = h.store.create_entries(&specs, SystemTime::now()).unwrap();
    let mut state = Default::default();
    let first = sync(&mut agent, &mut state).await;
    assert!(first.full && first.bundle.is_some());
    assert_eq!(state.0.entries.len(), count);

    let idle = sync(&mut agent, &mut state).await;
    assert!(!idle.full && idle.entries.is_empty() && idle.removed.is_empty());
    assert!(idle.bundle.is_none() && idle.tainted_authority_ids.is_none());
    assert!(idle.wire_bytes < 1024, "idle sync: {} bytes", idle.wire_bytes);

    let mut spec = made[7].spec.clone();
    spec.dns_names = vec!["changed.example.org".into()];
    h.store.update_entry(&made[7].id, &spec, SystemTime::now()).unwrap();
    let one = sync(&mut agent, &mut state).await;
    assert_eq!(sent(&one), BTreeSet::from([made[7].id.clone()]));
    assert!(one.wire_bytes < 2048, "one change: {} bytes", one.wire_bytes);
    assert_eq!(state.0.entries[&made[7].id].dns_names, vec!["changed.example.org".to_string()]);
    assert_eq!(state.0.entries.len(), count);
}

#[tokio::test]
async fn deletions_and_moves_reach_both_agents() {
    let h = Harness::start().await;
    let (mut a, mut b) = (h.agent().await, h.agent().await);
    let a_id = a.identity().unwrap().spiffe_id.clone();
    let b_id = b.identity().unwrap().spiffe_id.clone();
    let keep = h.entry("spiffe://example.org/keep", &a_id, &["unix:uid:1"]);
    let gone = h.entry("spiffe://example.org/gone", &a_id, &["unix:uid:2"]);
    let moved = h.entry("spiffe://example.org/moved", &a_id, &["unix:uid:3"]);
    let (mut sa, mut sb) = Default::default();
    sync(&mut a, &mut sa).await;
    sync(&mut b, &mut sb).await;
    assert_eq!(ids(&sa), BTreeSet::from([keep.id.clone(), gone.id.clone(), moved.id.clone()]));
    assert!(ids(&sb).is_empty());

    h.store.delete_entry(&gone.id).unwrap();
    let mut spec = moved.spec.clone();
    spec.parent_id = b_id.clone();
    h.store.update_entry(&moved.id, &spec, SystemTime::now()).unwrap();
    let unrelated = h.entry("spiffe://example.org/b-only", &b_id, &["unix:uid:4"]);

    let da = sync(&mut a, &mut sa).await;
    assert!(!da.full);
    assert_eq!(
        da.removed.iter().cloned().collect::<BTreeSet<_>>(),
        [gone.id, moved.id.clone()].into()
    );
    assert!(da.entries.is_empty(), "nothing of b's is sent to a");
    assert_eq!(ids(&sa), BTreeSet::from([keep.id.clone()]));
    let db = sync(&mut b, &mut sb).await;
    assert!(!db.full && db.removed.is_empty());
    assert_eq!(sent(&db), BTreeSet::from([moved.id, unrelated.id]));
}

#[tokio::test]
async fn node_alias_changes_resync_the_agents_they_concern() {
    let h = Harness::start().await;
    let mut agent = h.client().await;
    let node1 = pem_certs("nodes/node1.pem");
    agent.attest_x509pop(&node1[..1], &pem_key("nodes/node1.key.pem")).await.unwrap();
    let node = id("spiffe://example.org/nodes/cn-node1");
    let via = h.entry("spiffe://example.org/via-alias", &node, &["unix:uid:2"]);
    let mut state = Default::default();
    assert!(sync(&mut agent, &mut state).await.full);
    assert!(ids(&state).is_empty());

    // An alias for other nodes changes nothing for this one.
    let other = h.entry("spiffe://example.org/nodes/x", &h.server_id(), &["x509pop:subject:cn:x"]);
    let d = sync(&mut agent, &mut state).await;
    assert!(!d.full && d.entries.is_empty());

    let alias = h.entry(node.as_str(), &h.server_id(), &["x509pop:subject:cn:node1"]);
    let d = sync(&mut agent, &mut state).await;
    assert!(d.full);
    assert_eq!(ids(&state), BTreeSet::from([via.id.clone()]));

    h.store.delete_entry(&alias.id).unwrap();
    h.store.delete_entry(&other.id).unwrap();
    let d = sync(&mut agent, &mut state).await;
    assert!(d.full);
    assert!(ids(&state).is_empty(), "the alias is gone, so is what it authorized");
}

#[tokio::test]
async fn other_selectors_or_an_unknown_cursor_get_everything() {
    let h = Harness::start().await;
    let mut agent = h.agent().await;
    let me = agent.identity().unwrap().spiffe_id.clone();
    let mine = h.entry("spiffe://example.org/mine", &me, &["unix:uid:1"]);
    let alias = h.entry("spiffe://example.org/nodes/k", &h.server_id(), &["join_token:k:v"]);
    let via = h.entry("spiffe://example.org/via", &alias.spec.spiffe_id, &["unix:uid:2"]);
    let mut state = Default::default();
    sync(&mut agent, &mut state).await;
    assert_eq!(ids(&state), BTreeSet::from([mine.id.clone()]));
    assert!(!sync(&mut agent, &mut state).await.full);

    // The agent attests again and comes back with other node selectors.
    let mut record = h.store.get_agent(&me).unwrap().unwrap();
    record.selectors = selectors(&["join_token:k:v"]);
    h.store.upsert_agent(&record).unwrap();
    let d = sync(&mut agent, &mut state).await;
    assert!(d.full && d.tainted_authority_ids.is_some());
    assert_eq!(ids(&state), BTreeSet::from([mine.id.clone(), via.id.clone()]));

    // A cursor of another server (or an earlier run), or one from the future.
    let cursor = Cursor::decode(&state.1).unwrap();
    for bad in [
        Cursor { epoch: cursor.epoch ^ 1, ..cursor }.encode(),
        Cursor { position: cursor.position + 1, ..cursor }.encode(),
        b"garbage".to_vec(),
    ] {
        let mut copy = (state.0.clone(), bad);
        let d = sync(&mut agent, &mut copy).await;
        assert!(d.full, "a cursor the server cannot follow gets a full answer");
        assert_eq!(ids(&copy), ids(&state));
    }
    assert!(!sync(&mut agent, &mut state).await.full);
}

/// CPU time of the whole process (both sides of the sync run in it), from
/// `/proc/self/stat` (user + system, in clock ticks of 10 ms on Linux).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which ends with the last ')'): utime is the 12th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<u64> = rest.split(' ').skip(11).take(2).map(|f| f.parse().unwrap()).collect();
    Duration::from_millis((fields[0] + fields[1]) * 10)
}

/// Figures for the issue, not a check: run in release with
/// `cargo test --release -p keycard --lib sync_cost -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "a measurement, run by hand in release"]
async fn sync_cost() {
    let h = Harness::start().await;
    let mut agent = h.agent().await;
    let me = agent.identity().unwrap().spiffe_id.clone();
    let count = 100_000;
    let specs: Vec<EntrySpec> = (0..count)
        .map(|n| {
            let sid = id(&format!("spiffe://example.org/ns/default/sa/w{n}"));
            EntrySpec::new(sid, me.clone(), selectors(&["unix:uid:1000", "unix:gid:1000"]))
        })
        .collect();
    let made = h.store.create_entries(&specs, SystemTime::now()).unwrap();
    let mut state = Default::default();
    let (wall, cpu) = (std::time::Instant::now(), process_cpu());
    let full = sync(&mut agent, &mut state).await;
    println!(
        "full sync of {count} entries to a new agent: {:?} wall, {:?} CPU, {} bytes",
        wall.elapsed(),
        process_cpu() - cpu,
        full.wire_bytes
    );
    let rounds = 2000u32;
    let (wall, cpu) = (std::time::Instant::now(), process_cpu());
    let mut bytes = 0;
    for _ in 0..rounds {
        bytes = sync(&mut agent, &mut state).await.wire_bytes;
    }
    println!(
        "idle sync by cursor: {:?} wall, {:?} CPU (server and agent together) per round, {bytes} bytes",
        wall.elapsed() / rounds,
        (process_cpu() - cpu) / rounds
    );
    let mut spec = made[7].spec.clone();
    spec.hint = "changed".into();
    h.store.update_entry(&made[7].id, &spec, SystemTime::now()).unwrap();
    let one = sync(&mut agent, &mut state).await;
    println!("one changed entry: {} bytes", one.wire_bytes);

    // The revision-list sync every agent did before, for comparison.
    let first = agent.sync(0, &[] as &[(String, u64)]).await.unwrap();
    let mut held: Vec<(String, u64)> =
        first.entries.iter().map(|e| (e.id.clone(), e.revision)).collect();
    held.sort();
    let mut since = first.revision;
    let old_rounds = 5u32;
    let (wall, cpu) = (std::time::Instant::now(), process_cpu());
    for _ in 0..old_rounds {
        let delta = agent.sync(since, &held).await.unwrap();
        assert!(delta.entries.is_empty() && delta.removed.is_empty(), "an idle round");
        since = delta.revision;
    }
    println!(
        "idle sync by revision list (before): {:?} wall, {:?} CPU per round",
        wall.elapsed() / old_rounds,
        (process_cpu() - cpu) / old_rounds
    );
}

//! kill -9 of the server and of the agent at random moments while they write, 200 times
//! in all: the server while two writers create entries through the admin CLI (one at a
//! time and in batch files), the agent while it renews 30 SVIDs of 6 s (about ten renewals
//! a second) and rewrites its disk cache. The moments come from a seeded RNG whose seed is
//! printed (`KEYCARD_FAULT_SEED` replays one). Afterwards: every acknowledged entry is
//! there, every batch is whole or absent, `PRAGMA integrity_check` says ok after every
//! kill, and the agent's stored files load whole through the agent's own loaders after
//! every kill.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use keycard::agent::cache::SvidCache;
use keycard::agent::disk_cache::DiskCache;
use keycard::agent::storage::{AgentStorage, StoredIdentity};
use keycard::clock::SystemClock;
use keycard_workload_api::TrustDomain;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use super::{Node, served};
use crate::agent::FAST_ROTATION;
use crate::procs::{Server, keycard};

const SERVER_KILLS: usize = 100;
const AGENT_KILLS: usize = 100;
const ENTRIES: usize = 30;

/// The SPIFFE IDs the writers sent: acknowledged (the CLI said so) or not, and the
/// batches whose acknowledgement never came (each must be stored whole or not at all).
#[derive(Debug, Default)]
struct Writes {
    acknowledged: BTreeSet<String>,
    unacknowledged: BTreeSet<String>,
    lost_batches: Vec<Vec<String>>,
}

/// Creates entries through the CLI until `stop`: every fifth call a batch file of five.
fn writer(name: usize, admin: &Path, dir: &Path, stop: &AtomicBool, writes: &Mutex<Writes>) {
    for n in 0.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let id = |k: usize| format!("spiffe://example.org/w{name}/{n}/{k}");
        let mut command = keycard();
        let ids: Vec<String> = if n % 5 == 0 {
            let ids: Vec<String> = (0..5).map(id).collect();
            let doc: Vec<_> = ids
                .iter()
                .map(|i| {
                    serde_json::json!({"spiffe_id": i, "parent_id": "spiffe://example.org/node/9",
                        "selectors": ["unix:uid:4242"]})
                })
                .collect();
            let file = dir.join(format!("batch-{name}-{n}.json"));
            std::fs::write(&file, serde_json::to_vec(&doc).unwrap()).unwrap();
            command.args(["entry", "create", "--file"]).arg(file);
            ids
        } else {
            let ids = vec![id(0)];
            command.args(["entry", "create", "--spiffe-id", &ids[0]]);
            command.args(["--parent-id", "spiffe://example.org/node/9"]);
            command.args(["--selector", "unix:uid:4242"]);
            ids
        };
        let out = command.arg("--admin-socket").arg(admin).output().unwrap();
        let mut w = writes.lock().unwrap();
        if out.status.success() {
            w.acknowledged.extend(ids);
        } else {
            if ids.len() > 1 {
                w.lost_batches.push(ids.clone());
            }
            w.unacknowledged.extend(ids);
            drop(w);
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// `PRAGMA integrity_check` of the server's SQLite file (the server is not running).
fn integrity(dir: &Path) -> String {
    let db = rusqlite::Connection::open(dir.join("datastore.sqlite3")).unwrap();
    db.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0)).unwrap()
}

/// Kills a server `SERVER_KILLS` times while two writers create entries.
fn kill_the_server(seed: u64) -> String {
    let mut rng = StdRng::seed_from_u64(seed);
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("server");
    let admin = dir.join("private").join("admin.sock");
    let stop = AtomicBool::new(false);
    let writes = Mutex::new(Writes::default());
    let start = Instant::now();
    std::thread::scope(|scope| {
        for name in 0..2 {
            let (admin, files, stop, writes) = (&admin, state.path(), &stop, &writes);
            scope.spawn(move || writer(name, admin, files, stop, writes));
        }
        let stopping = StopOnDrop(&stop);
        for i in 0..SERVER_KILLS {
            let server = Server::start_with(&dir, "127.0.0.1:0", None);
            let after = Duration::from_millis(rng.random_range(0..150));
            std::thread::sleep(after);
            drop(server); // SIGKILL, and reaped
            let check = integrity(&dir);
            assert_eq!(check, "ok", "integrity_check after kill {i} ({after:?} after start)");
        }
        drop(stopping);
    });
    let server = Server::start_with(&dir, "127.0.0.1:0", None);
    let listed = server.admin(&["entry", "show"]);
    let stored: BTreeSet<String> = listed["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["spiffe_id"].as_str().unwrap().to_owned())
        .collect();
    server.stop();
    let w = writes.into_inner().unwrap();
    let lost: Vec<_> = w.acknowledged.difference(&stored).collect();
    assert!(lost.is_empty(), "{} acknowledged entries lost: {lost:?}", lost.len());
    for batch in &w.lost_batches {
        let present = batch.iter().filter(|id| stored.contains(*id)).count();
        assert!(present == 0 || present == batch.len(), "a torn batch: {present} of {batch:?}");
    }
    let landed = w.unacknowledged.intersection(&stored).count();
    assert!(
        w.acknowledged.len() > SERVER_KILLS,
        "only {} writes acknowledged",
        w.acknowledged.len()
    );
    format!(
        "server: {SERVER_KILLS} kills in {:.1?}; {} entries acknowledged, all present; {} sent \
         but unacknowledged ({landed} stored anyway); {} unacknowledged batches, none torn; \
         integrity_check ok after every kill",
        start.elapsed(),
        w.acknowledged.len(),
        w.unacknowledged.len(),
        w.lost_batches.len()
    )
}

/// Stops the writers also when the kill loop panics.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The agent's stored files, each loaded by the agent's own code: a bundle, an agent SVID
/// valid now, and (once written) an authentic disk cache; returns the SVIDs it restores.
fn agent_files_whole(dir: &Path) -> usize {
    let td = TrustDomain::new("example.org").unwrap();
    let storage = AgentStorage::open(dir).unwrap();
    let bundle = storage.load_bundle(&td).unwrap().expect("no stored bundle");
    let identity = storage.load_identity(&bundle, SystemTime::now()).unwrap();
    assert!(matches!(identity, Some(StoredIdentity::Valid(_))), "agent SVID: {identity:?}");
    let clock = Arc::new(SystemClock);
    let disk = DiskCache::open(&storage, clock.clone()).unwrap();
    let cache = SvidCache::new(clock);
    disk.load(&td, Some(&bundle), &cache).unwrap().svids
}

/// Kills an agent `AGENT_KILLS` times while it renews and stores SVIDs.
fn kill_the_agent(seed: u64) -> String {
    let mut rng = StdRng::seed_from_u64(seed);
    let (node, server) = Node::start(FAST_ROTATION);
    for i in 0..ENTRIES {
        node.entry(&server, &format!("e{i}"));
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let agent = node.agent();
    runtime.block_on(async {
        let (source, _) = served_all(&agent.socket).await;
        drop(source);
    });
    let start = Instant::now();
    let mut restored = Vec::new();
    drop(agent);
    for i in 0..AGENT_KILLS {
        restored.push(agent_files_whole(&node.agent_dir()));
        let agent = node.agent();
        if i % 10 == 9 {
            runtime.block_on(served_all(&agent.socket));
        }
        let after = Duration::from_millis(rng.random_range(0..400));
        std::thread::sleep(after);
        drop(agent); // SIGKILL, and reaped
    }
    restored.push(agent_files_whole(&node.agent_dir()));
    let agent = node.agent();
    runtime.block_on(served_all(&agent.socket));
    agent.stop();
    server.stop();
    let least = restored.iter().min().unwrap();
    format!(
        "agent: {AGENT_KILLS} kills in {:.1?}; stored SVID, bundle and disk cache whole after \
         each, restoring {least} to {} of {ENTRIES} SVIDs; serving again after each 10th and \
         the last",
        start.elapsed(),
        restored.iter().max().unwrap()
    )
}

/// An `X509Source` holding all [`ENTRIES`] SVIDs.
async fn served_all(socket: &Path) -> (keycard_workload_api::X509Source, Duration) {
    let (source, took) = served(socket, 1).await;
    let mut updates = source.updated();
    tokio::time::timeout(crate::agent::PATIENCE, updates.wait_for(|c| c.svids.len() == ENTRIES))
        .await
        .expect("the agent did not serve every SVID")
        .unwrap();
    (source, took)
}

#[test]
fn kill_9_of_the_server_or_the_agent_while_they_write_loses_and_tears_nothing() {
    let seed = match std::env::var("KEYCARD_FAULT_SEED") {
        Ok(s) => s.parse().expect("KEYCARD_FAULT_SEED: a number"),
        Err(_) => {
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as u64
        }
    };
    println!("kill moments from seed {seed} (KEYCARD_FAULT_SEED={seed} replays them)");
    let agent = std::thread::spawn(move || kill_the_agent(seed.wrapping_add(1)));
    let server = kill_the_server(seed);
    let agent = agent.join().unwrap();
    println!("{server}");
    println!("{agent}");
}

//! Tests of the authorized-entry cache and its event log.

use super::*;
use crate::server::datastore::SqliteDataStore;
use crate::server::entry::EntrySpec;
use std::time::SystemTime;

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn sel(s: &str) -> SelectorSet {
    [crate::selector::Selector::parse(s).unwrap()].into_iter().collect()
}

fn entry(n: usize, parent: &SpiffeId, selector: &str) -> Entry {
    Entry {
        id: format!("e{n:06}"),
        spec: EntrySpec {
            spiffe_id: id(&format!("spiffe://example.org/w{n}")),
            parent_id: parent.clone(),
            selectors: sel(selector),
            x509_ttl: None,
            jwt_ttl: None,
            dns_names: Vec::new(),
            hint: String::new(),
            admin: false,
            jwt_svid_binding: crate::server::entry::JwtSvidBinding::None,
            federates_with: Vec::new(),
        },
        revision: n as u64 + 1,
        created_at: SystemTime::UNIX_EPOCH,
        updated_at: SystemTime::UNIX_EPOCH,
    }
}

#[test]
fn a_hundred_thousand_entries_are_indexed_by_parent_and_alias() {
    let server = id("spiffe://example.org/keycard/server");
    let store = Arc::new(SqliteDataStore::open_in_memory().unwrap());
    let cache = AuthorizedEntries::new(store, server.clone());
    let agents: Vec<SpiffeId> =
        (0..1000).map(|i| id(&format!("spiffe://example.org/keycard/agent/a{i}"))).collect();
    let mut changed: Vec<Entry> =
        (0..100_000).map(|n| entry(n, &agents[n % 1000], "unix:uid:1")).collect();
    let mut alias = entry(100_000, &server, "x509pop:subject:cn:node7");
    alias.spec.spiffe_id = id("spiffe://example.org/nodes/node7");
    changed.push(alias.clone());
    changed.push(entry(100_001, &alias.spec.spiffe_id, "unix:uid:2"));
    cache.write().apply(EntryChanges { changed, deleted: Vec::new(), revision: 100_002 });
    assert_eq!(cache.len(), 100_002);

    let started = std::time::Instant::now();
    let plain = cache.authorized_for(&agents[7], &sel("x509pop:subject:cn:other"));
    let aliased = cache.authorized_for(&agents[7], &sel("x509pop:subject:cn:node7"));
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    assert_eq!(plain.entries.len(), 100);
    assert_eq!(aliased.entries.len(), 101);
    assert!(aliased.entries.contains_key("e100001"));
    assert!(!aliased.entries.contains_key("e100000"), "alias entries are the node's own");
    let via = cache.get("e100001").unwrap();
    assert!(cache.is_authorized(&via, &agents[7], &sel("x509pop:subject:cn:node7")));
    assert!(!cache.is_authorized(&via, &agents[7], &sel("x509pop:subject:cn:other")));

    // Deleting and re-parenting keep the index right.
    let mut moved = entry(7, &agents[8], "unix:uid:1");
    moved.revision = 100_003;
    let deleted = vec!["e001007".to_string()];
    cache.write().apply(EntryChanges { changed: vec![moved], deleted, revision: 100_004 });
    assert_eq!(cache.authorized_for(&agents[7], &SelectorSet::new()).entries.len(), 98);
    assert_eq!(cache.authorized_for(&agents[8], &SelectorSet::new()).entries.len(), 101);
    assert_eq!(cache.revision(), 100_004);
}

#[test]
fn a_late_commit_below_the_served_cursor_is_still_delivered() {
    let server = id("spiffe://example.org/keycard/server");
    let store = Arc::new(SqliteDataStore::open_in_memory().unwrap());
    let cache = AuthorizedEntries::new(store, server);
    let agent = id("spiffe://example.org/keycard/agent/a");
    let none = SelectorSet::new();
    let first = entry(10, &agent, "unix:uid:1");
    cache.write().apply(EntryChanges { changed: vec![first], deleted: vec![], revision: 11 });
    let served = cache.sync_for(&agent, &none, None);
    assert!(served.full && served.changed.len() == 1);
    let cursor = Some((served.epoch, served.position));
    // Revision 5 commits after 11 was served (a concurrent writer on an HA store).
    let late = entry(4, &agent, "unix:uid:1");
    cache.write().apply(EntryChanges { changed: vec![late], deleted: vec![], revision: 11 });
    let next = cache.sync_for(&agent, &none, cursor);
    assert!(!next.full);
    assert_eq!(next.changed.keys().collect::<Vec<_>>(), vec!["e000004"]);
    let idle = cache.sync_for(&agent, &none, Some((next.epoch, next.position)));
    assert!(!idle.full && idle.changed.is_empty() && idle.removed.is_empty());
}

#[test]
fn a_cursor_older_than_the_log_gets_everything() {
    let server = id("spiffe://example.org/keycard/server");
    let store = Arc::new(SqliteDataStore::open_in_memory().unwrap());
    let cache = AuthorizedEntries::new(store, server);
    cache.write().log = EventLog::with_limit(2);
    let agent = id("spiffe://example.org/keycard/agent/a");
    let none = SelectorSet::new();
    let served = cache.sync_for(&agent, &none, None);
    let cursor = Some((served.epoch, served.position));
    let changed: Vec<Entry> = (0..3).map(|n| entry(n, &agent, "unix:uid:1")).collect();
    cache.write().apply(EntryChanges { changed, deleted: vec![], revision: 3 });
    let next = cache.sync_for(&agent, &none, cursor);
    assert!(next.full, "three changes, two kept: the gap must not be silent");
    assert_eq!(next.changed.len(), 3);
}

#[tokio::test]
async fn refresh_follows_the_datastore_by_difference() {
    let server = id("spiffe://example.org/keycard/server");
    let store = Arc::new(SqliteDataStore::open_in_memory().unwrap());
    let cache = AuthorizedEntries::new(store.clone(), server);
    let agent = id("spiffe://example.org/keycard/agent/a");
    let spec = entry(0, &agent, "unix:uid:1").spec;
    assert!(cache.refresh().await);
    assert!(cache.is_empty());
    let created = store.create_entry(&spec, SystemTime::now()).unwrap();
    assert!(cache.refresh().await);
    assert_eq!(cache.get(&created.id).unwrap().spec, spec);
    store.delete_entry(&created.id).unwrap();
    assert!(cache.refresh().await);
    assert!(cache.get(&created.id).is_none());
    assert!(cache.revision() > created.revision);
}

#[tokio::test]
async fn the_last_good_copy_keeps_serving_when_the_datastore_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.sqlite3");
    let store = Arc::new(SqliteDataStore::open(&path).unwrap());
    let cache = AuthorizedEntries::new(store.clone(), id("spiffe://example.org/keycard/server"));
    let agent = id("spiffe://example.org/keycard/agent/a");
    let created = store.create_entry(&entry(0, &agent, "unix:uid:1").spec, SystemTime::now());
    let created = created.unwrap();
    assert!(cache.refresh().await);
    // Break the database under the store, as a failing disk or a bad manual edit would.
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("DROP TABLE entry_tombstones;").unwrap();
    assert!(!cache.refresh().await, "a failing datastore must be reported");
    let served = cache.authorized_for(&agent, &SelectorSet::new());
    assert_eq!(served.entries.keys().collect::<Vec<_>>(), vec![&created.id]);
}

#[tokio::test]
async fn refresh_reads_nothing_while_the_store_shows_no_commit() {
    let metrics = Arc::new(crate::telemetry::ServerMetrics::new());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.sqlite3");
    let inner = Arc::new(SqliteDataStore::open(&path).unwrap());
    let store = Arc::new(crate::server::datastore::MeteredDataStore::new(inner, metrics.clone()));
    let reads = || {
        let line = "keycard_server_datastore_latency_seconds_count{op=\"entry_changes_since\"} ";
        let text = metrics.render();
        text.lines().find_map(|l| l.strip_prefix(line)).map_or(0, |n| n.parse::<u64>().unwrap())
    };
    let cache = AuthorizedEntries::new(store.clone(), id("spiffe://example.org/keycard/server"));
    let agent = id("spiffe://example.org/keycard/agent/a");
    assert!(cache.refresh().await);
    assert_eq!(reads(), 1);
    for _ in 0..3 {
        assert!(cache.refresh().await);
    }
    assert_eq!(reads(), 1, "nothing committed: nothing read");
    let created = store.create_entry(&entry(0, &agent, "unix:uid:1").spec, SystemTime::now());
    assert!(cache.refresh().await);
    assert_eq!(reads(), 2);
    assert!(cache.get(&created.unwrap().id).is_some());
    // A commit by another server sharing the file (here: another connection).
    let other = SqliteDataStore::open(&path).unwrap();
    let theirs = other.create_entry(&entry(1, &agent, "unix:uid:2").spec, SystemTime::now());
    assert!(cache.refresh().await);
    assert!(cache.get(&theirs.unwrap().id).is_some(), "another writer's commit is seen");
    assert_eq!(reads(), 3);
}

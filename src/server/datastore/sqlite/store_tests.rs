//! What is particular to the SQLite store: file setup, loosely typed columns, all-or-nothing
//! calls (failures injected with triggers), reads beside a blocked write, and index use by
//! the hot queries. What every store does is in the shared suite (`datastore/suite`).

use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keycard_workload_api::SpiffeId;

use super::{SqliteDataStore, entries};
use crate::selector::Selector;
use crate::server::datastore::{AgentRecord, DataStore, DataStoreError, EntryFilter, PageRequest};
use crate::server::entry::EntrySpec;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn spec(path: &str, selector: &str) -> EntrySpec {
    EntrySpec {
        spiffe_id: SpiffeId::parse(&format!("spiffe://example.org{path}")).unwrap(),
        parent_id: SpiffeId::parse("spiffe://example.org/keycard/server").unwrap(),
        selectors: [Selector::parse(selector).unwrap()].into_iter().collect(),
        x509_ttl: None,
        jwt_ttl: Some(Duration::from_secs(300)),
        dns_names: vec![],
        hint: String::new(),
        admin: true,
        jwt_svid_binding: crate::server::entry::JwtSvidBinding::None,
        federates_with: Vec::new(),
    }
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_file_is_private_durable_and_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state").join("keycard.db");
    let store = SqliteDataStore::open(&path).unwrap();
    store.create_entry(&spec("/a", "unix:uid:1"), at(1)).unwrap();
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&dir.path().join("state").join("keycard.db-wal")), 0o600);
    let conn = store.lock();
    let pragma = |name: &str| -> String {
        conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get::<_, rusqlite::types::Value>(0))
            .map(|v| format!("{v:?}"))
            .unwrap()
    };
    assert_eq!(pragma("journal_mode"), r#"Text("wal")"#);
    assert_eq!(pragma("synchronous"), "Integer(2)", "FULL");
    assert_eq!(pragma("foreign_keys"), "Integer(1)");
    drop(conn);
    store.ping().unwrap();
}

#[test]
fn a_value_of_the_wrong_type_is_corrupt() {
    // SQLite stores any type in any column (PostgreSQL refuses such an update).
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteDataStore::open(&dir.path().join("keycard.db")).unwrap();
    let agent = AgentRecord {
        id: SpiffeId::parse("spiffe://example.org/keycard/agent/x").unwrap(),
        attestation_type: "x509pop".into(),
        selectors: Default::default(),
        svid_serial: "01".into(),
        previous_svid_serial: None,
        svid_expires_at: at(900),
        banned: false,
        can_reattest: true,
        created_at: at(1),
        updated_at: at(2),
    };
    store.upsert_agent(&agent).unwrap();
    store.lock().execute("UPDATE agents SET created_at = 'text'", []).unwrap();
    assert!(matches!(store.list_agents(&PageRequest::default()), Err(DataStoreError::Corrupt(_))));
}

#[test]
fn a_statement_failing_inside_a_call_leaves_no_partial_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteDataStore::open(&dir.path().join("keycard.db")).unwrap();
    let kept = store.create_entry(&spec("/kept", "unix:uid:1"), at(1)).unwrap();
    // Make the last statement of create_entry (and of delete_entry) fail.
    store
        .lock()
        .execute_batch(
            "CREATE TRIGGER boom BEFORE INSERT ON entry_selectors WHEN NEW.value = 'uid:666'
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;
             CREATE TRIGGER no_tombstones BEFORE INSERT ON entry_tombstones
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
        )
        .unwrap();
    let err = store.create_entry(&spec("/new", "unix:uid:666"), at(2)).unwrap_err();
    assert!(matches!(&err, DataStoreError::Backend(m) if m.contains("injected")), "{err:?}");
    let err = store.update_entry(&kept.id, &spec("/kept", "unix:uid:666"), at(3)).unwrap_err();
    assert!(matches!(err, DataStoreError::Backend(_)), "{err:?}");
    let err = store.delete_entry(&kept.id).unwrap_err();
    assert!(matches!(err, DataStoreError::Backend(_)), "{err:?}");

    // No entry row, no selectors, no revision consumed, the old entry intact.
    assert_eq!(store.count_entries().unwrap(), 1);
    assert_eq!(store.get_entry(&kept.id).unwrap(), Some(kept.clone()));
    let all = store.list_entries(&EntryFilter::default(), &PageRequest::default()).unwrap();
    assert_eq!(all.items, vec![kept.clone()]);
    let mut conn = store.lock();
    let tx = conn.transaction().unwrap();
    assert_eq!(entries::current_revision(&tx), 1);
    let selectors: i64 =
        tx.query_row("SELECT COUNT(*) FROM entry_selectors", [], |r| r.get(0)).unwrap();
    assert_eq!(selectors, 1);
}

/// SQLite's plan for `sql`, one line per step.
fn plan(store: &SqliteDataStore, sql: &str) -> String {
    let conn = store.lock();
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let rows = stmt.query_map([], |r| r.get::<_, String>(3)).unwrap();
    rows.map(Result::unwrap).collect::<Vec<_>>().join("\n")
}

#[test]
fn the_hot_queries_use_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteDataStore::open(&dir.path().join("keycard.db")).unwrap();
    let changes = plan(&store, "SELECT id FROM entries WHERE revision > 5 ORDER BY revision");
    assert!(changes.contains("USING INDEX entries_by_revision"), "{changes}");
    let tombstones =
        plan(&store, "SELECT id FROM entry_tombstones WHERE revision > 1 AND revision <= 9");
    assert!(tombstones.contains("USING INDEX entry_tombstones_by_revision"), "{tombstones}");
    let duplicate = plan(
        &store,
        "SELECT id FROM entries WHERE spiffe_id = 'a' AND parent_id = 'b' \
         AND selectors_key = 'c' AND id <> 'd'",
    );
    assert!(duplicate.contains("USING INDEX entries_by_identity"), "{duplicate}");
    let by_parent = plan(&store, "SELECT id FROM entries WHERE parent_id = 'b' ORDER BY id");
    assert!(by_parent.contains("USING INDEX entries_by_parent"), "{by_parent}");
    for sql in [changes, tombstones, duplicate, by_parent] {
        assert!(!sql.contains("SCAN entries") && !sql.contains("SCAN entry_tombstones"), "{sql}");
    }
}

#[test]
fn reads_go_on_while_a_write_waits_for_another_processs_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keycard.db");
    let store = std::sync::Arc::new(SqliteDataStore::open(&path).unwrap());
    let a = store.create_entry(&spec("/a", "unix:uid:1"), at(1)).unwrap();
    // Another process (here: another connection) holds the write lock.
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || store.create_entry(&spec("/b", "unix:uid:2"), at(2)))
    };
    // Let the write take the store's write connection and start waiting.
    std::thread::sleep(Duration::from_millis(300));
    let start = std::time::Instant::now();
    store.ping().unwrap();
    assert_eq!(store.get_entry(&a.id).unwrap().map(|e| e.id), Some(a.id.clone()));
    let took = start.elapsed();
    assert!(took < Duration::from_secs(2), "reads waited {took:?} behind a blocked write");
    assert!(!writer.is_finished(), "the write did not wait for the lock");
    let refused = writer.join().unwrap().unwrap_err();
    assert!(refused.to_string().contains("locked"), "{refused}");
    other.execute_batch("ROLLBACK").unwrap();
    // The lock gone, writes work again and reads see them.
    let b = store.create_entry(&spec("/b", "unix:uid:2"), at(3)).unwrap();
    assert!(store.get_entry(&b.id).unwrap().is_some());
}

#[test]
fn the_change_mark_moves_with_every_commit_and_with_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keycard.db");
    let store = SqliteDataStore::open(&path).unwrap();
    let first = store.change_mark().expect("a file store has a change mark");
    let a = store.create_entry(&spec("/a", "unix:uid:1"), at(1)).unwrap();
    let after_write = store.change_mark().unwrap();
    assert_ne!(first, after_write, "a commit through the store");
    store.get_entry(&a.id).unwrap();
    store.entry_changes_since(0, 10).unwrap();
    assert_eq!(store.change_mark(), Some(after_write), "reads commit nothing");
    // Another process (here: another connection) commits.
    let other = SqliteDataStore::open(&path).unwrap();
    other.delete_entry(&a.id).unwrap();
    assert_ne!(store.change_mark(), Some(after_write), "a commit by another process");
    // A memory database has no second connection to see its commits by.
    assert_eq!(SqliteDataStore::open_in_memory().unwrap().change_mark(), None);
}

#[test]
fn a_failed_read_leaves_no_transaction_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteDataStore::open(&dir.path().join("keycard.db")).unwrap();
    let failed: Result<(), _> = store.read(|conn| {
        assert!(!conn.is_autocommit(), "the read runs in a transaction");
        Err(DataStoreError::Backend("the read fails".into()))
    });
    assert!(failed.is_err());
    assert!(store.lock_reader().is_autocommit(), "rolled back");
    let a = store.create_entry(&spec("/a", "unix:uid:1"), at(1)).unwrap();
    assert_eq!(store.get_entry(&a.id).unwrap().map(|e| e.id), Some(a.id));
}

//! The database schema and its migrations.
//!
//! The schema version is SQLite's `user_version` header field. [`MIGRATIONS`] is an ordered
//! list: step `n` (counting from 1) takes a database from version `n - 1` to version `n`.
//! Each step runs in its own transaction together with the version bump, so a crash during
//! an upgrade leaves the database at the previous version, never half-migrated. Steps are
//! only ever appended: a released step is never edited.

use rusqlite::{Connection, TransactionBehavior};

use super::super::DataStoreError;

/// Version 1: entries (selectors normalized), the revision counter, tombstones, agents,
/// join tokens and federated bundles.
const V1: &str = "
CREATE TABLE store_revision (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER NOT NULL
);
INSERT INTO store_revision (id, revision) VALUES (1, 0);

CREATE TABLE entries (
    id TEXT PRIMARY KEY,
    spiffe_id TEXT NOT NULL,
    parent_id TEXT NOT NULL,
    -- The sorted selectors as a JSON array: the key of duplicate detection.
    selectors_key TEXT NOT NULL,
    x509_ttl_ms INTEGER,
    jwt_ttl_ms INTEGER,
    dns_names TEXT NOT NULL,
    hint TEXT NOT NULL,
    admin INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX entries_by_identity ON entries (spiffe_id, parent_id, selectors_key);
CREATE INDEX entries_by_parent ON entries (parent_id);
CREATE UNIQUE INDEX entries_by_revision ON entries (revision);

CREATE TABLE entry_selectors (
    entry_id TEXT NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
    type TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (entry_id, type, value)
);

CREATE TABLE entry_tombstones (
    id TEXT PRIMARY KEY,
    revision INTEGER NOT NULL
);
CREATE INDEX entry_tombstones_by_revision ON entry_tombstones (revision);

CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    attestation_type TEXT NOT NULL,
    selectors TEXT NOT NULL,
    svid_serial TEXT NOT NULL,
    svid_expires_at INTEGER NOT NULL,
    banned INTEGER NOT NULL,
    can_reattest INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE join_tokens (
    hash BLOB PRIMARY KEY CHECK (length(hash) = 32),
    token_id TEXT NOT NULL,
    agent_id TEXT,
    expires_at INTEGER NOT NULL,
    used_at INTEGER
);
CREATE INDEX join_tokens_by_agent ON join_tokens (agent_id);

CREATE TABLE bundles (
    trust_domain TEXT PRIMARY KEY,
    json BLOB NOT NULL
);
";

/// Version 2: the CA's authority journal moves into the datastore (one row), and entries
/// can be looked up by selector.
const V2: &str = "
CREATE TABLE journal (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    bytes BLOB NOT NULL
);
CREATE INDEX entry_selectors_by_selector ON entry_selectors (type, value);
";

/// Version 3: an agent's previous SVID serial, accepted until its newest SVID is first
/// used (a renewal whose reply was lost must not cost the agent its identity).
const V3: &str = "
ALTER TABLE agents ADD COLUMN previous_svid_serial TEXT;
";

/// Version 4 (HA): one authority journal per server (the single journal of a version 3
/// database keeps an empty server ID until a server claims it), operators' marks on
/// authorities of any server, and the servers' announcements.
const V4: &str = "
CREATE TABLE server_journals (
    server_id TEXT PRIMARY KEY,
    bytes BLOB NOT NULL
);
INSERT INTO server_journals (server_id, bytes) SELECT '', bytes FROM journal;
DROP TABLE journal;
CREATE TABLE authority_marks (
    authority_id TEXT PRIMARY KEY,
    mark TEXT NOT NULL CHECK (mark IN ('tainted', 'revoked'))
);
CREATE TABLE servers (
    id TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    last_seen INTEGER NOT NULL
);
";

/// Version 5: what an entry's JWT-SVIDs are bound to ('none' or 'x509').
const V5: &str = "
ALTER TABLE entries ADD COLUMN jwt_svid_binding TEXT NOT NULL DEFAULT 'none';
";

/// Version 6: federation. Each entry's foreign trust domains (a JSON array of names), and
/// the relationships with foreign bundle endpoints: how to fetch each domain's bundle and
/// when next (any server may claim a due refresh; the claim is a compare-and-set on
/// next_refresh_at, so one server fetches per refresh).
const V6: &str = "
ALTER TABLE entries ADD COLUMN federates_with TEXT NOT NULL DEFAULT '[]';
CREATE TABLE federations (
    trust_domain TEXT PRIMARY KEY,
    endpoint_url TEXT NOT NULL,
    profile TEXT NOT NULL,
    endpoint_spiffe_id TEXT,
    ca_pem BLOB,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    next_refresh_at INTEGER NOT NULL,
    last_attempt_at INTEGER,
    last_success_at INTEGER,
    last_error TEXT
);
";

/// Every migration step, in order.
pub(super) const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5, V6];
/// The schema version this build writes.
pub(super) const LATEST: usize = MIGRATIONS.len();

/// The database's schema version.
pub(super) fn version(conn: &Connection) -> Result<usize, DataStoreError> {
    let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    usize::try_from(v).map_err(|_| DataStoreError::Corrupt(format!("schema version {v}")))
}

/// Applies the missing steps up to version `target`; refuses a database newer than this
/// build knows.
pub(super) fn migrate(conn: &mut Connection, target: usize) -> Result<(), DataStoreError> {
    let target = target.min(LATEST);
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current = version(&tx)?;
        if current > LATEST {
            return Err(DataStoreError::Backend(format!(
                "the database has schema version {current}, newer than this keycard knows \
                 ({LATEST}); run a keycard at least as new as the one that last wrote it"
            )));
        }
        if current >= target {
            return Ok(());
        }
        tx.execute_batch(MIGRATIONS[current])?;
        tx.pragma_update(None, "user_version", (current + 1) as i64)?;
        tx.commit()?;
        tracing::info!(from = current, to = current + 1, "datastore schema migrated");
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use keycard_workload_api::SpiffeId;

    use super::*;
    use crate::server::datastore::{DataStore, SqliteDataStore};

    #[test]
    fn a_version_1_database_upgrades_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            migrate(&mut conn, 1).unwrap();
            assert_eq!(version(&conn).unwrap(), 1);
            let no_journal = conn.execute("INSERT INTO journal (id, bytes) VALUES (1, x'00')", []);
            assert!(no_journal.is_err(), "version 1 has no journal table");
            conn.execute_batch(
                "UPDATE store_revision SET revision = 7;
                 INSERT INTO entries VALUES ('e1', 'spiffe://example.org/web',
                     'spiffe://example.org/agent', '[\"unix:uid:1\"]', 60000, NULL, '[]', '',
                     0, 7, 1000, 2000);
                 INSERT INTO entry_selectors VALUES ('e1', 'unix', 'uid:1');",
            )
            .unwrap();
        }
        let store = SqliteDataStore::open(&path).unwrap();
        let entry = store.get_entry("e1").unwrap().unwrap();
        assert_eq!(entry.spec.spiffe_id, SpiffeId::parse("spiffe://example.org/web").unwrap());
        assert_eq!(entry.spec.x509_ttl, Some(Duration::from_secs(60)));
        assert_eq!(entry.revision, 7);
        assert_eq!(entry.created_at, UNIX_EPOCH + Duration::from_secs(1));
        assert_eq!(store.load_journal("s1").unwrap(), None);
        store.save_journal("s1", b"{}").unwrap();
        assert_eq!(store.load_journal("s1").unwrap().as_deref(), Some(&b"{}"[..]));
        drop(store);
        let conn = Connection::open(&path).unwrap();
        assert_eq!(version(&conn).unwrap(), LATEST);
    }

    #[test]
    fn a_version_2_database_upgrades_and_keeps_its_agents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v2.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            migrate(&mut conn, 2).unwrap();
            conn.execute_batch(
                "INSERT INTO agents VALUES ('spiffe://example.org/keycard/agent/a', 'join_token',
                     '[]', '0a', 5000, 0, 0, 1000, 2000);",
            )
            .unwrap();
        }
        let store = SqliteDataStore::open(&path).unwrap();
        let id = SpiffeId::parse("spiffe://example.org/keycard/agent/a").unwrap();
        let agent = store.get_agent(&id).unwrap().unwrap();
        assert_eq!((agent.svid_serial.as_str(), agent.previous_svid_serial), ("0a", None));
        assert!(store.renew_agent_svid(&id, "0a", "0b", UNIX_EPOCH, UNIX_EPOCH).unwrap());
        let agent = store.get_agent(&id).unwrap().unwrap();
        assert_eq!(agent.previous_svid_serial.as_deref(), Some("0a"));
    }

    #[test]
    fn a_version_3_journal_is_claimed_by_the_first_server_that_asks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v3.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            migrate(&mut conn, 3).unwrap();
            conn.execute_batch("INSERT INTO journal (id, bytes) VALUES (1, x'7b7d');").unwrap();
        }
        let store = SqliteDataStore::open(&path).unwrap();
        assert_eq!(store.list_journals().unwrap(), vec![(String::new(), b"{}".to_vec())]);
        assert_eq!(store.load_journal("first").unwrap().as_deref(), Some(&b"{}"[..]));
        assert_eq!(store.load_journal("second").unwrap(), None);
        assert_eq!(store.list_journals().unwrap(), vec![("first".to_owned(), b"{}".to_vec())]);
    }

    #[test]
    fn a_newer_database_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        drop(SqliteDataStore::open(&path).unwrap());
        let too_new = (LATEST + 1) as i64;
        Connection::open(&path).unwrap().pragma_update(None, "user_version", too_new).unwrap();
        let err = SqliteDataStore::open(&path).unwrap_err();
        assert!(
            matches!(&err, DataStoreError::Backend(m) if m.contains("newer than this keycard")),
            "{err:?}"
        );
        let conn = Connection::open(&path).unwrap();
        assert_eq!(version(&conn).unwrap(), LATEST + 1);
    }

    #[test]
    fn migrating_twice_changes_nothing() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, LATEST).unwrap();
        migrate(&mut conn, LATEST).unwrap();
        assert_eq!(version(&conn).unwrap(), LATEST);
    }
}

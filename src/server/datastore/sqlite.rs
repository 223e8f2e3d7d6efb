//! The embedded SQLite datastore: one database file, the default for a single server.
//!
//! The file is opened in WAL mode with `synchronous=FULL`, so a committed call survives a
//! crash or power loss, and with foreign keys enforced. Every mutating method runs in one
//! `IMMEDIATE` transaction: it takes the write lock before reading, so a check and the write
//! that depends on it (a duplicate check, a join token's single use) cannot interleave with
//! another writer, even one in another process. Reads run on a connection of their own, so
//! a write waiting for another process's lock does not hold them up. The schema is
//! versioned (see `schema.rs`).
//!
//! Values are encoded as `codec.rs` says (times as integer milliseconds since the epoch).

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use keycard_workload_api::{SpiffeId, TrustDomain};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OptionalExtension as _, Transaction, TransactionBehavior};

use super::codec::{
    binding_from_db, duration_from_db, duration_to_db, page_after, page_token, spiffe_id_from_db,
    time_from_db, time_to_db, u64_from_db,
};
use super::{
    AgentRecord, AuthorityMark, DataStore, DataStoreError, EntryChanges, EntryFilter,
    FederationRecord, JoinTokenRecord, Page, PageRequest, RefreshOutcome, ServerRecord, TokenUse,
};
use crate::fsutil;
use crate::server::entry::{Entry, EntrySpec};

mod batch;
mod entries;
mod federation;
mod records;
mod schema;

/// How long a call waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Mode of the database file (and, through SQLite, of its WAL and shared-memory files).
const FILE_MODE: u32 = 0o600;

/// The embedded SQLite datastore; see the module documentation.
#[derive(Debug)]
pub struct SqliteDataStore {
    /// The connection that writes: SQLite has one writer at a time anyway, and the mutex
    /// keeps a transaction from being shared between threads.
    conn: Mutex<Connection>,
    /// A second connection for reads (files only; a memory database exists only on `conn`).
    /// A write waiting out another process's lock holds `conn` for up to [`BUSY_TIMEOUT`];
    /// in WAL mode reads need no lock, so on their own connection they go on meanwhile
    /// (agents keep syncing and renewing while registrations fail).
    reader: Option<Mutex<Connection>>,
}

impl From<rusqlite::Error> for DataStoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e {
            rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::IntegralValueOutOfRange(..) => Self::Corrupt(e.to_string()),
            other => Self::Backend(other.to_string()),
        }
    }
}

impl SqliteDataStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    ///
    /// A missing parent directory is created with mode 0700; the file gets mode 0600. A
    /// database written by a newer keycard (a schema version this one does not know) is
    /// refused rather than misread.
    pub fn open(path: &Path) -> Result<Self, DataStoreError> {
        let io_err = |what: &str, e: std::io::Error| {
            DataStoreError::Backend(format!("{what} {}: {e}", path.display()))
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            fsutil::create_private_dir(dir).map_err(|e| io_err("creating directory of", e))?;
        }
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(FILE_MODE)
            .open(path)
            .map_err(|e| io_err("creating", e))?;
        fs::set_permissions(path, fs::Permissions::from_mode(FILE_MODE))
            .map_err(|e| io_err("setting the mode of", e))?;
        let mut conn = Connection::open(path)?;
        configure(&conn, true)?;
        schema::migrate(&mut conn, schema::LATEST)?;
        let reader = Connection::open(path)?;
        configure(&reader, true)?;
        Ok(Self { conn: Mutex::new(conn), reader: Some(Mutex::new(reader)) })
    }

    /// A private in-memory database (tests and throw-away servers); gone when dropped.
    pub fn open_in_memory() -> Result<Self, DataStoreError> {
        let mut conn = Connection::open_in_memory()?;
        configure(&conn, false)?;
        schema::migrate(&mut conn, schema::LATEST)?;
        Ok(Self { conn: Mutex::new(conn), reader: None })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a transaction open: rusqlite rolls an
        // unfinished transaction back when it is dropped during unwinding.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The read connection (the write connection for a memory database).
    fn lock_reader(&self) -> MutexGuard<'_, Connection> {
        match &self.reader {
            Some(reader) => reader.lock().unwrap_or_else(|p| p.into_inner()),
            None => self.lock(),
        }
    }

    /// Runs `f` in one write transaction, committed only when `f` succeeds.
    fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, DataStoreError>,
    ) -> Result<T, DataStoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = f(&tx)?;
        tx.commit()?;
        Ok(value)
    }

    /// Runs `f` in one read transaction, so that it sees a single snapshot. `BEGIN` and
    /// `COMMIT` are cached statements: reads run on every agent call, and parsing them anew
    /// each time (as rusqlite's `Transaction` does) was a tenth of an idle server's CPU.
    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, DataStoreError>,
    ) -> Result<T, DataStoreError> {
        let conn = self.lock_reader();
        let snapshot = ReadSnapshot::begin(&conn)?;
        let value = f(&conn)?;
        snapshot.end()?;
        Ok(value)
    }
}

/// An open read transaction on a connection; rolled back if dropped before [`Self::end`]
/// (a failed or panicking read), so the connection is never left inside a transaction.
struct ReadSnapshot<'a> {
    conn: &'a Connection,
    open: bool,
}

impl<'a> ReadSnapshot<'a> {
    fn begin(conn: &'a Connection) -> Result<Self, DataStoreError> {
        conn.prepare_cached("BEGIN DEFERRED")?.execute([])?;
        Ok(Self { conn, open: true })
    }

    fn end(mut self) -> Result<(), DataStoreError> {
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        self.open = false;
        Ok(())
    }
}

impl Drop for ReadSnapshot<'_> {
    fn drop(&mut self) {
        if self.open && !self.conn.is_autocommit() {
            // Nothing was written, so a failed rollback loses nothing; the next BEGIN would
            // report the connection's state.
            let _ = self.conn.prepare_cached("ROLLBACK").and_then(|mut s| s.execute([]));
        }
    }
}

/// Sets the connection's pragmas; `wal` only for files (memory databases have no WAL).
fn configure(conn: &Connection, wal: bool) -> Result<(), DataStoreError> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Without the planner stability guarantee SQLite re-prepares a cached statement each
    // time a new value is bound to a parameter its plan looked at (a `LIMIT ?`, a range
    // with STAT4): the entry-change poll was re-parsed every second.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    if wal {
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(DataStoreError::Backend(format!(
                "SQLite refused WAL journal mode (it is {mode:?})"
            )));
        }
    }
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
    Ok(())
}

impl DataStore for SqliteDataStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    /// The read connection's `PRAGMA data_version`: SQLite changes it whenever another
    /// connection commits, and every write goes through the other connection (or another
    /// process). A memory database has one connection, whose own commits do not change
    /// it: no mark there. The read connection is only tried, never waited for.
    fn change_mark(&self) -> Option<u64> {
        let reader = match self.reader.as_ref()?.try_lock() {
            Ok(reader) => reader,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        let mut stmt = reader.prepare_cached("PRAGMA data_version").ok()?;
        let version: i64 = stmt.query_row([], |r| r.get(0)).ok()?;
        u64::try_from(version).ok()
    }

    fn create_entry(&self, spec: &EntrySpec, now: SystemTime) -> Result<Entry, DataStoreError> {
        self.write(|tx| entries::create(tx, spec, now))
    }

    fn create_entries(
        &self,
        specs: &[EntrySpec],
        now: SystemTime,
    ) -> Result<Vec<Entry>, DataStoreError> {
        self.write(|tx| batch::create_all(tx, specs, now))
    }

    fn delete_entries(&self, ids: &[String]) -> Result<Vec<Entry>, DataStoreError> {
        self.write(|tx| batch::delete_all(tx, ids))
    }

    fn get_entry(&self, id: &str) -> Result<Option<Entry>, DataStoreError> {
        self.read(|tx| entries::get(tx, id))
    }

    fn update_entry(
        &self,
        id: &str,
        spec: &EntrySpec,
        now: SystemTime,
    ) -> Result<Entry, DataStoreError> {
        self.write(|tx| entries::update(tx, id, spec, now))
    }

    fn delete_entry(&self, id: &str) -> Result<Entry, DataStoreError> {
        self.write(|tx| entries::delete(tx, id))
    }

    fn list_entries(
        &self,
        filter: &EntryFilter,
        page: &PageRequest,
    ) -> Result<Page<Entry>, DataStoreError> {
        self.read(|tx| entries::list(tx, filter, page))
    }

    fn count_entries(&self) -> Result<u64, DataStoreError> {
        self.read(|tx| records::count(tx, "entries"))
    }

    fn entry_with_spiffe_id_exists(&self, id: &SpiffeId) -> Result<bool, DataStoreError> {
        let sql = "SELECT EXISTS (SELECT 1 FROM entries WHERE spiffe_id = ?1)";
        self.read(|tx| Ok(tx.query_row(sql, [id.to_string()], |r| r.get(0))?))
    }

    fn entry_changes_since(
        &self,
        revision: u64,
        limit: u32,
    ) -> Result<EntryChanges, DataStoreError> {
        self.read(|tx| entries::changes_since(tx, revision, limit))
    }

    fn upsert_agent(&self, agent: &AgentRecord) -> Result<(), DataStoreError> {
        self.write(|tx| records::upsert_agent(tx, agent))
    }

    fn get_agent(&self, id: &SpiffeId) -> Result<Option<AgentRecord>, DataStoreError> {
        self.read(|tx| records::get_agent(tx, id))
    }

    fn list_agents(&self, page: &PageRequest) -> Result<Page<AgentRecord>, DataStoreError> {
        self.read(|tx| records::list_agents(tx, page))
    }

    fn count_agents(&self) -> Result<u64, DataStoreError> {
        self.read(|tx| records::count(tx, "agents"))
    }

    fn delete_agent(&self, id: &SpiffeId) -> Result<bool, DataStoreError> {
        let sql = "DELETE FROM agents WHERE id = ?1";
        self.write(|tx| Ok(tx.execute(sql, [id.to_string()])? > 0))
    }

    fn renew_agent_svid(
        &self,
        id: &SpiffeId,
        presented: &str,
        new_serial: &str,
        expires_at: SystemTime,
        now: SystemTime,
    ) -> Result<bool, DataStoreError> {
        self.write(|tx| records::renew_agent_svid(tx, id, presented, new_serial, expires_at, now))
    }

    fn confirm_agent_svid(&self, id: &SpiffeId, serial: &str) -> Result<bool, DataStoreError> {
        self.write(|tx| records::confirm_agent_svid(tx, id, serial))
    }

    fn set_agent_banned(&self, id: &SpiffeId, banned: bool) -> Result<(), DataStoreError> {
        let sql = "UPDATE agents SET banned = ?2 WHERE id = ?1";
        self.write(|tx| match tx.execute(sql, rusqlite::params![id.to_string(), banned])? {
            0 => Err(DataStoreError::NotFound { kind: "agent", id: id.to_string() }),
            _ => Ok(()),
        })
    }

    fn create_join_token(&self, token: &JoinTokenRecord) -> Result<(), DataStoreError> {
        self.write(|tx| records::create_join_token(tx, token))
    }

    fn use_join_token(&self, hash: &[u8; 32], now: SystemTime) -> Result<TokenUse, DataStoreError> {
        self.write(|tx| records::use_join_token(tx, hash, now))
    }

    fn join_token_reserves(
        &self,
        agent_id: &SpiffeId,
        now: SystemTime,
    ) -> Result<bool, DataStoreError> {
        let sql = "SELECT EXISTS (SELECT 1 FROM join_tokens \
                   WHERE agent_id = ?1 AND expires_at > ?2)";
        let params = rusqlite::params![agent_id.to_string(), time_to_db(now)];
        self.read(|tx| Ok(tx.query_row(sql, params, |r| r.get(0))?))
    }

    fn prune_join_tokens(&self, before: SystemTime) -> Result<u64, DataStoreError> {
        let sql = "DELETE FROM join_tokens WHERE expires_at < ?1";
        self.write(|tx| Ok(tx.execute(sql, [time_to_db(before)])? as u64))
    }

    fn get_bundle(&self, trust_domain: &TrustDomain) -> Result<Option<Vec<u8>>, DataStoreError> {
        let sql = "SELECT json FROM bundles WHERE trust_domain = ?1";
        self.read(|tx| {
            Ok(tx.query_row(sql, [trust_domain.to_string()], |r| r.get(0)).optional()?)
        })
    }

    fn set_bundle(&self, trust_domain: &TrustDomain, json: &[u8]) -> Result<(), DataStoreError> {
        let sql = "INSERT INTO bundles (trust_domain, json) VALUES (?1, ?2) \
                   ON CONFLICT (trust_domain) DO UPDATE SET json = excluded.json";
        self.write(|tx| Ok(tx.execute(sql, rusqlite::params![trust_domain.to_string(), json])?))
            .map(drop)
    }

    fn list_bundles(&self) -> Result<Vec<(TrustDomain, Vec<u8>)>, DataStoreError> {
        self.read(federation::list_bundles)
    }

    fn delete_bundle(&self, trust_domain: &TrustDomain) -> Result<bool, DataStoreError> {
        self.write(|tx| federation::delete_bundle(tx, trust_domain))
    }

    fn create_federation(
        &self,
        record: &FederationRecord,
        bootstrap: Option<&[u8]>,
    ) -> Result<(), DataStoreError> {
        self.write(|tx| federation::create(tx, record, bootstrap))
    }

    fn update_federation(
        &self,
        record: &FederationRecord,
        bootstrap: Option<&[u8]>,
    ) -> Result<FederationRecord, DataStoreError> {
        self.write(|tx| federation::update(tx, record, bootstrap))
    }

    fn get_federation(
        &self,
        trust_domain: &TrustDomain,
    ) -> Result<Option<FederationRecord>, DataStoreError> {
        self.read(|tx| federation::get(tx, trust_domain))
    }

    fn list_federations(&self) -> Result<Vec<FederationRecord>, DataStoreError> {
        self.read(federation::list)
    }

    fn delete_federation(
        &self,
        trust_domain: &TrustDomain,
    ) -> Result<FederationRecord, DataStoreError> {
        self.write(|tx| federation::delete(tx, trust_domain))
    }

    fn claim_federation_refresh(
        &self,
        trust_domain: &TrustDomain,
        seen: SystemTime,
        until: SystemTime,
    ) -> Result<bool, DataStoreError> {
        self.write(|tx| federation::claim(tx, trust_domain, seen, until))
    }

    fn record_federation_refresh(
        &self,
        trust_domain: &TrustDomain,
        at: SystemTime,
        next_refresh_at: SystemTime,
        outcome: RefreshOutcome<'_>,
    ) -> Result<bool, DataStoreError> {
        self.write(|tx| federation::record(tx, trust_domain, at, next_refresh_at, outcome))
    }

    fn load_journal(&self, server_id: &str) -> Result<Option<Vec<u8>>, DataStoreError> {
        let sql = "SELECT bytes FROM server_journals WHERE server_id = ?1";
        let found =
            self.read(|tx| Ok(tx.query_row(sql, [server_id], |r| r.get(0)).optional()?))?;
        if found.is_some() || server_id.is_empty() {
            return Ok(found);
        }
        // None of its own: claim the journal of a single-server database, if there is one.
        self.write(|tx| {
            tx.execute(
                "UPDATE server_journals SET server_id = ?1 WHERE server_id = '' \
                 AND NOT EXISTS (SELECT 1 FROM server_journals WHERE server_id = ?1)",
                [server_id],
            )?;
            Ok(tx.query_row(sql, [server_id], |r| r.get(0)).optional()?)
        })
    }

    fn save_journal(&self, server_id: &str, bytes: &[u8]) -> Result<(), DataStoreError> {
        let sql = "INSERT INTO server_journals (server_id, bytes) VALUES (?1, ?2) \
                   ON CONFLICT (server_id) DO UPDATE SET bytes = excluded.bytes";
        self.write(|tx| Ok(tx.execute(sql, rusqlite::params![server_id, bytes])?)).map(drop)
    }

    fn list_journals(&self) -> Result<Vec<(String, Vec<u8>)>, DataStoreError> {
        let sql = "SELECT server_id, bytes FROM server_journals ORDER BY server_id";
        self.read(|tx| {
            let mut stmt = tx.prepare(sql)?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn set_authority_mark(
        &self,
        authority_id: &str,
        mark: AuthorityMark,
    ) -> Result<(), DataStoreError> {
        let sql = "INSERT INTO authority_marks (authority_id, mark) VALUES (?1, ?2) \
                   ON CONFLICT (authority_id) DO UPDATE SET mark = excluded.mark \
                   WHERE authority_marks.mark <> 'revoked'";
        self.write(|tx| Ok(tx.execute(sql, [authority_id, mark.as_str()])?)).map(drop)
    }

    fn authority_marks(&self) -> Result<Vec<(String, AuthorityMark)>, DataStoreError> {
        let sql = "SELECT authority_id, mark FROM authority_marks ORDER BY authority_id";
        self.read(|tx| {
            let mut stmt = tx.prepare(sql)?;
            let rows =
                stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            let mut marks = Vec::new();
            for row in rows {
                let (id, mark) = row?;
                let mark = AuthorityMark::parse(&mark)
                    .ok_or_else(|| DataStoreError::Corrupt(format!("authority mark {mark:?}")))?;
                marks.push((id, mark));
            }
            Ok(marks)
        })
    }

    fn announce_server(&self, server: &ServerRecord) -> Result<(), DataStoreError> {
        let sql = "INSERT INTO servers (id, address, last_seen) VALUES (?1, ?2, ?3) \
                   ON CONFLICT (id) DO UPDATE SET address = excluded.address, \
                   last_seen = excluded.last_seen";
        let params = rusqlite::params![server.id, server.address, time_to_db(server.last_seen)];
        self.write(|tx| Ok(tx.execute(sql, params)?)).map(drop)
    }

    fn list_servers(&self) -> Result<Vec<ServerRecord>, DataStoreError> {
        let sql = "SELECT id, address, last_seen FROM servers ORDER BY id";
        self.read(|tx| {
            let mut stmt = tx.prepare(sql)?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
            })?;
            let mut servers = Vec::new();
            for row in rows {
                let (id, address, seen) = row?;
                servers.push(ServerRecord { id, address, last_seen: time_from_db(seen)? });
            }
            Ok(servers)
        })
    }

    fn ping(&self) -> Result<(), DataStoreError> {
        self.read(|tx| Ok(tx.query_row("SELECT 1", [], |r| r.get::<_, i64>(0)).map(drop)?))
    }
}

#[cfg(test)]
mod store_tests;

//! The PostgreSQL schema and its migrations.
//!
//! The version is the one row of the `schema_version` table. [`MIGRATIONS`] is an ordered
//! list: step `n` (counting from 1) takes a database from version `n - 1` to version `n`;
//! steps are only ever appended. PostgreSQL starts at the HA schema (SQLite's version 4),
//! so its version 1 is that schema in PostgreSQL types.
//!
//! Several servers may start at once on one empty database: the whole migration runs in
//! one transaction that first takes a transaction-scoped advisory lock, so one server
//! migrates while the others wait, then find the schema current and change nothing.
//! PostgreSQL's DDL is transactional, so a crash leaves the previous version, never half
//! of a step.
//!
//! Text keys that pages are ordered by use the `C` collation: byte order, whatever the
//! database's locale, like SQLite (a locale's order may ignore punctuation).

use tokio_postgres::Client;

use super::{DataStoreError, pg_error};

/// The advisory lock key that migrations hold ("keycard1" in ASCII).
const MIGRATION_LOCK: i64 = 0x6b65_7963_6172_6431;

/// Version 1: SQLite's schema version 4. Differences: entries carry `identity_hash`, the
/// SHA-256 of (SPIFFE ID, parent ID, selectors key), under the unique index that detects
/// duplicates: a B-tree row holds at most about 2.7 kB and the three texts can be longer.
const V1: &str = r#"
CREATE TABLE store_revision (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    revision BIGINT NOT NULL
);
INSERT INTO store_revision (id, revision) VALUES (1, 0);

CREATE TABLE entries (
    id TEXT COLLATE "C" PRIMARY KEY,
    spiffe_id TEXT COLLATE "C" NOT NULL,
    parent_id TEXT COLLATE "C" NOT NULL,
    -- The sorted selectors as a JSON array.
    selectors_key TEXT COLLATE "C" NOT NULL,
    identity_hash BYTEA NOT NULL CHECK (length(identity_hash) = 32),
    x509_ttl_ms BIGINT,
    jwt_ttl_ms BIGINT,
    dns_names TEXT NOT NULL,
    hint TEXT NOT NULL,
    admin BOOLEAN NOT NULL,
    revision BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX entries_by_identity ON entries (identity_hash);
CREATE INDEX entries_by_spiffe_id ON entries (spiffe_id);
CREATE INDEX entries_by_parent ON entries (parent_id);
CREATE UNIQUE INDEX entries_by_revision ON entries (revision);

CREATE TABLE entry_selectors (
    entry_id TEXT COLLATE "C" NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
    type TEXT COLLATE "C" NOT NULL,
    value TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (entry_id, type, value)
);
CREATE INDEX entry_selectors_by_selector ON entry_selectors (type, value);

CREATE TABLE entry_tombstones (
    id TEXT COLLATE "C" PRIMARY KEY,
    revision BIGINT NOT NULL
);
CREATE INDEX entry_tombstones_by_revision ON entry_tombstones (revision);

CREATE TABLE agents (
    id TEXT COLLATE "C" PRIMARY KEY,
    attestation_type TEXT NOT NULL,
    selectors TEXT NOT NULL,
    svid_serial TEXT NOT NULL,
    previous_svid_serial TEXT,
    svid_expires_at BIGINT NOT NULL,
    banned BOOLEAN NOT NULL,
    can_reattest BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE join_tokens (
    hash BYTEA PRIMARY KEY CHECK (length(hash) = 32),
    token_id TEXT NOT NULL,
    agent_id TEXT COLLATE "C",
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE INDEX join_tokens_by_agent ON join_tokens (agent_id);

CREATE TABLE bundles (
    trust_domain TEXT COLLATE "C" PRIMARY KEY,
    json BYTEA NOT NULL
);

CREATE TABLE server_journals (
    server_id TEXT COLLATE "C" PRIMARY KEY,
    bytes BYTEA NOT NULL
);
CREATE TABLE authority_marks (
    authority_id TEXT COLLATE "C" PRIMARY KEY,
    mark TEXT NOT NULL CHECK (mark IN ('tainted', 'revoked'))
);
CREATE TABLE servers (
    id TEXT COLLATE "C" PRIMARY KEY,
    address TEXT NOT NULL,
    last_seen BIGINT NOT NULL
);
"#;

/// Version 2: what an entry's JWT-SVIDs are bound to ('none' or 'x509'), as SQLite's
/// version 5.
const V2: &str = "
ALTER TABLE entries ADD COLUMN jwt_svid_binding TEXT NOT NULL DEFAULT 'none';
";

/// Version 3: federation, as SQLite's version 6: each entry's foreign trust domains (a
/// JSON array of names) and the relationships with foreign bundle endpoints.
const V3: &str = "
ALTER TABLE entries ADD COLUMN federates_with TEXT NOT NULL DEFAULT '[]';
CREATE TABLE federations (
    trust_domain TEXT COLLATE \"C\" PRIMARY KEY,
    endpoint_url TEXT NOT NULL,
    profile TEXT NOT NULL,
    endpoint_spiffe_id TEXT,
    ca_pem BYTEA,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    next_refresh_at BIGINT NOT NULL,
    last_attempt_at BIGINT,
    last_success_at BIGINT,
    last_error TEXT
);
";

/// Every migration step, in order.
pub(super) const MIGRATIONS: &[&str] = &[V1, V2, V3];
/// The schema version this build writes.
pub(super) const LATEST: usize = MIGRATIONS.len();

/// Brings the schema up to [`LATEST`]; refuses a database newer than this build knows.
/// `shown` names the database in errors.
pub(super) async fn migrate(client: &mut Client, shown: &str) -> Result<(), DataStoreError> {
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(pg_error)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
             id INTEGER PRIMARY KEY CHECK (id = 1),
             version INTEGER NOT NULL
         )",
    )
    .await
    .map_err(pg_error)?;
    let row = tx
        .query_opt("SELECT version FROM schema_version WHERE id = 1", &[])
        .await
        .map_err(pg_error)?;
    let current: i32 = match row {
        Some(row) => row.try_get(0).map_err(|e| DataStoreError::Corrupt(e.to_string()))?,
        None => 0,
    };
    let current = usize::try_from(current)
        .map_err(|_| DataStoreError::Corrupt(format!("schema version {current}")))?;
    if current > LATEST {
        return Err(DataStoreError::Backend(format!(
            "the PostgreSQL database at {shown} has schema version {current}, newer than this \
             keycard knows ({LATEST}); run a keycard at least as new as the one that last \
             wrote it"
        )));
    }
    if current == LATEST {
        return Ok(());
    }
    for step in &MIGRATIONS[current..] {
        tx.batch_execute(step).await.map_err(pg_error)?;
    }
    let latest = LATEST as i32;
    tx.execute(
        "INSERT INTO schema_version (id, version) VALUES (1, $1) \
         ON CONFLICT (id) DO UPDATE SET version = excluded.version",
        &[&latest],
    )
    .await
    .map_err(pg_error)?;
    tx.commit().await.map_err(pg_error)?;
    tracing::info!(from = current, to = LATEST, "PostgreSQL datastore schema migrated");
    Ok(())
}

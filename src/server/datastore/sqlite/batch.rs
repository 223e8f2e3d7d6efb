//! Batches of entries in SQLite: many creates or deletes in the caller's one transaction.
//!
//! Every entry of a batch is checked as a single call checks it (a duplicate, a missing ID);
//! the refused ones are collected, all of them, and returned as one `BatchRefused` error, so
//! that the transaction rolls back and nothing of the batch is stored. Statements are
//! prepared once per batch (cached), and the revisions are reserved in one update.

use std::time::SystemTime;

use rusqlite::{Transaction, params};

use super::entries::{dns_names_json, duplicate_of, federates_json, get, not_found, selectors_key};
use super::{duration_to_db, time_from_db, time_to_db, u64_from_db};
use crate::server::datastore::{BatchRefusal, DataStoreError};
use crate::server::entry::{Entry, EntrySpec, new_entry_id};

const INSERT_ENTRY: &str = "INSERT INTO entries (id, spiffe_id, parent_id, selectors_key, \
                            x509_ttl_ms, jwt_ttl_ms, dns_names, hint, admin, revision, \
                            created_at, updated_at, jwt_svid_binding, federates_with) \
                            VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12, ?13)";
const INSERT_SELECTOR: &str =
    "INSERT INTO entry_selectors (entry_id, type, value) VALUES (?1, ?2, ?3)";

/// Raises the store's revision counter by `n`; returns the first of the `n` new revisions.
fn reserve_revisions(tx: &Transaction<'_>, n: usize) -> Result<u64, DataStoreError> {
    let n = i64::try_from(n).map_err(|_| DataStoreError::Backend("batch too large".into()))?;
    let sql = "UPDATE store_revision SET revision = revision + ?1 WHERE id = 1 RETURNING revision";
    let last: i64 = tx.query_row(sql, [n], |r| r.get(0))?;
    u64_from_db(last - n + 1, "revision")
}

fn revision_to_db(revision: u64) -> i64 {
    i64::try_from(revision).unwrap_or(i64::MAX)
}

/// Stores every spec with a fresh ID and its own revision, in order; refuses the whole
/// batch, naming each duplicate (of a stored entry or of an earlier one of the batch).
pub(super) fn create_all(
    tx: &Transaction<'_>,
    specs: &[EntrySpec],
    now: SystemTime,
) -> Result<Vec<Entry>, DataStoreError> {
    if specs.is_empty() {
        return Ok(Vec::new());
    }
    let first = reserve_revisions(tx, specs.len())?;
    let now_db = time_to_db(now);
    // What a re-read would return: the time at the store's precision.
    let stamp = time_from_db(now_db)?;
    let mut insert = tx.prepare_cached(INSERT_ENTRY)?;
    let mut insert_selector = tx.prepare_cached(INSERT_SELECTOR)?;
    let mut refused = Vec::new();
    let mut created = Vec::with_capacity(specs.len());
    for (index, spec) in specs.iter().enumerate() {
        let key = selectors_key(&spec.selectors)?;
        if let Some(existing) = duplicate_of(tx, spec, &key, "")? {
            refused.push(BatchRefusal { index, error: DataStoreError::DuplicateEntry(existing) });
            continue;
        }
        let id = new_entry_id();
        let revision = first + index as u64;
        insert.execute(params![
            id,
            spec.spiffe_id.to_string(),
            spec.parent_id.to_string(),
            key,
            spec.x509_ttl.map(duration_to_db),
            spec.jwt_ttl.map(duration_to_db),
            dns_names_json(spec)?,
            spec.hint,
            spec.admin,
            revision_to_db(revision),
            now_db,
            spec.jwt_svid_binding.as_str(),
            federates_json(spec)?,
        ])?;
        for s in spec.selectors.iter() {
            insert_selector.execute(params![id, s.kind(), s.value()])?;
        }
        created.push(Entry {
            id,
            spec: spec.clone(),
            revision,
            created_at: stamp,
            updated_at: stamp,
        });
    }
    if refused.is_empty() { Ok(created) } else { Err(DataStoreError::BatchRefused(refused)) }
}

/// Deletes every entry, in order, each leaving a tombstone; refuses the whole batch,
/// naming each ID that is missing (or listed a second time).
pub(super) fn delete_all(
    tx: &Transaction<'_>,
    ids: &[String],
) -> Result<Vec<Entry>, DataStoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let first = reserve_revisions(tx, ids.len())?;
    let mut delete = tx.prepare_cached("DELETE FROM entries WHERE id = ?1")?;
    let mut tombstone =
        tx.prepare_cached("INSERT INTO entry_tombstones (id, revision) VALUES (?1, ?2)")?;
    let mut refused = Vec::new();
    let mut deleted = Vec::with_capacity(ids.len());
    for (index, id) in ids.iter().enumerate() {
        let Some(entry) = get(tx, id)? else {
            refused.push(BatchRefusal { index, error: not_found(id) });
            continue;
        };
        delete.execute([id])?;
        tombstone.execute(params![id, revision_to_db(first + index as u64)])?;
        deleted.push(entry);
    }
    if refused.is_empty() { Ok(deleted) } else { Err(DataStoreError::BatchRefused(refused)) }
}

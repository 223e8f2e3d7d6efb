//! Registration entries in PostgreSQL: the `entries` table, its `entry_selectors`
//! children, the store-wide revision counter and the tombstones of deleted entries.
//!
//! Revisions follow commit order. Every call that changes entries first raises the counter
//! row (`UPDATE store_revision ... RETURNING`): the row lock it takes is held until the
//! transaction ends, so the next writer gets its revision only after this one committed
//! (or rolled back, returning nothing). A reader whose snapshot shows revision R therefore
//! sees every change up to R and none after it: `entry_changes_since` cannot miss a change
//! that commits late, as it could with a sequence. Taking the lock first also makes the
//! duplicate check see every committed entry; the unique index is the backstop.

use std::time::SystemTime;

use sha2::{Digest as _, Sha256};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Transaction};

use super::{DataStoreError, get, pg_error};
use crate::selector::{Selector, SelectorSet};
use crate::server::datastore::codec::{
    binding_from_db, dns_names_json, duration_from_db, duration_to_db, federates_from_db,
    federates_json, filter_conditions, page_after, page_token, selectors_key, spiffe_id_from_db,
    time_from_db, time_to_db, u64_from_db, u64_to_db,
};
use crate::server::datastore::{BatchRefusal, EntryChanges, EntryFilter, Page, PageRequest};
use crate::server::entry::{Entry, EntrySpec, new_entry_id};

/// Every entry query: the row and its selectors (two arrays in the same order), in the
/// order [`decode`] expects; callers append `WHERE ...`.
const SELECT: &str = "SELECT e.id, e.spiffe_id, e.parent_id, e.x509_ttl_ms, e.jwt_ttl_ms, \
    e.dns_names, e.hint, e.admin, e.revision, e.created_at, e.updated_at, \
    ARRAY(SELECT s.type FROM entry_selectors s WHERE s.entry_id = e.id \
          ORDER BY s.type, s.value), \
    ARRAY(SELECT s.value FROM entry_selectors s WHERE s.entry_id = e.id \
          ORDER BY s.type, s.value), \
    e.jwt_svid_binding, e.federates_with \
    FROM entries e";

const INSERT_ENTRY: &str = "INSERT INTO entries (id, spiffe_id, parent_id, selectors_key, \
    identity_hash, x509_ttl_ms, jwt_ttl_ms, dns_names, hint, admin, revision, created_at, \
    updated_at, jwt_svid_binding, federates_with) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, $13, $14)";
const INSERT_SELECTORS: &str = "INSERT INTO entry_selectors (entry_id, type, value) \
    SELECT $1, t, v FROM unnest($2::text[], $3::text[]) AS s (t, v)";

/// An entry's column values as written by insert and update, in the order of their
/// `$1`..`$14` parameters.
struct Columns<'a> {
    id: &'a str,
    spec: &'a EntrySpec,
    spiffe_id: String,
    parent_id: String,
    key: String,
    hash: Vec<u8>,
    x509_ttl: Option<i64>,
    jwt_ttl: Option<i64>,
    dns_names: String,
    revision: i64,
    time: i64,
    binding: &'static str,
    federates_with: String,
}

impl<'a> Columns<'a> {
    fn new(
        id: &'a str,
        spec: &'a EntrySpec,
        key: String,
        hash: Vec<u8>,
        revision: u64,
        time: i64,
    ) -> Result<Self, DataStoreError> {
        Ok(Self {
            id,
            spec,
            spiffe_id: spec.spiffe_id.to_string(),
            parent_id: spec.parent_id.to_string(),
            key,
            hash,
            x509_ttl: spec.x509_ttl.map(duration_to_db),
            jwt_ttl: spec.jwt_ttl.map(duration_to_db),
            dns_names: dns_names_json(spec)?,
            revision: u64_to_db(revision),
            time,
            binding: spec.jwt_svid_binding.as_str(),
            federates_with: federates_json(spec)?,
        })
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 14] {
        [
            &self.id,
            &self.spiffe_id,
            &self.parent_id,
            &self.key,
            &self.hash,
            &self.x509_ttl,
            &self.jwt_ttl,
            &self.dns_names,
            &self.spec.hint,
            &self.spec.admin,
            &self.revision,
            &self.time,
            &self.binding,
            &self.federates_with,
        ]
    }
}

fn decode(row: &Row) -> Result<Entry, DataStoreError> {
    let id: String = get(row, 0)?;
    let types: Vec<String> = get(row, 11)?;
    let values: Vec<String> = get(row, 12)?;
    let mut selectors = SelectorSet::new();
    for (kind, value) in types.iter().zip(&values) {
        let selector = Selector::new(kind, value)
            .map_err(|e| DataStoreError::Corrupt(format!("selector of entry {id}: {e}")))?;
        selectors.insert(selector);
    }
    let dns_names: String = get(row, 5)?;
    let dns_names = serde_json::from_str(&dns_names)
        .map_err(|e| DataStoreError::Corrupt(format!("DNS names of entry {id}: {e}")))?;
    let spec = EntrySpec {
        spiffe_id: spiffe_id_from_db(&get::<String>(row, 1)?)?,
        parent_id: spiffe_id_from_db(&get::<String>(row, 2)?)?,
        selectors,
        x509_ttl: get::<Option<i64>>(row, 3)?.map(duration_from_db).transpose()?,
        jwt_ttl: get::<Option<i64>>(row, 4)?.map(duration_from_db).transpose()?,
        dns_names,
        hint: get(row, 6)?,
        admin: get(row, 7)?,
        jwt_svid_binding: binding_from_db(&get::<String>(row, 13)?, &id)?,
        federates_with: federates_from_db(&get::<String>(row, 14)?, &id)?,
    };
    Ok(Entry {
        revision: u64_from_db(get(row, 8)?, "revision")?,
        created_at: time_from_db(get(row, 9)?)?,
        updated_at: time_from_db(get(row, 10)?)?,
        id,
        spec,
    })
}

/// What makes two entries duplicates, hashed: SPIFFE ID, parent ID and selectors key.
fn identity_hash(spec: &EntrySpec, key: &str) -> Vec<u8> {
    let mut hash = Sha256::new();
    for part in [spec.spiffe_id.as_ref(), spec.parent_id.as_ref(), key] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    hash.finalize().to_vec()
}

/// Raises the revision counter by `n` (locking it until the transaction ends); returns the
/// first of the `n` new revisions.
async fn reserve_revisions(tx: &Transaction<'_>, n: usize) -> Result<u64, DataStoreError> {
    let n = i64::try_from(n).map_err(|_| DataStoreError::Backend("batch too large".into()))?;
    let sql = "UPDATE store_revision SET revision = revision + $1 WHERE id = 1 RETURNING revision";
    let row = tx.query_one(sql, &[&n]).await.map_err(pg_error)?;
    u64_from_db(get::<i64>(&row, 0)? - n + 1, "revision")
}

/// The ID of another entry with the same identity hash, if any.
async fn duplicate_of(
    tx: &Transaction<'_>,
    hash: &[u8],
    except: &str,
) -> Result<Option<String>, DataStoreError> {
    let sql = "SELECT id FROM entries WHERE identity_hash = $1 AND id <> $2";
    let row = tx.query_opt(sql, &[&hash, &except]).await.map_err(pg_error)?;
    row.map(|r| get(&r, 0)).transpose()
}

/// A unique violation is a duplicate that the lock-first check could not see (someone
/// wrote entries without taking the counter lock); anything else is a backend failure.
fn insert_error(e: tokio_postgres::Error) -> DataStoreError {
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        DataStoreError::DuplicateEntry(format!("(found by the database: {})", super::describe(&e)))
    } else {
        pg_error(e)
    }
}

async fn insert_selectors(
    tx: &Transaction<'_>,
    id: &str,
    selectors: &SelectorSet,
) -> Result<(), DataStoreError> {
    let kinds: Vec<&str> = selectors.iter().map(Selector::kind).collect();
    let values: Vec<&str> = selectors.iter().map(Selector::value).collect();
    tx.execute(INSERT_SELECTORS, &[&id, &kinds, &values]).await.map_err(insert_error)?;
    Ok(())
}

pub(super) fn not_found(id: &str) -> DataStoreError {
    DataStoreError::NotFound { kind: "entry", id: id.to_owned() }
}

/// Stores every spec with a fresh ID and its own revision, in order; refuses the whole
/// batch, naming each duplicate (of a stored entry or of an earlier one of the batch).
pub(super) async fn create_all(
    tx: &Transaction<'_>,
    specs: &[EntrySpec],
    now: SystemTime,
) -> Result<Vec<Entry>, DataStoreError> {
    if specs.is_empty() {
        return Ok(Vec::new());
    }
    let first = reserve_revisions(tx, specs.len()).await?;
    let now_db = time_to_db(now);
    // What a re-read would return: the time at the store's precision.
    let stamp = time_from_db(now_db)?;
    let insert = tx.prepare(INSERT_ENTRY).await.map_err(pg_error)?;
    let mut refused = Vec::new();
    let mut created = Vec::with_capacity(specs.len());
    for (index, spec) in specs.iter().enumerate() {
        let key = selectors_key(&spec.selectors)?;
        let hash = identity_hash(spec, &key);
        if let Some(existing) = duplicate_of(tx, &hash, "").await? {
            refused.push(BatchRefusal { index, error: DataStoreError::DuplicateEntry(existing) });
            continue;
        }
        let id = new_entry_id();
        let revision = first + index as u64;
        let row = Columns::new(&id, spec, key, hash, revision, now_db)?;
        tx.execute(&insert, &row.params()).await.map_err(insert_error)?;
        insert_selectors(tx, &id, &spec.selectors).await?;
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

/// Stores one entry: a batch of one, so both paths insert the same way; a refusal comes
/// back as the single create's own error.
pub(super) async fn create(
    tx: &Transaction<'_>,
    spec: &EntrySpec,
    now: SystemTime,
) -> Result<Entry, DataStoreError> {
    match create_all(tx, std::slice::from_ref(spec), now).await {
        Ok(mut created) => {
            created.pop().ok_or_else(|| DataStoreError::Backend("no entry was created".into()))
        }
        Err(DataStoreError::BatchRefused(mut refused)) if refused.len() == 1 => {
            Err(refused.remove(0).error)
        }
        Err(e) => Err(e),
    }
}

/// Deletes every entry, in order, each leaving a tombstone; refuses the whole batch,
/// naming each ID that is missing (or listed a second time).
pub(super) async fn delete_all(
    tx: &Transaction<'_>,
    ids: &[String],
) -> Result<Vec<Entry>, DataStoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let first = reserve_revisions(tx, ids.len()).await?;
    let mut refused = Vec::new();
    let mut deleted = Vec::with_capacity(ids.len());
    for (index, id) in ids.iter().enumerate() {
        let Some(entry) = get_entry(tx, id).await? else {
            refused.push(BatchRefusal { index, error: not_found(id) });
            continue;
        };
        tx.execute("DELETE FROM entries WHERE id = $1", &[id]).await.map_err(pg_error)?;
        let revision = u64_to_db(first + index as u64);
        tx.execute("INSERT INTO entry_tombstones (id, revision) VALUES ($1, $2)", &[id, &revision])
            .await
            .map_err(pg_error)?;
        deleted.push(entry);
    }
    if refused.is_empty() { Ok(deleted) } else { Err(DataStoreError::BatchRefused(refused)) }
}

/// Deletes one entry, leaving a tombstone.
pub(super) async fn delete(tx: &Transaction<'_>, id: &str) -> Result<Entry, DataStoreError> {
    match delete_all(tx, &[id.to_owned()]).await {
        Ok(mut deleted) => deleted.pop().ok_or_else(|| not_found(id)),
        Err(DataStoreError::BatchRefused(mut refused)) if refused.len() == 1 => {
            Err(refused.remove(0).error)
        }
        Err(e) => Err(e),
    }
}

pub(super) async fn get_entry(
    tx: &Transaction<'_>,
    id: &str,
) -> Result<Option<Entry>, DataStoreError> {
    let sql = format!("{SELECT} WHERE e.id = $1");
    let row = tx.query_opt(&sql, &[&id]).await.map_err(pg_error)?;
    row.as_ref().map(decode).transpose()
}

pub(super) async fn update(
    tx: &Transaction<'_>,
    id: &str,
    spec: &EntrySpec,
    now: SystemTime,
) -> Result<Entry, DataStoreError> {
    let revision = reserve_revisions(tx, 1).await?;
    let key = selectors_key(&spec.selectors)?;
    let hash = identity_hash(spec, &key);
    let exists = tx
        .query_opt("SELECT 1 FROM entries WHERE id = $1", &[&id])
        .await
        .map_err(pg_error)?
        .is_some();
    if !exists {
        return Err(not_found(id));
    }
    if let Some(existing) = duplicate_of(tx, &hash, id).await? {
        return Err(DataStoreError::DuplicateEntry(existing));
    }
    let row = Columns::new(id, spec, key, hash, revision, time_to_db(now))?;
    tx.execute(
        "UPDATE entries SET spiffe_id = $2, parent_id = $3, selectors_key = $4, \
         identity_hash = $5, x509_ttl_ms = $6, jwt_ttl_ms = $7, dns_names = $8, hint = $9, \
         admin = $10, revision = $11, updated_at = $12, \
         jwt_svid_binding = $13, federates_with = $14 WHERE id = $1",
        &row.params(),
    )
    .await
    .map_err(insert_error)?;
    tx.execute("DELETE FROM entry_selectors WHERE entry_id = $1", &[&id])
        .await
        .map_err(pg_error)?;
    insert_selectors(tx, id, &spec.selectors).await?;
    get_entry(tx, id).await?.ok_or_else(|| not_found(id))
}

pub(super) async fn list(
    tx: &Transaction<'_>,
    filter: &EntryFilter,
    page: &PageRequest,
) -> Result<Page<Entry>, DataStoreError> {
    let mut sql = format!("{SELECT} WHERE e.id > $1");
    let mut args = vec![page_after(page)?];
    for (column, value) in filter_conditions(filter)? {
        args.push(value);
        sql.push_str(&format!(" AND e.{column} = ${}", args.len()));
    }
    let size = page.effective_size() as usize;
    sql.push_str(&format!(" ORDER BY e.id LIMIT {}", size + 1));
    let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a as _).collect();
    let rows = tx.query(&sql, &params).await.map_err(pg_error)?;
    let more = rows.len() > size;
    let items = rows.iter().take(size).map(decode).collect::<Result<Vec<_>, _>>()?;
    let next_token = match items.last() {
        Some(last) if more => Some(page_token(&last.id)),
        _ => None,
    };
    Ok(Page { items, next_token })
}

/// The counter's value (in the caller's snapshot).
pub(super) async fn current_revision(tx: &Transaction<'_>) -> Result<u64, DataStoreError> {
    let sql = "SELECT revision FROM store_revision WHERE id = 1";
    let row = tx.query_one(sql, &[]).await.map_err(pg_error)?;
    u64_from_db(get(&row, 0)?, "revision")
}

/// Runs in a single-snapshot transaction, so the counter and the rows agree.
pub(super) async fn changes_since(
    tx: &Transaction<'_>,
    revision: u64,
    limit: u32,
) -> Result<EntryChanges, DataStoreError> {
    let since = u64_to_db(revision);
    let current = current_revision(tx).await?;
    // 0 means no limit: a caller that asks for nothing would never make progress.
    let limit = if limit == 0 { i64::MAX } else { i64::from(limit) };
    let sql = format!("{SELECT} WHERE e.revision > $1 ORDER BY e.revision LIMIT $2");
    let rows = tx.query(&sql, &[&since, &limit]).await.map_err(pg_error)?;
    let changed = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
    let upto = match changed.last() {
        Some(last) if changed.len() as i64 == limit => last.revision,
        _ => current,
    };
    let mut deleted = Vec::new();
    if revision > 0 {
        let sql = "SELECT id FROM entry_tombstones WHERE revision > $1 AND revision <= $2 \
                   ORDER BY revision";
        for row in tx.query(sql, &[&since, &u64_to_db(upto)]).await.map_err(pg_error)? {
            deleted.push(get(&row, 0)?);
        }
    }
    Ok(EntryChanges { changed, deleted, revision: upto })
}

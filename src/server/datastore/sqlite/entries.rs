//! Registration entries in SQLite: the `entries` table, its `entry_selectors` children,
//! the store-wide revision counter and the tombstones of deleted entries.

use std::time::SystemTime;

use rusqlite::{Connection, OptionalExtension as _, Row, Transaction, params, params_from_iter};

use super::{
    binding_from_db, duration_from_db, duration_to_db, page_after, page_token, spiffe_id_from_db,
    time_from_db, time_to_db, u64_from_db,
};
use crate::selector::{Selector, SelectorSet};
use crate::server::datastore::{DataStoreError, EntryChanges, EntryFilter, Page, PageRequest};
use crate::server::entry::{Entry, EntrySpec};

/// The columns every entry query reads, in the order [`Raw::from_row`] expects.
const COLUMNS: &str = "id, spiffe_id, parent_id, x509_ttl_ms, jwt_ttl_ms, dns_names, hint, \
                       admin, revision, created_at, updated_at, jwt_svid_binding, \
                       federates_with";

/// An entry row as SQLite returns it, before the values are checked.
struct Raw {
    id: String,
    spiffe_id: String,
    parent_id: String,
    x509_ttl_ms: Option<i64>,
    jwt_ttl_ms: Option<i64>,
    dns_names: String,
    hint: String,
    admin: bool,
    revision: i64,
    created_at: i64,
    updated_at: i64,
    jwt_svid_binding: String,
    federates_with: String,
}

impl Raw {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            spiffe_id: r.get(1)?,
            parent_id: r.get(2)?,
            x509_ttl_ms: r.get(3)?,
            jwt_ttl_ms: r.get(4)?,
            dns_names: r.get(5)?,
            hint: r.get(6)?,
            admin: r.get(7)?,
            revision: r.get(8)?,
            created_at: r.get(9)?,
            updated_at: r.get(10)?,
            jwt_svid_binding: r.get(11)?,
            federates_with: r.get(12)?,
        })
    }

    /// The entry, with its selectors read from `entry_selectors`.
    fn decode(self, tx: &Connection) -> Result<Entry, DataStoreError> {
        let mut stmt =
            tx.prepare_cached("SELECT type, value FROM entry_selectors WHERE entry_id = ?1")?;
        let pairs = stmt.query_map([&self.id], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))?;
        let mut selectors = SelectorSet::new();
        for pair in pairs {
            let (kind, value): (String, String) = pair?;
            let selector = Selector::new(&kind, &value).map_err(|e| {
                DataStoreError::Corrupt(format!("selector of entry {}: {e}", self.id))
            })?;
            selectors.insert(selector);
        }
        let dns_names = serde_json::from_str(&self.dns_names)
            .map_err(|e| DataStoreError::Corrupt(format!("DNS names of entry {}: {e}", self.id)))?;
        let spec = EntrySpec {
            spiffe_id: spiffe_id_from_db(&self.spiffe_id)?,
            parent_id: spiffe_id_from_db(&self.parent_id)?,
            selectors,
            x509_ttl: self.x509_ttl_ms.map(duration_from_db).transpose()?,
            jwt_ttl: self.jwt_ttl_ms.map(duration_from_db).transpose()?,
            dns_names,
            hint: self.hint,
            admin: self.admin,
            jwt_svid_binding: binding_from_db(&self.jwt_svid_binding, &self.id)?,
            federates_with: federates_from_db(&self.federates_with, &self.id)?,
        };
        Ok(Entry {
            id: self.id,
            spec,
            revision: u64_from_db(self.revision, "revision")?,
            created_at: time_from_db(self.created_at)?,
            updated_at: time_from_db(self.updated_at)?,
        })
    }
}

pub(super) use crate::server::datastore::codec::{
    dns_names_json, federates_from_db, federates_json, filter_conditions, selectors_key,
};

/// Raises the store's revision counter and returns the new value.
fn next_revision(tx: &Transaction<'_>) -> Result<i64, DataStoreError> {
    let sql = "UPDATE store_revision SET revision = revision + 1 WHERE id = 1 RETURNING revision";
    Ok(tx.query_row(sql, [], |r| r.get(0))?)
}

/// The ID of another entry with the same SPIFFE ID, parent ID and selectors, if any.
pub(super) fn duplicate_of(
    tx: &Transaction<'_>,
    spec: &EntrySpec,
    key: &str,
    except: &str,
) -> Result<Option<String>, DataStoreError> {
    let sql = "SELECT id FROM entries \
               WHERE spiffe_id = ?1 AND parent_id = ?2 AND selectors_key = ?3 AND id <> ?4";
    let params = params![spec.spiffe_id.to_string(), spec.parent_id.to_string(), key, except];
    Ok(tx.query_row(sql, params, |r| r.get(0)).optional()?)
}

fn insert_selectors(
    tx: &Transaction<'_>,
    id: &str,
    selectors: &SelectorSet,
) -> Result<(), DataStoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO entry_selectors (entry_id, type, value) VALUES (?1, ?2, ?3)",
    )?;
    for s in selectors.iter() {
        stmt.execute(params![id, s.kind(), s.value()])?;
    }
    Ok(())
}

/// Stores one entry: a batch of one ([`super::batch::create_all`]), so both paths insert
/// the same way; a refusal comes back as the single create's own error.
pub(super) fn create(
    tx: &Transaction<'_>,
    spec: &EntrySpec,
    now: SystemTime,
) -> Result<Entry, DataStoreError> {
    match super::batch::create_all(tx, std::slice::from_ref(spec), now) {
        Ok(mut created) => {
            created.pop().ok_or_else(|| DataStoreError::Backend("no entry was created".into()))
        }
        Err(DataStoreError::BatchRefused(mut refused)) if refused.len() == 1 => {
            Err(refused.remove(0).error)
        }
        Err(e) => Err(e),
    }
}

pub(super) fn get(tx: &Connection, id: &str) -> Result<Option<Entry>, DataStoreError> {
    let sql = format!("SELECT {COLUMNS} FROM entries WHERE id = ?1");
    let raw = tx.query_row(&sql, [id], Raw::from_row).optional()?;
    raw.map(|raw| raw.decode(tx)).transpose()
}

pub(super) fn not_found(id: &str) -> DataStoreError {
    DataStoreError::NotFound { kind: "entry", id: id.to_owned() }
}

pub(super) fn update(
    tx: &Transaction<'_>,
    id: &str,
    spec: &EntrySpec,
    now: SystemTime,
) -> Result<Entry, DataStoreError> {
    let key = selectors_key(&spec.selectors)?;
    let exists: bool =
        tx.query_row("SELECT EXISTS (SELECT 1 FROM entries WHERE id = ?1)", [id], |r| r.get(0))?;
    if !exists {
        return Err(not_found(id));
    }
    if let Some(existing) = duplicate_of(tx, spec, &key, id)? {
        return Err(DataStoreError::DuplicateEntry(existing));
    }
    let revision = next_revision(tx)?;
    tx.execute(
        "UPDATE entries SET spiffe_id = ?2, parent_id = ?3, selectors_key = ?4, \
         x509_ttl_ms = ?5, jwt_ttl_ms = ?6, dns_names = ?7, hint = ?8, admin = ?9, \
         revision = ?10, updated_at = ?11, jwt_svid_binding = ?12, federates_with = ?13 \
         WHERE id = ?1",
        params![
            id,
            spec.spiffe_id.to_string(),
            spec.parent_id.to_string(),
            key,
            spec.x509_ttl.map(duration_to_db),
            spec.jwt_ttl.map(duration_to_db),
            dns_names_json(spec)?,
            spec.hint,
            spec.admin,
            revision,
            time_to_db(now),
            spec.jwt_svid_binding.as_str(),
            federates_json(spec)?,
        ],
    )?;
    tx.execute("DELETE FROM entry_selectors WHERE entry_id = ?1", [id])?;
    insert_selectors(tx, id, &spec.selectors)?;
    get(tx, id)?.ok_or_else(|| not_found(id))
}

pub(super) fn delete(tx: &Transaction<'_>, id: &str) -> Result<Entry, DataStoreError> {
    let entry = get(tx, id)?.ok_or_else(|| not_found(id))?;
    tx.execute("DELETE FROM entries WHERE id = ?1", [id])?;
    let revision = next_revision(tx)?;
    tx.execute(
        "INSERT INTO entry_tombstones (id, revision) VALUES (?1, ?2)",
        params![id, revision],
    )?;
    Ok(entry)
}

pub(super) fn list(
    tx: &Connection,
    filter: &EntryFilter,
    page: &PageRequest,
) -> Result<Page<Entry>, DataStoreError> {
    let mut sql = format!("SELECT {COLUMNS} FROM entries WHERE id > ?1");
    let mut args = vec![page_after(page)?];
    for (column, value) in filter_conditions(filter)? {
        args.push(value);
        sql.push_str(&format!(" AND {column} = ?{}", args.len()));
    }
    let size = page.effective_size() as usize;
    sql.push_str(&format!(" ORDER BY id LIMIT {}", size + 1));
    let mut stmt = tx.prepare_cached(&sql)?;
    let raws = stmt.query_map(params_from_iter(args), Raw::from_row)?;
    let mut items = Vec::with_capacity(size);
    let mut more = false;
    for raw in raws {
        if items.len() == size {
            more = true;
            break;
        }
        items.push(raw?.decode(tx)?);
    }
    let next_token = match items.last() {
        Some(last) if more => Some(page_token(&last.id)),
        _ => None,
    };
    Ok(Page { items, next_token })
}

pub(super) fn changes_since(
    tx: &Connection,
    revision: u64,
    limit: u32,
) -> Result<EntryChanges, DataStoreError> {
    let since = i64::try_from(revision).unwrap_or(i64::MAX);
    let current: i64 = tx
        .prepare_cached("SELECT revision FROM store_revision WHERE id = 1")?
        .query_row([], |r| r.get(0))?;
    // 0 means no limit: a caller that asks for nothing would never make progress.
    let limit = if limit == 0 { i64::MAX } else { i64::from(limit) };
    let sql =
        format!("SELECT {COLUMNS} FROM entries WHERE revision > ?1 ORDER BY revision LIMIT ?2");
    let mut stmt = tx.prepare_cached(&sql)?;
    let mut changed = Vec::new();
    for raw in stmt.query_map(params![since, limit], Raw::from_row)? {
        changed.push(raw?.decode(tx)?);
    }
    let upto = match changed.last() {
        Some(last) if changed.len() as i64 == limit => last.revision,
        _ => u64_from_db(current, "revision")?,
    };
    let mut deleted = Vec::new();
    if revision > 0 {
        let sql = "SELECT id FROM entry_tombstones WHERE revision > ?1 AND revision <= ?2 \
                   ORDER BY revision";
        let mut stmt = tx.prepare_cached(sql)?;
        let upto_db = i64::try_from(upto).unwrap_or(i64::MAX);
        for id in stmt.query_map(params![since, upto_db], |r| r.get(0))? {
            deleted.push(id?);
        }
    }
    Ok(EntryChanges { changed, deleted, revision: upto })
}

/// The revision counter, for tests.
#[cfg(test)]
pub(super) fn current_revision(tx: &Transaction<'_>) -> i64 {
    tx.query_row("SELECT revision FROM store_revision WHERE id = 1", [], |r| r.get(0)).unwrap()
}

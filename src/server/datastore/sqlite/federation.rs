//! Federation relationships and foreign bundles in SQLite.

use std::time::SystemTime;

use keycard_workload_api::TrustDomain;
use rusqlite::{Connection, Row, Transaction, params};

use super::{time_from_db, time_to_db};
use crate::server::datastore::federation::{profile_columns, profile_from_db};
use crate::server::datastore::{DataStoreError, FederationRecord, RefreshOutcome};

const COLUMNS: &str = "trust_domain, endpoint_url, profile, endpoint_spiffe_id, ca_pem, \
                       created_at, updated_at, next_refresh_at, last_attempt_at, \
                       last_success_at, last_error";

fn decode(r: &Row<'_>) -> Result<FederationRecord, DataStoreError> {
    let td: String = r.get(0)?;
    let trust_domain = TrustDomain::new(&td).map_err(|e| {
        DataStoreError::Corrupt(format!("federation relationship {td:?}: trust domain: {e}"))
    })?;
    let opt_time = |i: usize| -> Result<Option<SystemTime>, DataStoreError> {
        r.get::<_, Option<i64>>(i)?.map(time_from_db).transpose()
    };
    Ok(FederationRecord {
        endpoint_url: r.get(1)?,
        profile: profile_from_db(&r.get::<_, String>(2)?, r.get(3)?, r.get(4)?, &td)?,
        created_at: time_from_db(r.get(5)?)?,
        updated_at: time_from_db(r.get(6)?)?,
        next_refresh_at: time_from_db(r.get(7)?)?,
        last_attempt_at: opt_time(8)?,
        last_success_at: opt_time(9)?,
        last_error: r.get(10)?,
        trust_domain,
    })
}

fn set_bundle(tx: &Transaction<'_>, td: &TrustDomain, json: &[u8]) -> Result<(), DataStoreError> {
    tx.execute(
        "INSERT INTO bundles (trust_domain, json) VALUES (?1, ?2) \
         ON CONFLICT (trust_domain) DO UPDATE SET json = excluded.json",
        params![td.to_string(), json],
    )?;
    Ok(())
}

pub(super) fn get(
    tx: &Connection,
    td: &TrustDomain,
) -> Result<Option<FederationRecord>, DataStoreError> {
    let sql = format!("SELECT {COLUMNS} FROM federations WHERE trust_domain = ?1");
    let mut stmt = tx.prepare_cached(&sql)?;
    let mut rows = stmt.query([td.to_string()])?;
    rows.next()?.map(decode).transpose()
}

pub(super) fn list(tx: &Connection) -> Result<Vec<FederationRecord>, DataStoreError> {
    let sql = format!("SELECT {COLUMNS} FROM federations ORDER BY trust_domain");
    let mut stmt = tx.prepare_cached(&sql)?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(decode(row)?);
    }
    Ok(out)
}

pub(super) fn create(
    tx: &Transaction<'_>,
    rec: &FederationRecord,
    bootstrap: Option<&[u8]>,
) -> Result<(), DataStoreError> {
    if get(tx, &rec.trust_domain)?.is_some() {
        return Err(DataStoreError::AlreadyExists {
            kind: "federation relationship with",
            id: rec.trust_domain.to_string(),
        });
    }
    let (profile, endpoint_id, ca_pem) = profile_columns(&rec.profile);
    tx.execute(
        &format!(
            "INSERT INTO federations ({COLUMNS}) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
        ),
        params![
            rec.trust_domain.to_string(),
            rec.endpoint_url,
            profile,
            endpoint_id,
            ca_pem,
            time_to_db(rec.created_at),
            time_to_db(rec.updated_at),
            time_to_db(rec.next_refresh_at),
            rec.last_attempt_at.map(time_to_db),
            rec.last_success_at.map(time_to_db),
            rec.last_error,
        ],
    )?;
    if let Some(json) = bootstrap {
        set_bundle(tx, &rec.trust_domain, json)?;
    }
    Ok(())
}

pub(super) fn update(
    tx: &Transaction<'_>,
    rec: &FederationRecord,
    bootstrap: Option<&[u8]>,
) -> Result<FederationRecord, DataStoreError> {
    let (profile, endpoint_id, ca_pem) = profile_columns(&rec.profile);
    let n = tx.execute(
        "UPDATE federations SET endpoint_url = ?2, profile = ?3, endpoint_spiffe_id = ?4, \
         ca_pem = ?5, updated_at = ?6, next_refresh_at = ?6 WHERE trust_domain = ?1",
        params![
            rec.trust_domain.to_string(),
            rec.endpoint_url,
            profile,
            endpoint_id,
            ca_pem,
            time_to_db(rec.updated_at),
        ],
    )?;
    if n == 0 {
        return Err(not_found(&rec.trust_domain));
    }
    if let Some(json) = bootstrap {
        set_bundle(tx, &rec.trust_domain, json)?;
    }
    get(tx, &rec.trust_domain)?.ok_or_else(|| not_found(&rec.trust_domain))
}

pub(super) fn delete(
    tx: &Transaction<'_>,
    td: &TrustDomain,
) -> Result<FederationRecord, DataStoreError> {
    let rec = get(tx, td)?.ok_or_else(|| not_found(td))?;
    tx.execute("DELETE FROM federations WHERE trust_domain = ?1", [td.to_string()])?;
    tx.execute("DELETE FROM bundles WHERE trust_domain = ?1", [td.to_string()])?;
    Ok(rec)
}

pub(super) fn claim(
    tx: &Transaction<'_>,
    td: &TrustDomain,
    seen: SystemTime,
    until: SystemTime,
) -> Result<bool, DataStoreError> {
    let n = tx.execute(
        "UPDATE federations SET next_refresh_at = ?3 \
         WHERE trust_domain = ?1 AND next_refresh_at = ?2",
        params![td.to_string(), time_to_db(seen), time_to_db(until)],
    )?;
    Ok(n == 1)
}

pub(super) fn record(
    tx: &Transaction<'_>,
    td: &TrustDomain,
    at: SystemTime,
    next: SystemTime,
    outcome: RefreshOutcome<'_>,
) -> Result<bool, DataStoreError> {
    let (success, error) = match outcome {
        RefreshOutcome::Fetched(_) => (Some(time_to_db(at)), None),
        RefreshOutcome::Failed(why) => (None, Some(why)),
    };
    let n = tx.execute(
        "UPDATE federations SET next_refresh_at = ?3, last_attempt_at = ?2, \
         last_success_at = COALESCE(?4, last_success_at), last_error = ?5 \
         WHERE trust_domain = ?1",
        params![td.to_string(), time_to_db(at), time_to_db(next), success, error],
    )?;
    if n == 0 {
        return Ok(false);
    }
    if let RefreshOutcome::Fetched(json) = outcome {
        set_bundle(tx, td, json)?;
    }
    Ok(true)
}

pub(super) fn list_bundles(tx: &Connection) -> Result<Vec<(TrustDomain, Vec<u8>)>, DataStoreError> {
    let mut stmt =
        tx.prepare_cached("SELECT trust_domain, json FROM bundles ORDER BY trust_domain")?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let name: String = row.get(0)?;
        let td = TrustDomain::new(&name).map_err(|e| {
            DataStoreError::Corrupt(format!("bundle of trust domain {name:?}: {e}"))
        })?;
        out.push((td, row.get(1)?));
    }
    Ok(out)
}

pub(super) fn delete_bundle(
    tx: &Transaction<'_>,
    td: &TrustDomain,
) -> Result<bool, DataStoreError> {
    Ok(tx.execute("DELETE FROM bundles WHERE trust_domain = ?1", [td.to_string()])? == 1)
}

fn not_found(td: &TrustDomain) -> DataStoreError {
    DataStoreError::NotFound { kind: "federation relationship with", id: td.to_string() }
}

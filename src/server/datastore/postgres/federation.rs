//! Federation relationships and foreign bundles in PostgreSQL (as the SQLite store keeps
//! them; see [`crate::server::datastore::federation`]).

use std::time::SystemTime;

use keycard_workload_api::TrustDomain;
use tokio_postgres::{Row, Transaction};

use super::{DataStoreError, get as column, pg_error};
use crate::server::datastore::FederationRecord;
use crate::server::datastore::codec::{time_from_db, time_to_db};
use crate::server::datastore::federation::{profile_columns, profile_from_db};

const COLUMNS: &str = "trust_domain, endpoint_url, profile, endpoint_spiffe_id, ca_pem, \
                       created_at, updated_at, next_refresh_at, last_attempt_at, \
                       last_success_at, last_error";

/// A fetch's outcome, owned (the call runs on the store's own runtime).
pub(super) type Outcome = Result<Vec<u8>, String>;

fn decode(r: &Row) -> Result<FederationRecord, DataStoreError> {
    let td: String = column(r, 0)?;
    let trust_domain = TrustDomain::new(&td).map_err(|e| {
        DataStoreError::Corrupt(format!("federation relationship {td:?}: trust domain: {e}"))
    })?;
    let opt_time = |i: usize| -> Result<Option<SystemTime>, DataStoreError> {
        column::<Option<i64>>(r, i)?.map(time_from_db).transpose()
    };
    Ok(FederationRecord {
        endpoint_url: column(r, 1)?,
        profile: profile_from_db(&column::<String>(r, 2)?, column(r, 3)?, column(r, 4)?, &td)?,
        created_at: time_from_db(column(r, 5)?)?,
        updated_at: time_from_db(column(r, 6)?)?,
        next_refresh_at: time_from_db(column(r, 7)?)?,
        last_attempt_at: opt_time(8)?,
        last_success_at: opt_time(9)?,
        last_error: column(r, 10)?,
        trust_domain,
    })
}

async fn set_bundle(tx: &Transaction<'_>, td: &str, json: &[u8]) -> Result<(), DataStoreError> {
    let sql = "INSERT INTO bundles (trust_domain, json) VALUES ($1, $2) \
               ON CONFLICT (trust_domain) DO UPDATE SET json = excluded.json";
    tx.execute(sql, &[&td, &json]).await.map_err(pg_error).map(drop)
}

fn not_found(td: &str) -> DataStoreError {
    DataStoreError::NotFound { kind: "federation relationship with", id: td.to_owned() }
}

pub(super) async fn get(
    tx: &Transaction<'_>,
    td: String,
) -> Result<Option<FederationRecord>, DataStoreError> {
    let sql = format!("SELECT {COLUMNS} FROM federations WHERE trust_domain = $1");
    let row = tx.query_opt(&sql, &[&td]).await.map_err(pg_error)?;
    row.as_ref().map(decode).transpose()
}

pub(super) async fn list(tx: &Transaction<'_>) -> Result<Vec<FederationRecord>, DataStoreError> {
    let sql = format!("SELECT {COLUMNS} FROM federations ORDER BY trust_domain");
    let rows = tx.query(&sql, &[]).await.map_err(pg_error)?;
    rows.iter().map(decode).collect()
}

pub(super) async fn create(
    tx: &Transaction<'_>,
    rec: FederationRecord,
    bootstrap: Option<Vec<u8>>,
) -> Result<(), DataStoreError> {
    let td = rec.trust_domain.to_string();
    let (profile, endpoint_id, ca_pem) = profile_columns(&rec.profile);
    let sql = format!(
        "INSERT INTO federations ({COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING"
    );
    let n = tx
        .execute(
            &sql,
            &[
                &td,
                &rec.endpoint_url,
                &profile,
                &endpoint_id,
                &ca_pem,
                &time_to_db(rec.created_at),
                &time_to_db(rec.updated_at),
                &time_to_db(rec.next_refresh_at),
                &rec.last_attempt_at.map(time_to_db),
                &rec.last_success_at.map(time_to_db),
                &rec.last_error,
            ],
        )
        .await
        .map_err(pg_error)?;
    if n == 0 {
        return Err(DataStoreError::AlreadyExists { kind: "federation relationship with", id: td });
    }
    if let Some(json) = bootstrap {
        set_bundle(tx, &td, &json).await?;
    }
    Ok(())
}

pub(super) async fn update(
    tx: &Transaction<'_>,
    rec: FederationRecord,
    bootstrap: Option<Vec<u8>>,
) -> Result<FederationRecord, DataStoreError> {
    let td = rec.trust_domain.to_string();
    let (profile, endpoint_id, ca_pem) = profile_columns(&rec.profile);
    let n = tx
        .execute(
            "UPDATE federations SET endpoint_url = $2, profile = $3, endpoint_spiffe_id = $4, \
             ca_pem = $5, updated_at = $6, next_refresh_at = $6 WHERE trust_domain = $1",
            &[&td, &rec.endpoint_url, &profile, &endpoint_id, &ca_pem, &time_to_db(rec.updated_at)],
        )
        .await
        .map_err(pg_error)?;
    if n == 0 {
        return Err(not_found(&td));
    }
    if let Some(json) = bootstrap {
        set_bundle(tx, &td, &json).await?;
    }
    get(tx, td.clone()).await?.ok_or_else(|| not_found(&td))
}

pub(super) async fn delete(
    tx: &Transaction<'_>,
    td: String,
) -> Result<FederationRecord, DataStoreError> {
    let rec = get(tx, td.clone()).await?.ok_or_else(|| not_found(&td))?;
    tx.execute("DELETE FROM federations WHERE trust_domain = $1", &[&td])
        .await
        .map_err(pg_error)?;
    tx.execute("DELETE FROM bundles WHERE trust_domain = $1", &[&td]).await.map_err(pg_error)?;
    Ok(rec)
}

pub(super) async fn claim(
    tx: &Transaction<'_>,
    td: String,
    seen: SystemTime,
    until: SystemTime,
) -> Result<bool, DataStoreError> {
    let n = tx
        .execute(
            "UPDATE federations SET next_refresh_at = $3 \
             WHERE trust_domain = $1 AND next_refresh_at = $2",
            &[&td, &time_to_db(seen), &time_to_db(until)],
        )
        .await
        .map_err(pg_error)?;
    Ok(n == 1)
}

pub(super) async fn record(
    tx: &Transaction<'_>,
    td: String,
    at: SystemTime,
    next: SystemTime,
    outcome: Outcome,
) -> Result<bool, DataStoreError> {
    let (success, error) = match &outcome {
        Ok(_) => (Some(time_to_db(at)), None),
        Err(why) => (None, Some(why.as_str())),
    };
    let n = tx
        .execute(
            "UPDATE federations SET next_refresh_at = $3, last_attempt_at = $2, \
             last_success_at = COALESCE($4, last_success_at), last_error = $5 \
             WHERE trust_domain = $1",
            &[&td, &time_to_db(at), &time_to_db(next), &success, &error],
        )
        .await
        .map_err(pg_error)?;
    if n == 0 {
        return Ok(false);
    }
    if let Ok(json) = &outcome {
        set_bundle(tx, &td, json).await?;
    }
    Ok(true)
}

pub(super) async fn list_bundles(
    tx: &Transaction<'_>,
) -> Result<Vec<(TrustDomain, Vec<u8>)>, DataStoreError> {
    let rows = tx
        .query("SELECT trust_domain, json FROM bundles ORDER BY trust_domain", &[])
        .await
        .map_err(pg_error)?;
    rows.iter()
        .map(|row| {
            let name: String = column(row, 0)?;
            let td = TrustDomain::new(&name).map_err(|e| {
                DataStoreError::Corrupt(format!("bundle of trust domain {name:?}: {e}"))
            })?;
            Ok((td, column(row, 1)?))
        })
        .collect()
}

pub(super) async fn delete_bundle(
    tx: &Transaction<'_>,
    td: String,
) -> Result<bool, DataStoreError> {
    let n = tx
        .execute("DELETE FROM bundles WHERE trust_domain = $1", &[&td])
        .await
        .map_err(pg_error)?;
    Ok(n == 1)
}

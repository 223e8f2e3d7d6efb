//! Agents and join tokens in PostgreSQL. A check and the write that depends on it (a
//! renewal's serial, a token's single use) read the row `FOR UPDATE`, so a second server
//! doing the same waits for the first to commit and then sees its write.

use std::time::SystemTime;

use keycard_workload_api::SpiffeId;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Transaction};

use super::{get, pg_error};
use crate::selector::SelectorSet;
use crate::server::datastore::codec::{
    page_after, page_token, spiffe_id_from_db, time_from_db, time_to_db,
};
use crate::server::datastore::{
    AgentRecord, DataStoreError, JoinTokenRecord, Page, PageRequest, TokenUse,
};

/// The columns every agent query reads, in the order [`decode_agent`] expects.
const AGENT_COLUMNS: &str = "id, attestation_type, selectors, svid_serial, svid_expires_at, \
                             banned, can_reattest, created_at, updated_at, previous_svid_serial";

fn decode_agent(row: &Row) -> Result<AgentRecord, DataStoreError> {
    let id: String = get(row, 0)?;
    let selectors: String = get(row, 2)?;
    let selectors: SelectorSet = serde_json::from_str(&selectors)
        .map_err(|e| DataStoreError::Corrupt(format!("selectors of agent {id}: {e}")))?;
    Ok(AgentRecord {
        id: spiffe_id_from_db(&id)?,
        attestation_type: get(row, 1)?,
        selectors,
        svid_serial: get(row, 3)?,
        previous_svid_serial: get(row, 9)?,
        svid_expires_at: time_from_db(get(row, 4)?)?,
        banned: get(row, 5)?,
        can_reattest: get(row, 6)?,
        created_at: time_from_db(get(row, 7)?)?,
        updated_at: time_from_db(get(row, 8)?)?,
    })
}

/// How many rows `table` holds; `table` is always one of ours, never input.
pub(super) async fn count(
    tx: &Transaction<'_>,
    table: &'static str,
) -> Result<u64, DataStoreError> {
    let row =
        tx.query_one(&format!("SELECT COUNT(*) FROM {table}"), &[]).await.map_err(pg_error)?;
    crate::server::datastore::codec::u64_from_db(get(&row, 0)?, "count")
}

pub(super) async fn upsert_agent(
    tx: &Transaction<'_>,
    a: &AgentRecord,
) -> Result<(), DataStoreError> {
    let selectors =
        serde_json::to_string(&a.selectors).map_err(|e| DataStoreError::Backend(e.to_string()))?;
    let sql = format!(
        "INSERT INTO agents ({AGENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (id) DO UPDATE SET attestation_type = excluded.attestation_type, \
         selectors = excluded.selectors, svid_serial = excluded.svid_serial, \
         svid_expires_at = excluded.svid_expires_at, banned = excluded.banned, \
         can_reattest = excluded.can_reattest, created_at = excluded.created_at, \
         updated_at = excluded.updated_at, \
         previous_svid_serial = excluded.previous_svid_serial"
    );
    let params: [&(dyn ToSql + Sync); 10] = [
        &a.id.to_string(),
        &a.attestation_type,
        &selectors,
        &a.svid_serial,
        &time_to_db(a.svid_expires_at),
        &a.banned,
        &a.can_reattest,
        &time_to_db(a.created_at),
        &time_to_db(a.updated_at),
        &a.previous_svid_serial,
    ];
    tx.execute(&sql, &params).await.map_err(pg_error)?;
    Ok(())
}

pub(super) async fn renew_agent_svid(
    tx: &Transaction<'_>,
    id: &SpiffeId,
    presented: &str,
    new_serial: &str,
    expires_at: SystemTime,
    now: SystemTime,
) -> Result<bool, DataStoreError> {
    let id = id.to_string();
    let sql = "SELECT svid_serial, previous_svid_serial FROM agents WHERE id = $1 FOR UPDATE";
    let Some(row) = tx.query_opt(sql, &[&id]).await.map_err(pg_error)? else {
        return Err(DataStoreError::NotFound { kind: "agent", id });
    };
    let current: String = get(&row, 0)?;
    let previous: Option<String> = get(&row, 1)?;
    if current != presented && previous.as_deref() != Some(presented) {
        return Ok(false);
    }
    tx.execute(
        "UPDATE agents SET svid_serial = $2, previous_svid_serial = $3, svid_expires_at = $4, \
         updated_at = $5 WHERE id = $1",
        &[&id, &new_serial, &presented, &time_to_db(expires_at), &time_to_db(now)],
    )
    .await
    .map_err(pg_error)?;
    Ok(true)
}

pub(super) async fn get_agent(
    tx: &Transaction<'_>,
    id: &SpiffeId,
) -> Result<Option<AgentRecord>, DataStoreError> {
    let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = $1");
    let row = tx.query_opt(&sql, &[&id.to_string()]).await.map_err(pg_error)?;
    row.as_ref().map(decode_agent).transpose()
}

pub(super) async fn list_agents(
    tx: &Transaction<'_>,
    page: &PageRequest,
) -> Result<Page<AgentRecord>, DataStoreError> {
    let size = page.effective_size() as usize;
    let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id > $1 ORDER BY id LIMIT $2");
    let limit = i64::try_from(size + 1).unwrap_or(i64::MAX);
    let rows = tx.query(&sql, &[&page_after(page)?, &limit]).await.map_err(pg_error)?;
    let more = rows.len() > size;
    let items = rows.iter().take(size).map(decode_agent).collect::<Result<Vec<_>, _>>()?;
    let next_token = match items.last() {
        Some(last) if more => Some(page_token(last.id.as_ref())),
        _ => None,
    };
    Ok(Page { items, next_token })
}

pub(super) async fn create_join_token(
    tx: &Transaction<'_>,
    t: &JoinTokenRecord,
) -> Result<(), DataStoreError> {
    let params: [&(dyn ToSql + Sync); 5] = [
        &&t.hash[..],
        &t.token_id,
        &t.agent_id.as_ref().map(SpiffeId::to_string),
        &time_to_db(t.expires_at),
        &t.used_at.map(time_to_db),
    ];
    let inserted = tx
        .execute(
            "INSERT INTO join_tokens (hash, token_id, agent_id, expires_at, used_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (hash) DO NOTHING",
            &params,
        )
        .await
        .map_err(pg_error)?;
    match inserted {
        0 => Err(DataStoreError::AlreadyExists { kind: "join token", id: t.token_id.clone() }),
        _ => Ok(()),
    }
}

pub(super) async fn use_join_token(
    tx: &Transaction<'_>,
    hash: &[u8; 32],
    now: SystemTime,
) -> Result<TokenUse, DataStoreError> {
    let key = &hash[..];
    let sql = "SELECT token_id, agent_id, expires_at, used_at FROM join_tokens \
               WHERE hash = $1 FOR UPDATE";
    let Some(row) = tx.query_opt(sql, &[&key]).await.map_err(pg_error)? else {
        return Ok(TokenUse::Unknown);
    };
    let token_id: String = get(&row, 0)?;
    let agent_id: Option<String> = get(&row, 1)?;
    let expires_at: i64 = get(&row, 2)?;
    let used_at: Option<i64> = get(&row, 3)?;
    if used_at.is_some() {
        return Ok(TokenUse::AlreadyUsed);
    }
    let now_db = time_to_db(now);
    if expires_at <= now_db {
        return Ok(TokenUse::Expired);
    }
    tx.execute("UPDATE join_tokens SET used_at = $2 WHERE hash = $1", &[&key, &now_db])
        .await
        .map_err(pg_error)?;
    Ok(TokenUse::Accepted(JoinTokenRecord {
        hash: *hash,
        token_id,
        agent_id: agent_id.as_deref().map(spiffe_id_from_db).transpose()?,
        expires_at: time_from_db(expires_at)?,
        used_at: Some(time_from_db(now_db)?),
    }))
}

//! Agents and join tokens in SQLite (bundles and the journal are single statements and live
//! in the trait implementation).

use std::time::SystemTime;

use keycard_workload_api::SpiffeId;
use rusqlite::{Connection, ErrorCode, OptionalExtension as _, Row, Transaction, params};

use super::{page_after, page_token, spiffe_id_from_db, time_from_db, time_to_db, u64_from_db};
use crate::selector::SelectorSet;
use crate::server::datastore::{
    AgentRecord, DataStoreError, JoinTokenRecord, Page, PageRequest, TokenUse,
};

/// How many rows `table` holds; `table` is always one of ours, never input.
pub(super) fn count(tx: &Connection, table: &'static str) -> Result<u64, DataStoreError> {
    let n: i64 = tx.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?;
    u64_from_db(n, "count")
}

/// The columns every agent query reads, in the order [`RawAgent::from_row`] expects.
const AGENT_COLUMNS: &str = "id, attestation_type, selectors, svid_serial, svid_expires_at, \
                             banned, can_reattest, created_at, updated_at, previous_svid_serial";

/// An agent row as SQLite returns it, before the values are checked.
struct RawAgent {
    id: String,
    attestation_type: String,
    selectors: String,
    svid_serial: String,
    svid_expires_at: i64,
    banned: bool,
    can_reattest: bool,
    created_at: i64,
    updated_at: i64,
    previous_svid_serial: Option<String>,
}

impl RawAgent {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            attestation_type: r.get(1)?,
            selectors: r.get(2)?,
            svid_serial: r.get(3)?,
            svid_expires_at: r.get(4)?,
            banned: r.get(5)?,
            can_reattest: r.get(6)?,
            created_at: r.get(7)?,
            updated_at: r.get(8)?,
            previous_svid_serial: r.get(9)?,
        })
    }

    fn decode(self) -> Result<AgentRecord, DataStoreError> {
        let selectors: SelectorSet = serde_json::from_str(&self.selectors)
            .map_err(|e| DataStoreError::Corrupt(format!("selectors of agent {}: {e}", self.id)))?;
        Ok(AgentRecord {
            id: spiffe_id_from_db(&self.id)?,
            attestation_type: self.attestation_type,
            selectors,
            svid_serial: self.svid_serial,
            previous_svid_serial: self.previous_svid_serial,
            svid_expires_at: time_from_db(self.svid_expires_at)?,
            banned: self.banned,
            can_reattest: self.can_reattest,
            created_at: time_from_db(self.created_at)?,
            updated_at: time_from_db(self.updated_at)?,
        })
    }
}

pub(super) fn upsert_agent(tx: &Transaction<'_>, a: &AgentRecord) -> Result<(), DataStoreError> {
    let selectors =
        serde_json::to_string(&a.selectors).map_err(|e| DataStoreError::Backend(e.to_string()))?;
    tx.execute(
        &format!(
            "INSERT INTO agents ({AGENT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
             ON CONFLICT (id) DO UPDATE SET attestation_type = excluded.attestation_type, \
             selectors = excluded.selectors, svid_serial = excluded.svid_serial, \
             svid_expires_at = excluded.svid_expires_at, banned = excluded.banned, \
             can_reattest = excluded.can_reattest, created_at = excluded.created_at, \
             updated_at = excluded.updated_at, \
             previous_svid_serial = excluded.previous_svid_serial"
        ),
        params![
            a.id.to_string(),
            a.attestation_type,
            selectors,
            a.svid_serial,
            time_to_db(a.svid_expires_at),
            a.banned,
            a.can_reattest,
            time_to_db(a.created_at),
            time_to_db(a.updated_at),
            a.previous_svid_serial,
        ],
    )?;
    Ok(())
}

pub(super) fn renew_agent_svid(
    tx: &Transaction<'_>,
    id: &SpiffeId,
    presented: &str,
    new_serial: &str,
    expires_at: SystemTime,
    now: SystemTime,
) -> Result<bool, DataStoreError> {
    let sql = "SELECT svid_serial, previous_svid_serial FROM agents WHERE id = ?1";
    let row: Option<(String, Option<String>)> =
        tx.query_row(sql, [id.to_string()], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
    let Some((current, previous)) = row else {
        return Err(DataStoreError::NotFound { kind: "agent", id: id.to_string() });
    };
    if current != presented && previous.as_deref() != Some(presented) {
        return Ok(false);
    }
    tx.execute(
        "UPDATE agents SET svid_serial = ?2, previous_svid_serial = ?3, svid_expires_at = ?4, \
         updated_at = ?5 WHERE id = ?1",
        params![id.to_string(), new_serial, presented, time_to_db(expires_at), time_to_db(now)],
    )?;
    Ok(true)
}

pub(super) fn confirm_agent_svid(
    tx: &Transaction<'_>,
    id: &SpiffeId,
    serial: &str,
) -> Result<bool, DataStoreError> {
    let changed = tx.execute(
        "UPDATE agents SET previous_svid_serial = NULL \
         WHERE id = ?1 AND svid_serial = ?2 AND previous_svid_serial IS NOT NULL",
        params![id.to_string(), serial],
    )?;
    Ok(changed > 0)
}

pub(super) fn get_agent(
    tx: &Connection,
    id: &SpiffeId,
) -> Result<Option<AgentRecord>, DataStoreError> {
    let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = ?1");
    let raw =
        tx.prepare_cached(&sql)?.query_row([id.to_string()], RawAgent::from_row).optional()?;
    raw.map(RawAgent::decode).transpose()
}

pub(super) fn list_agents(
    tx: &Connection,
    page: &PageRequest,
) -> Result<Page<AgentRecord>, DataStoreError> {
    let size = page.effective_size() as usize;
    let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id > ?1 ORDER BY id LIMIT ?2");
    let mut stmt = tx.prepare_cached(&sql)?;
    let limit = i64::try_from(size + 1).unwrap_or(i64::MAX);
    let raws = stmt.query_map(params![page_after(page)?, limit], RawAgent::from_row)?;
    let mut items = Vec::with_capacity(size);
    let mut more = false;
    for raw in raws {
        if items.len() == size {
            more = true;
            break;
        }
        items.push(raw?.decode()?);
    }
    let next_token = match items.last() {
        Some(last) if more => Some(page_token(last.id.as_ref())),
        _ => None,
    };
    Ok(Page { items, next_token })
}

pub(super) fn create_join_token(
    tx: &Transaction<'_>,
    t: &JoinTokenRecord,
) -> Result<(), DataStoreError> {
    let inserted = tx.execute(
        "INSERT INTO join_tokens (hash, token_id, agent_id, expires_at, used_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            &t.hash[..],
            t.token_id,
            t.agent_id.as_ref().map(SpiffeId::to_string),
            time_to_db(t.expires_at),
            t.used_at.map(time_to_db),
        ],
    );
    match inserted {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == ErrorCode::ConstraintViolation => {
            Err(DataStoreError::AlreadyExists { kind: "join token", id: t.token_id.clone() })
        }
        Err(e) => Err(e.into()),
    }
}

/// A join token row: token ID, agent ID, expiry, use.
type RawToken = (String, Option<String>, i64, Option<i64>);

pub(super) fn use_join_token(
    tx: &Transaction<'_>,
    hash: &[u8; 32],
    now: SystemTime,
) -> Result<TokenUse, DataStoreError> {
    let sql = "SELECT token_id, agent_id, expires_at, used_at FROM join_tokens WHERE hash = ?1";
    let row: Option<RawToken> = tx
        .query_row(sql, [&hash[..]], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .optional()?;
    let Some((token_id, agent_id, expires_at, used_at)) = row else {
        return Ok(TokenUse::Unknown);
    };
    if used_at.is_some() {
        return Ok(TokenUse::AlreadyUsed);
    }
    let now_db = time_to_db(now);
    if expires_at <= now_db {
        return Ok(TokenUse::Expired);
    }
    tx.execute("UPDATE join_tokens SET used_at = ?2 WHERE hash = ?1", params![&hash[..], now_db])?;
    Ok(TokenUse::Accepted(JoinTokenRecord {
        hash: *hash,
        token_id,
        agent_id: agent_id.as_deref().map(spiffe_id_from_db).transpose()?,
        expires_at: time_from_db(expires_at)?,
        used_at: Some(time_from_db(now_db)?),
    }))
}

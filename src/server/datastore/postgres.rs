//! The PostgreSQL datastore, for HA: several servers share one database.
//!
//! Open it with a URL: `postgres://USER@HOST:PORT/DATABASE`, or for a Unix socket
//! `postgres://USER@/DATABASE?host=/socket/dir`. The connection is not encrypted (no TLS;
//! `sslmode=require` is refused): use a Unix socket, loopback or a private network.
//!
//! Every method is one transaction. Writes run at PostgreSQL's default isolation (read
//! committed) and lock what their checks depend on (the revision counter for entries, the
//! row `FOR UPDATE` for a renewal or a join token), so two servers cannot both pass a
//! check that only one may pass. Reads run in a read-only repeatable-read transaction:
//! one snapshot, so a revision and the rows it covers agree. Values are encoded as
//! `codec.rs` says (times as integer milliseconds since the epoch); the schema is
//! versioned (see `postgres/schema.rs`); connections, threads and time limits are in
//! `postgres/pool.rs`.

use std::time::SystemTime;

use keycard_workload_api::{SpiffeId, TrustDomain};
use tokio_postgres::Row;
use tokio_postgres::config::SslMode;
use tokio_postgres::types::FromSql;

use super::codec::{time_from_db, time_to_db};
use super::{
    AgentRecord, AuthorityMark, DataStore, DataStoreError, EntryChanges, EntryFilter,
    FederationRecord, JoinTokenRecord, Page, PageRequest, RefreshOutcome, ServerRecord, TokenUse,
};
use crate::server::entry::{Entry, EntrySpec};

mod entries;
mod federation;
mod pool;
mod records;
mod schema;
mod testdb;

pub use pool::Limits;
use pool::{Pool, describe};
pub use testdb::TestDatabase;

/// The PostgreSQL datastore; see the module documentation.
#[derive(Debug)]
pub struct PostgresDataStore {
    pool: Pool,
}

/// A failed statement or connection, as a backend failure naming what PostgreSQL said.
fn pg_error(e: tokio_postgres::Error) -> DataStoreError {
    DataStoreError::Backend(format!("PostgreSQL: {}", describe(&e)))
}

/// Column `idx` of `row`; a value of the wrong type means the row is corrupt.
fn get<'a, T: FromSql<'a>>(row: &'a Row, idx: usize) -> Result<T, DataStoreError> {
    row.try_get(idx).map_err(|e| DataStoreError::Corrupt(format!("column {idx}: {e}")))
}

/// `url` with any password replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let mut shown = url.to_owned();
    if let Some(scheme_end) = shown.find("://") {
        let rest = &shown[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            let (start, end) = (scheme_end + 3 + colon + 1, scheme_end + 3 + at);
            shown.replace_range(start..end, "***");
        }
    }
    if let Some(query) = shown.find('?') {
        let (head, params) = shown.split_at(query + 1);
        let params: Vec<String> = params
            .split('&')
            .map(|p| if p.starts_with("password=") { "password=***".into() } else { p.into() })
            .collect();
        shown = format!("{head}{}", params.join("&"));
    }
    shown
}

impl PostgresDataStore {
    /// Connects to the database at `url` (see the module documentation for its form) and
    /// brings its schema up to date, with the default [`Limits`].
    pub fn open(url: &str) -> Result<Self, DataStoreError> {
        Self::open_with(url, Limits::default())
    }

    /// [`open`](Self::open) with other time limits or another number of connections.
    pub fn open_with(url: &str, limits: Limits) -> Result<Self, DataStoreError> {
        let shown = redact_url(url);
        let config: tokio_postgres::Config = url.parse().map_err(|e| {
            DataStoreError::Backend(format!(
                "invalid PostgreSQL URL {shown}: {e}; write it as \
                 postgres://USER@HOST:PORT/DATABASE or postgres://USER@/DATABASE?host=/socket/dir"
            ))
        })?;
        if config.get_ssl_mode() == SslMode::Require {
            return Err(DataStoreError::Backend(format!(
                "PostgreSQL URL {shown} asks for TLS (sslmode=require), which keycard does not \
                 support; connect over a Unix socket, loopback or a private network and drop \
                 sslmode"
            )));
        }
        let pool = Pool::new(config, shown, limits)?;
        let shown = pool.shown().to_owned();
        pool.call(move |client| Box::pin(async move { schema::migrate(client, &shown).await }))?;
        Ok(Self { pool })
    }
}

impl DataStore for PostgresDataStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn create_entry(&self, spec: &EntrySpec, now: SystemTime) -> Result<Entry, DataStoreError> {
        let spec = spec.clone();
        self.pool.write(move |tx| Box::pin(async move { entries::create(tx, &spec, now).await }))
    }

    fn create_entries(
        &self,
        specs: &[EntrySpec],
        now: SystemTime,
    ) -> Result<Vec<Entry>, DataStoreError> {
        let specs = specs.to_vec();
        self.pool
            .write(move |tx| Box::pin(async move { entries::create_all(tx, &specs, now).await }))
    }

    fn delete_entries(&self, ids: &[String]) -> Result<Vec<Entry>, DataStoreError> {
        let ids = ids.to_vec();
        self.pool.write(move |tx| Box::pin(async move { entries::delete_all(tx, &ids).await }))
    }

    fn get_entry(&self, id: &str) -> Result<Option<Entry>, DataStoreError> {
        let id = id.to_owned();
        self.pool.read(move |tx| Box::pin(async move { entries::get_entry(tx, &id).await }))
    }

    fn update_entry(
        &self,
        id: &str,
        spec: &EntrySpec,
        now: SystemTime,
    ) -> Result<Entry, DataStoreError> {
        let (id, spec) = (id.to_owned(), spec.clone());
        self.pool
            .write(move |tx| Box::pin(async move { entries::update(tx, &id, &spec, now).await }))
    }

    fn delete_entry(&self, id: &str) -> Result<Entry, DataStoreError> {
        let id = id.to_owned();
        self.pool.write(move |tx| Box::pin(async move { entries::delete(tx, &id).await }))
    }

    fn list_entries(
        &self,
        filter: &EntryFilter,
        page: &PageRequest,
    ) -> Result<Page<Entry>, DataStoreError> {
        let (filter, page) = (filter.clone(), page.clone());
        self.pool.read(move |tx| Box::pin(async move { entries::list(tx, &filter, &page).await }))
    }

    fn count_entries(&self) -> Result<u64, DataStoreError> {
        self.pool.read(|tx| Box::pin(records::count(tx, "entries")))
    }

    fn entry_with_spiffe_id_exists(&self, id: &SpiffeId) -> Result<bool, DataStoreError> {
        let id = id.to_string();
        self.pool.read(move |tx| {
            Box::pin(async move {
                let sql = "SELECT EXISTS (SELECT 1 FROM entries WHERE spiffe_id = $1)";
                get(&tx.query_one(sql, &[&id]).await.map_err(pg_error)?, 0)
            })
        })
    }

    fn entry_changes_since(
        &self,
        revision: u64,
        limit: u32,
    ) -> Result<EntryChanges, DataStoreError> {
        self.pool.read(move |tx| Box::pin(entries::changes_since(tx, revision, limit)))
    }

    fn upsert_agent(&self, agent: &AgentRecord) -> Result<(), DataStoreError> {
        let agent = agent.clone();
        self.pool.write(move |tx| Box::pin(async move { records::upsert_agent(tx, &agent).await }))
    }

    fn get_agent(&self, id: &SpiffeId) -> Result<Option<AgentRecord>, DataStoreError> {
        let id = id.clone();
        self.pool.read(move |tx| Box::pin(async move { records::get_agent(tx, &id).await }))
    }

    fn list_agents(&self, page: &PageRequest) -> Result<Page<AgentRecord>, DataStoreError> {
        let page = page.clone();
        self.pool.read(move |tx| Box::pin(async move { records::list_agents(tx, &page).await }))
    }

    fn count_agents(&self) -> Result<u64, DataStoreError> {
        self.pool.read(|tx| Box::pin(records::count(tx, "agents")))
    }

    fn delete_agent(&self, id: &SpiffeId) -> Result<bool, DataStoreError> {
        let id = id.to_string();
        self.pool.write(move |tx| {
            Box::pin(async move {
                let n = tx
                    .execute("DELETE FROM agents WHERE id = $1", &[&id])
                    .await
                    .map_err(pg_error)?;
                Ok(n > 0)
            })
        })
    }

    fn renew_agent_svid(
        &self,
        id: &SpiffeId,
        presented: &str,
        new_serial: &str,
        expires_at: SystemTime,
        now: SystemTime,
    ) -> Result<bool, DataStoreError> {
        let (id, presented, new_serial) = (id.clone(), presented.to_owned(), new_serial.to_owned());
        self.pool.write(move |tx| {
            Box::pin(async move {
                records::renew_agent_svid(tx, &id, &presented, &new_serial, expires_at, now).await
            })
        })
    }

    fn confirm_agent_svid(&self, id: &SpiffeId, serial: &str) -> Result<bool, DataStoreError> {
        let (id, serial) = (id.to_string(), serial.to_owned());
        self.pool.write(move |tx| {
            Box::pin(async move {
                let n = tx
                    .execute(
                        "UPDATE agents SET previous_svid_serial = NULL WHERE id = $1 \
                         AND svid_serial = $2 AND previous_svid_serial IS NOT NULL",
                        &[&id, &serial],
                    )
                    .await
                    .map_err(pg_error)?;
                Ok(n > 0)
            })
        })
    }

    fn set_agent_banned(&self, id: &SpiffeId, banned: bool) -> Result<(), DataStoreError> {
        let id = id.to_string();
        self.pool.write(move |tx| {
            Box::pin(async move {
                let sql = "UPDATE agents SET banned = $2 WHERE id = $1";
                match tx.execute(sql, &[&id, &banned]).await.map_err(pg_error)? {
                    0 => Err(DataStoreError::NotFound { kind: "agent", id }),
                    _ => Ok(()),
                }
            })
        })
    }

    fn create_join_token(&self, token: &JoinTokenRecord) -> Result<(), DataStoreError> {
        let token = token.clone();
        self.pool
            .write(move |tx| Box::pin(async move { records::create_join_token(tx, &token).await }))
    }

    fn use_join_token(&self, hash: &[u8; 32], now: SystemTime) -> Result<TokenUse, DataStoreError> {
        let hash = *hash;
        self.pool
            .write(move |tx| Box::pin(async move { records::use_join_token(tx, &hash, now).await }))
    }

    fn join_token_reserves(
        &self,
        agent_id: &SpiffeId,
        now: SystemTime,
    ) -> Result<bool, DataStoreError> {
        let (id, now) = (agent_id.to_string(), time_to_db(now));
        self.pool.read(move |tx| {
            Box::pin(async move {
                let sql = "SELECT EXISTS (SELECT 1 FROM join_tokens \
                           WHERE agent_id = $1 AND expires_at > $2)";
                get(&tx.query_one(sql, &[&id, &now]).await.map_err(pg_error)?, 0)
            })
        })
    }

    fn prune_join_tokens(&self, before: SystemTime) -> Result<u64, DataStoreError> {
        let before = time_to_db(before);
        self.pool.write(move |tx| {
            Box::pin(async move {
                let sql = "DELETE FROM join_tokens WHERE expires_at < $1";
                tx.execute(sql, &[&before]).await.map_err(pg_error)
            })
        })
    }

    fn get_bundle(&self, trust_domain: &TrustDomain) -> Result<Option<Vec<u8>>, DataStoreError> {
        let td = trust_domain.to_string();
        self.pool.read(move |tx| {
            Box::pin(async move {
                let sql = "SELECT json FROM bundles WHERE trust_domain = $1";
                let row = tx.query_opt(sql, &[&td]).await.map_err(pg_error)?;
                row.map(|r| get(&r, 0)).transpose()
            })
        })
    }

    fn set_bundle(&self, trust_domain: &TrustDomain, json: &[u8]) -> Result<(), DataStoreError> {
        let (td, json) = (trust_domain.to_string(), json.to_vec());
        self.pool.write(move |tx| {
            Box::pin(async move {
                let sql = "INSERT INTO bundles (trust_domain, json) VALUES ($1, $2) \
                           ON CONFLICT (trust_domain) DO UPDATE SET json = excluded.json";
                tx.execute(sql, &[&td, &json]).await.map_err(pg_error).map(drop)
            })
        })
    }

    fn list_bundles(&self) -> Result<Vec<(TrustDomain, Vec<u8>)>, DataStoreError> {
        self.pool.read(|tx| Box::pin(federation::list_bundles(tx)))
    }

    fn delete_bundle(&self, trust_domain: &TrustDomain) -> Result<bool, DataStoreError> {
        let td = trust_domain.to_string();
        self.pool.write(move |tx| Box::pin(federation::delete_bundle(tx, td)))
    }

    fn create_federation(
        &self,
        record: &FederationRecord,
        bootstrap: Option<&[u8]>,
    ) -> Result<(), DataStoreError> {
        let (record, bootstrap) = (record.clone(), bootstrap.map(<[u8]>::to_vec));
        self.pool.write(move |tx| Box::pin(federation::create(tx, record, bootstrap)))
    }

    fn update_federation(
        &self,
        record: &FederationRecord,
        bootstrap: Option<&[u8]>,
    ) -> Result<FederationRecord, DataStoreError> {
        let (record, bootstrap) = (record.clone(), bootstrap.map(<[u8]>::to_vec));
        self.pool.write(move |tx| Box::pin(federation::update(tx, record, bootstrap)))
    }

    fn get_federation(
        &self,
        trust_domain: &TrustDomain,
    ) -> Result<Option<FederationRecord>, DataStoreError> {
        let td = trust_domain.to_string();
        self.pool.read(move |tx| Box::pin(federation::get(tx, td)))
    }

    fn list_federations(&self) -> Result<Vec<FederationRecord>, DataStoreError> {
        self.pool.read(|tx| Box::pin(federation::list(tx)))
    }

    fn delete_federation(
        &self,
        trust_domain: &TrustDomain,
    ) -> Result<FederationRecord, DataStoreError> {
        let td = trust_domain.to_string();
        self.pool.write(move |tx| Box::pin(federation::delete(tx, td)))
    }

    fn claim_federation_refresh(
        &self,
        trust_domain: &TrustDomain,
        seen: SystemTime,
        until: SystemTime,
    ) -> Result<bool, DataStoreError> {
        let td = trust_domain.to_string();
        self.pool.write(move |tx| Box::pin(federation::claim(tx, td, seen, until)))
    }

    fn record_federation_refresh(
        &self,
        trust_domain: &TrustDomain,
        at: SystemTime,
        next_refresh_at: SystemTime,
        outcome: RefreshOutcome<'_>,
    ) -> Result<bool, DataStoreError> {
        let td = trust_domain.to_string();
        let outcome = match outcome {
            RefreshOutcome::Fetched(json) => Ok(json.to_vec()),
            RefreshOutcome::Failed(why) => Err(why.to_owned()),
        };
        self.pool
            .write(move |tx| Box::pin(federation::record(tx, td, at, next_refresh_at, outcome)))
    }

    fn load_journal(&self, server_id: &str) -> Result<Option<Vec<u8>>, DataStoreError> {
        const SQL: &str = "SELECT bytes FROM server_journals WHERE server_id = $1";
        let id = server_id.to_owned();
        let found = self.pool.read(move |tx| {
            Box::pin(async move {
                let row = tx.query_opt(SQL, &[&id]).await.map_err(pg_error)?;
                row.map(|r| get(&r, 0)).transpose()
            })
        })?;
        if found.is_some() || server_id.is_empty() {
            return Ok(found);
        }
        // None of its own: claim a journal without a server ID, if there is one (a
        // PostgreSQL store never writes one itself; this keeps the trait's promise for a
        // database filled by hand or by a future import).
        let id = server_id.to_owned();
        self.pool.write(move |tx| {
            Box::pin(async move {
                tx.execute(
                    "UPDATE server_journals SET server_id = $1 WHERE server_id = '' \
                     AND NOT EXISTS (SELECT 1 FROM server_journals WHERE server_id = $1)",
                    &[&id],
                )
                .await
                .map_err(pg_error)?;
                let row = tx.query_opt(SQL, &[&id]).await.map_err(pg_error)?;
                row.map(|r| get(&r, 0)).transpose()
            })
        })
    }

    fn save_journal(&self, server_id: &str, bytes: &[u8]) -> Result<(), DataStoreError> {
        let (id, bytes) = (server_id.to_owned(), bytes.to_vec());
        self.pool.write(move |tx| {
            Box::pin(async move {
                let sql = "INSERT INTO server_journals (server_id, bytes) VALUES ($1, $2) \
                           ON CONFLICT (server_id) DO UPDATE SET bytes = excluded.bytes";
                tx.execute(sql, &[&id, &bytes]).await.map_err(pg_error).map(drop)
            })
        })
    }

    fn list_journals(&self) -> Result<Vec<(String, Vec<u8>)>, DataStoreError> {
        self.pool.read(|tx| {
            Box::pin(async move {
                let sql = "SELECT server_id, bytes FROM server_journals ORDER BY server_id";
                let rows = tx.query(sql, &[]).await.map_err(pg_error)?;
                rows.iter().map(|r| Ok((get(r, 0)?, get(r, 1)?))).collect()
            })
        })
    }

    fn set_authority_mark(
        &self,
        authority_id: &str,
        mark: AuthorityMark,
    ) -> Result<(), DataStoreError> {
        let id = authority_id.to_owned();
        self.pool.write(move |tx| {
            Box::pin(async move {
                let sql = "INSERT INTO authority_marks (authority_id, mark) VALUES ($1, $2) \
                           ON CONFLICT (authority_id) DO UPDATE SET mark = excluded.mark \
                           WHERE authority_marks.mark <> 'revoked'";
                tx.execute(sql, &[&id, &mark.as_str()]).await.map_err(pg_error).map(drop)
            })
        })
    }

    fn authority_marks(&self) -> Result<Vec<(String, AuthorityMark)>, DataStoreError> {
        self.pool.read(|tx| {
            Box::pin(async move {
                let sql = "SELECT authority_id, mark FROM authority_marks ORDER BY authority_id";
                let mut marks = Vec::new();
                for row in tx.query(sql, &[]).await.map_err(pg_error)? {
                    let mark: String = get(&row, 1)?;
                    let mark = AuthorityMark::parse(&mark).ok_or_else(|| {
                        DataStoreError::Corrupt(format!("authority mark {mark:?}"))
                    })?;
                    marks.push((get(&row, 0)?, mark));
                }
                Ok(marks)
            })
        })
    }

    fn announce_server(&self, server: &ServerRecord) -> Result<(), DataStoreError> {
        let server = server.clone();
        self.pool.write(move |tx| {
            Box::pin(async move {
                let sql = "INSERT INTO servers (id, address, last_seen) VALUES ($1, $2, $3) \
                           ON CONFLICT (id) DO UPDATE SET address = excluded.address, \
                           last_seen = excluded.last_seen";
                let seen = time_to_db(server.last_seen);
                tx.execute(sql, &[&server.id, &server.address, &seen])
                    .await
                    .map_err(pg_error)
                    .map(drop)
            })
        })
    }

    fn list_servers(&self) -> Result<Vec<ServerRecord>, DataStoreError> {
        self.pool.read(|tx| {
            Box::pin(async move {
                let sql = "SELECT id, address, last_seen FROM servers ORDER BY id";
                let mut servers = Vec::new();
                for row in tx.query(sql, &[]).await.map_err(pg_error)? {
                    servers.push(ServerRecord {
                        id: get(&row, 0)?,
                        address: get(&row, 1)?,
                        last_seen: time_from_db(get(&row, 2)?)?,
                    });
                }
                Ok(servers)
            })
        })
    }

    fn ping(&self) -> Result<(), DataStoreError> {
        self.pool.call(|client| {
            Box::pin(
                async move { client.simple_query("SELECT 1").await.map_err(pg_error).map(drop) },
            )
        })
    }
}

#[cfg(test)]
mod tests;

//! A [`DataStore`] that times every call and counts failures, per operation, in the
//! server's metrics (`keycard_server_datastore_latency_seconds`,
//! `keycard_server_datastore_errors_total`), whichever store is underneath.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use keycard_workload_api::{SpiffeId, TrustDomain};

use super::{
    AgentRecord, AuthorityMark, DataStore, DataStoreError, EntryChanges, EntryFilter,
    FederationRecord, JoinTokenRecord, Page, PageRequest, RefreshOutcome, ServerRecord, TokenUse,
};
use crate::server::entry::{Entry, EntrySpec};
use crate::telemetry::ServerMetrics;
use crate::telemetry::metrics::DatastoreLabels;

/// See the module documentation.
#[derive(Debug)]
pub struct MeteredDataStore {
    inner: Arc<dyn DataStore>,
    metrics: Arc<ServerMetrics>,
}

impl MeteredDataStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn DataStore>, metrics: Arc<ServerMetrics>) -> Self {
        Self { inner, metrics }
    }

    fn timed<T>(
        &self,
        op: &'static str,
        call: impl FnOnce(&dyn DataStore) -> Result<T, DataStoreError>,
    ) -> Result<T, DataStoreError> {
        let started = Instant::now();
        let result = call(self.inner.as_ref());
        let labels = DatastoreLabels { op };
        self.metrics
            .datastore_latency
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        if let Err(DataStoreError::Backend(_) | DataStoreError::Corrupt(_)) = &result {
            self.metrics.datastore_errors.get_or_create(&labels).inc();
        }
        result
    }
}

/// Forwards each listed method to the inner store through [`MeteredDataStore::timed`],
/// labelled with the method's name.
macro_rules! forward {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        $(
            fn $name(&self, $($arg: $ty),*) -> Result<$ret, DataStoreError> {
                self.timed(stringify!($name), |s| s.$name($($arg),*))
            }
        )*
    };
}

impl DataStore for MeteredDataStore {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    // Not timed: it runs on async threads each time a poller looks, and takes microseconds.
    fn change_mark(&self) -> Option<u64> {
        self.inner.change_mark()
    }

    forward! {
        create_entry(spec: &EntrySpec, now: SystemTime) -> Entry;
        create_entries(specs: &[EntrySpec], now: SystemTime) -> Vec<Entry>;
        delete_entries(ids: &[String]) -> Vec<Entry>;
        get_entry(id: &str) -> Option<Entry>;
        update_entry(id: &str, spec: &EntrySpec, now: SystemTime) -> Entry;
        delete_entry(id: &str) -> Entry;
        list_entries(filter: &EntryFilter, page: &PageRequest) -> Page<Entry>;
        count_entries() -> u64;
        entry_with_spiffe_id_exists(id: &SpiffeId) -> bool;
        entry_changes_since(revision: u64, limit: u32) -> EntryChanges;
        upsert_agent(agent: &AgentRecord) -> ();
        get_agent(id: &SpiffeId) -> Option<AgentRecord>;
        list_agents(page: &PageRequest) -> Page<AgentRecord>;
        count_agents() -> u64;
        delete_agent(id: &SpiffeId) -> bool;
        renew_agent_svid(
            id: &SpiffeId,
            presented: &str,
            new_serial: &str,
            expires_at: SystemTime,
            now: SystemTime
        ) -> bool;
        confirm_agent_svid(id: &SpiffeId, serial: &str) -> bool;
        set_agent_banned(id: &SpiffeId, banned: bool) -> ();
        create_join_token(token: &JoinTokenRecord) -> ();
        use_join_token(hash: &[u8; 32], now: SystemTime) -> TokenUse;
        join_token_reserves(agent_id: &SpiffeId, now: SystemTime) -> bool;
        prune_join_tokens(before: SystemTime) -> u64;
        get_bundle(trust_domain: &TrustDomain) -> Option<Vec<u8>>;
        set_bundle(trust_domain: &TrustDomain, json: &[u8]) -> ();
        list_bundles() -> Vec<(TrustDomain, Vec<u8>)>;
        delete_bundle(trust_domain: &TrustDomain) -> bool;
        create_federation(record: &FederationRecord, bootstrap: Option<&[u8]>) -> ();
        update_federation(record: &FederationRecord, bootstrap: Option<&[u8]>) -> FederationRecord;
        get_federation(trust_domain: &TrustDomain) -> Option<FederationRecord>;
        list_federations() -> Vec<FederationRecord>;
        delete_federation(trust_domain: &TrustDomain) -> FederationRecord;
        claim_federation_refresh(trust_domain: &TrustDomain, seen: SystemTime, until: SystemTime) -> bool;
        record_federation_refresh(trust_domain: &TrustDomain, at: SystemTime, next_refresh_at: SystemTime, outcome: RefreshOutcome<'_>) -> bool;
        load_journal(server_id: &str) -> Option<Vec<u8>>;
        save_journal(server_id: &str, bytes: &[u8]) -> ();
        list_journals() -> Vec<(String, Vec<u8>)>;
        set_authority_mark(authority_id: &str, mark: AuthorityMark) -> ();
        authority_marks() -> Vec<(String, AuthorityMark)>;
        announce_server(server: &ServerRecord) -> ();
        list_servers() -> Vec<ServerRecord>;
        ping() -> ();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::datastore::SqliteDataStore;

    #[test]
    fn every_call_is_timed_and_failures_are_counted_by_operation() {
        let metrics = Arc::new(ServerMetrics::new());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keycard.db");
        let inner = Arc::new(SqliteDataStore::open(&path).unwrap());
        let store = MeteredDataStore::new(inner, metrics.clone());
        assert_eq!(store.kind(), "sqlite");
        store.ping().unwrap();
        assert_eq!(store.count_entries().unwrap(), 0);
        // An answer such as "no such entry" is not a failure.
        assert!(store.get_entry("missing").unwrap().is_none());
        store.save_journal("s1", b"{}").unwrap();
        let text = metrics.render();
        for op in ["ping", "count_entries", "get_entry", "save_journal"] {
            let line = format!("keycard_server_datastore_latency_seconds_count{{op=\"{op}\"}} 1");
            assert!(text.contains(&line), "{line} missing from\n{text}");
        }
        assert!(!text.contains("keycard_server_datastore_errors_total{"), "{text}");
        // A row edited by hand into something unreadable: a failure of that operation.
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch(
                "INSERT INTO entries VALUES ('bad', 'not an id', 'not an id', '[]', NULL, NULL,
                     '[]', '', 0, 99, 0, 0, 'none', '[]');",
            )
            .unwrap();
        let e = store.get_entry("bad").unwrap_err();
        assert!(matches!(e, DataStoreError::Corrupt(_)), "{e:?}");
        let text = metrics.render();
        assert!(
            text.contains("keycard_server_datastore_errors_total{op=\"get_entry\"} 1"),
            "{text}"
        );
    }
}

//! The CA's authority journal kept in the datastore, one per server: servers sharing one
//! database (HA) each keep their own authorities (their keys are on their own disks) and
//! see each other's, and a single server has one file to back up.

use std::sync::Arc;

use super::{DataStore, DataStoreError};
use crate::ca::journal::{Journal, JournalError, JournalStore};

/// What journal errors name as the journal's location.
const WHERE: &str = "datastore";

/// A [`JournalStore`] that saves one server's journal, as JSON, in a [`DataStore`].
#[derive(Debug, Clone)]
pub struct DataStoreJournal {
    store: Arc<dyn DataStore>,
    server_id: String,
}

impl DataStoreJournal {
    /// The journal of server `server_id` in `store`.
    pub fn new(store: Arc<dyn DataStore>, server_id: impl Into<String>) -> Self {
        Self { store, server_id: server_id.into() }
    }
}

/// Reads a journal as [`DataStore::list_journals`] returns it.
pub fn parse_journal(bytes: &[u8]) -> Result<Journal, JournalError> {
    serde_json::from_slice(bytes)
        .map_err(|e| JournalError::Corrupt { path: WHERE.to_owned(), detail: e.to_string() })
}

fn io_error(e: DataStoreError) -> JournalError {
    JournalError::Io { path: WHERE.to_owned(), source: std::io::Error::other(e) }
}

impl JournalStore for DataStoreJournal {
    fn load(&self) -> Result<Journal, JournalError> {
        match self.store.load_journal(&self.server_id).map_err(io_error)? {
            None => Ok(Journal::default()),
            Some(bytes) => parse_journal(&bytes),
        }
    }

    fn save(&self, journal: &Journal) -> Result<(), JournalError> {
        let bytes = serde_json::to_vec(journal)
            .map_err(|e| JournalError::Corrupt { path: WHERE.to_owned(), detail: e.to_string() })?;
        self.store.save_journal(&self.server_id, &bytes).map_err(io_error)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use keycard_workload_api::TrustDomain;

    use super::*;
    use crate::ca::{AuthorityKind, CaConfig, CaManager, KeyManager, KeyType, MemoryKeyManager};
    use crate::clock::SystemClock;
    use crate::server::datastore::SqliteDataStore;

    fn config() -> CaConfig {
        CaConfig {
            trust_domain: TrustDomain::new("example.org").unwrap(),
            x509_key_type: KeyType::EcP256,
            jwt_key_type: KeyType::EcP256,
            ca_ttl: Duration::from_secs(3600),
            backdate: Duration::from_secs(1),
            upstream: None,
            refresh_hint: Duration::from_secs(5),
        }
    }

    fn open_ca(store: Arc<dyn DataStore>, keys: Arc<dyn KeyManager>) -> CaManager {
        let journal = Arc::new(DataStoreJournal::new(store, "s1"));
        CaManager::open(config(), keys, Arc::new(SystemClock), journal).unwrap()
    }

    #[test]
    fn an_empty_store_gives_an_empty_journal() {
        let store = Arc::new(SqliteDataStore::open_in_memory().unwrap());
        assert_eq!(DataStoreJournal::new(store, "s1").load().unwrap(), Journal::default());
    }

    #[test]
    fn the_ca_finds_its_authorities_again_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keycard.db");
        let keys: Arc<dyn KeyManager> = Arc::new(MemoryKeyManager::new());
        let store: Arc<dyn DataStore> = Arc::new(SqliteDataStore::open(&path).unwrap());
        let first = open_ca(store.clone(), keys.clone());
        let x509 = first.authorities(AuthorityKind::X509);
        let jwt = first.authorities(AuthorityKind::Jwt);
        assert_eq!((x509.len(), jwt.len()), (1, 1));
        let saved = DataStoreJournal::new(store.clone(), "s1").load().unwrap();
        assert_eq!(saved.x509.records[0].id, x509[0].id);
        drop((first, store));

        let store: Arc<dyn DataStore> = Arc::new(SqliteDataStore::open(&path).unwrap());
        let second = open_ca(store, keys);
        assert_eq!(second.authorities(AuthorityKind::X509), x509);
        assert_eq!(second.authorities(AuthorityKind::Jwt), jwt);
    }

    #[test]
    fn a_journal_that_is_not_json_is_corrupt() {
        let store = Arc::new(SqliteDataStore::open_in_memory().unwrap());
        store.save_journal("s1", b"not json").unwrap();
        let err = DataStoreJournal::new(store, "s1").load().unwrap_err();
        assert!(matches!(err, JournalError::Corrupt { .. }), "{err:?}");
    }
}

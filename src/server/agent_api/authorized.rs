//! The authorized-entry cache: every registration entry in memory, indexed by parent ID,
//! so that an agent's authorized set is found without scanning all entries.
//!
//! An entry is authorized for agent A when its parent is A's ID, or its parent is the
//! SPIFFE ID of a node-alias entry (one whose parent is the server's ID) whose selectors
//! are a subset of A's node selectors. The cache follows the datastore by difference
//! (`entry_changes_since`), on a timer and on demand; when the datastore fails, the last
//! good copy keeps serving and a warning is logged.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use keycard_workload_api::SpiffeId;

use crate::selector::SelectorSet;
use crate::server::datastore::{DataStore, DataStoreError, EntryChanges};
use crate::server::entry::Entry;

/// Changed entries read from the datastore per call while catching up.
const CHANGES_PER_READ: u32 = 5000;

#[derive(Debug, Default)]
struct Snapshot {
    /// The store revision the cache reflects.
    revision: u64,
    entries: HashMap<String, Arc<Entry>>,
    /// Parent ID → IDs of the entries with that parent.
    by_parent: HashMap<SpiffeId, BTreeSet<String>>,
}

impl Snapshot {
    fn remove(&mut self, id: &str) {
        if let Some(old) = self.entries.remove(id)
            && let Some(ids) = self.by_parent.get_mut(&old.spec.parent_id)
        {
            ids.remove(id);
            if ids.is_empty() {
                self.by_parent.remove(&old.spec.parent_id);
            }
        }
    }

    fn apply(&mut self, changes: EntryChanges) {
        for id in &changes.deleted {
            self.remove(id);
        }
        for entry in changes.changed {
            self.remove(&entry.id);
            self.by_parent
                .entry(entry.spec.parent_id.clone())
                .or_default()
                .insert(entry.id.clone());
            self.entries.insert(entry.id.clone(), Arc::new(entry));
        }
        self.revision = self.revision.max(changes.revision);
    }

    fn children(&self, parent: &SpiffeId) -> impl Iterator<Item = &Arc<Entry>> {
        self.by_parent.get(parent).into_iter().flatten().filter_map(|id| self.entries.get(id))
    }
}

/// The entries authorized for one agent, by entry ID, with the store revision they reflect.
#[derive(Debug, Clone, Default)]
pub struct AuthorizedSet {
    /// The store revision of the cache when the set was computed.
    pub revision: u64,
    /// The entries, ordered by ID.
    pub entries: BTreeMap<String, Arc<Entry>>,
}

/// The cache; see the module documentation.
#[derive(Debug)]
pub struct AuthorizedEntries {
    store: Arc<dyn DataStore>,
    server_id: SpiffeId,
    snapshot: RwLock<Snapshot>,
    /// Serializes refreshes, so two callers never apply the same changes twice.
    refreshing: tokio::sync::Mutex<()>,
}

impl AuthorizedEntries {
    /// An empty cache over `store`; call [`Self::refresh`] to load it.
    pub fn new(store: Arc<dyn DataStore>, server_id: SpiffeId) -> Self {
        Self {
            store,
            server_id,
            snapshot: RwLock::new(Snapshot::default()),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// Reads every change since the cached revision; on a datastore failure keeps the
    /// last good copy, logs a warning and returns false.
    pub async fn refresh(&self) -> bool {
        let _guard = self.refreshing.lock().await;
        loop {
            let since = self.revision();
            let store = self.store.clone();
            let read = tokio::task::spawn_blocking(move || {
                store.entry_changes_since(since, CHANGES_PER_READ)
            })
            .await
            .unwrap_or_else(|e| Err(DataStoreError::Backend(format!("reader task failed: {e}"))));
            match read {
                Ok(changes) => {
                    let more = changes.changed.len() >= CHANGES_PER_READ as usize
                        && changes.revision > since;
                    self.write().apply(changes);
                    if !more {
                        return true;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, revision = since,
                        "cannot read entry changes; serving the last good copy of the entries");
                    return false;
                }
            }
        }
    }

    /// Refreshes every `interval` until `stop` turns true.
    pub async fn run(
        self: Arc<Self>,
        interval: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => { self.refresh().await; }
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() { return; }
                }
            }
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Snapshot> {
        self.snapshot.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Snapshot> {
        self.snapshot.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The store revision the cache reflects.
    pub fn revision(&self) -> u64 {
        self.read().revision
    }

    /// How many entries are cached.
    pub fn len(&self) -> usize {
        self.read().entries.len()
    }

    /// Whether the cache holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entry with this ID, if cached.
    pub fn get(&self, id: &str) -> Option<Arc<Entry>> {
        self.read().entries.get(id).cloned()
    }

    /// The entries authorized for the agent `agent_id` with node selectors `selectors`.
    pub fn authorized_for(&self, agent_id: &SpiffeId, selectors: &SelectorSet) -> AuthorizedSet {
        let snap = self.read();
        let mut entries: BTreeMap<String, Arc<Entry>> =
            snap.children(agent_id).map(|e| (e.id.clone(), e.clone())).collect();
        let aliases = snap
            .children(&self.server_id)
            .filter(|alias| alias.spec.selectors.is_subset_of(selectors));
        for alias in aliases {
            for e in snap.children(&alias.spec.spiffe_id) {
                entries.insert(e.id.clone(), e.clone());
            }
        }
        AuthorizedSet { revision: snap.revision, entries }
    }

    /// Whether the entry `entry` is authorized for the agent (same rule as
    /// [`Self::authorized_for`], checked for one entry).
    pub fn is_authorized(
        &self,
        entry: &Entry,
        agent_id: &SpiffeId,
        selectors: &SelectorSet,
    ) -> bool {
        if &entry.spec.parent_id == agent_id {
            return true;
        }
        let snap = self.read();
        snap.children(&self.server_id).any(|alias| {
            alias.spec.spiffe_id == entry.spec.parent_id
                && alias.spec.selectors.is_subset_of(selectors)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::datastore::SqliteDataStore;
    use crate::server::entry::EntrySpec;
    use std::time::SystemTime;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    fn sel(s: &str) -> SelectorSet {
        [crate::selector::Selector::parse(s).unwrap()].into_iter().collect()
    }

    fn entry(n: usize, parent: &SpiffeId, selector: &str) -> Entry {
        Entry {
            id: format!("e{n:06}"),
            spec: EntrySpec {
                spiffe_id: id(&format!("spiffe://example.org/w{n}")),
                parent_id: parent.clone(),
                selectors: sel(selector),
                x509_ttl: None,
                jwt_ttl: None,
                dns_names: Vec::new(),
                hint: String::new(),
                admin: false,
            },
            revision: n as u64 + 1,
            created_at: SystemTime::UNIX_EPOCH,
            updated_at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_hundred_thousand_entries_are_indexed_by_parent_and_alias() {
        let server = id("spiffe://example.org/keycard/server");
        let store = Arc::new(SqliteDataStore::open_in_memory().unwrap());
        let cache = AuthorizedEntries::new(store, server.clone());
        let agents: Vec<SpiffeId> =
            (0..1000).map(|i| id(&format!("spiffe://example.org/keycard/agent/a{i}"))).collect();
        let mut changed: Vec<Entry> =
            (0..100_000).map(|n| entry(n, &agents[n % 1000], "unix:uid:1")).collect();
        let mut alias = entry(100_000, &server, "x509pop:subject:cn:node7");
        alias.spec.spiffe_id = id("spiffe://example.org/nodes/node7");
        changed.push(alias.clone());
        changed.push(entry(100_001, &alias.spec.spiffe_id, "unix:uid:2"));
        cache.write().apply(EntryChanges { changed, deleted: Vec::new(), revision: 100_002 });
        assert_eq!(cache.len(), 100_002);

        let started = std::time::Instant::now();
        let plain = cache.authorized_for(&agents[7], &sel("x509pop:subject:cn:other"));
        let aliased = cache.authorized_for(&agents[7], &sel("x509pop:subject:cn:node7"));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(plain.entries.len(), 100);
        assert_eq!(aliased.entries.len(), 101);
        assert!(aliased.entries.contains_key("e100001"));
        assert!(!aliased.entries.contains_key("e100000"), "alias entries are the node's own");
        let via = cache.get("e100001").unwrap();
        assert!(cache.is_authorized(&via, &agents[7], &sel("x509pop:subject:cn:node7")));
        assert!(!cache.is_authorized(&via, &agents[7], &sel("x509pop:subject:cn:other")));

        // Deleting and re-parenting keep the index right.
        let mut moved = entry(7, &agents[8], "unix:uid:1");
        moved.revision = 100_003;
        let deleted = vec!["e001007".to_string()];
        cache.write().apply(EntryChanges { changed: vec![moved], deleted, revision: 100_004 });
        assert_eq!(cache.authorized_for(&agents[7], &SelectorSet::new()).entries.len(), 98);
        assert_eq!(cache.authorized_for(&agents[8], &SelectorSet::new()).entries.len(), 101);
        assert_eq!(cache.revision(), 100_004);
    }

    #[tokio::test]
    async fn refresh_follows_the_datastore_by_difference() {
        let server = id("spiffe://example.org/keycard/server");
        let store = Arc::new(SqliteDataStore::open_in_memory().unwrap());
        let cache = AuthorizedEntries::new(store.clone(), server);
        let agent = id("spiffe://example.org/keycard/agent/a");
        let spec = entry(0, &agent, "unix:uid:1").spec;
        assert!(cache.refresh().await);
        assert!(cache.is_empty());
        let created = store.create_entry(&spec, SystemTime::now()).unwrap();
        assert!(cache.refresh().await);
        assert_eq!(cache.get(&created.id).unwrap().spec, spec);
        store.delete_entry(&created.id).unwrap();
        assert!(cache.refresh().await);
        assert!(cache.get(&created.id).is_none());
        assert!(cache.revision() > created.revision);
    }

    #[tokio::test]
    async fn the_last_good_copy_keeps_serving_when_the_datastore_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.sqlite3");
        let store = Arc::new(SqliteDataStore::open(&path).unwrap());
        let cache =
            AuthorizedEntries::new(store.clone(), id("spiffe://example.org/keycard/server"));
        let agent = id("spiffe://example.org/keycard/agent/a");
        let created = store.create_entry(&entry(0, &agent, "unix:uid:1").spec, SystemTime::now());
        let created = created.unwrap();
        assert!(cache.refresh().await);
        // Break the database under the store, as a failing disk or a bad manual edit would.
        let other = rusqlite::Connection::open(&path).unwrap();
        other.execute_batch("DROP TABLE entry_tombstones;").unwrap();
        assert!(!cache.refresh().await, "a failing datastore must be reported");
        let served = cache.authorized_for(&agent, &SelectorSet::new());
        assert_eq!(served.entries.keys().collect::<Vec<_>>(), vec![&created.id]);
    }
}

//! The authorized-entry cache: every registration entry in memory, indexed by parent ID,
//! so that an agent's authorized set is found without scanning all entries.
//!
//! An entry is authorized for agent A when its parent is A's ID, or its parent is the
//! SPIFFE ID of a node-alias entry (one whose parent is the server's ID) whose selectors
//! are a subset of A's node selectors. The cache follows the datastore by difference
//! (`entry_changes_since`), on a timer and on demand; when the datastore fails, the last
//! good copy keeps serving and a warning is logged.
//!
//! Every change applied is also appended to an [`EventLog`], under the same lock as the
//! entries, so that [`AuthorizedEntries::sync_for`] tells an agent what changed for it
//! since its cursor (see [`super::event_log`] for why positions are apply order).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use keycard_workload_api::SpiffeId;

use super::event_log::{AgentChanges, Event, EventLog};
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
    /// Every change applied, in apply order.
    log: EventLog,
}

impl Snapshot {
    fn remove(&mut self, id: &str) -> Option<Arc<Entry>> {
        let old = self.entries.remove(id)?;
        if let Some(ids) = self.by_parent.get_mut(&old.spec.parent_id) {
            ids.remove(id);
            if ids.is_empty() {
                self.by_parent.remove(&old.spec.parent_id);
            }
        }
        Some(old)
    }

    fn apply(&mut self, changes: EntryChanges) {
        for id in &changes.deleted {
            if let Some(before) = self.remove(id) {
                self.log.push(Event { before: Some(before), after: None });
            }
        }
        for entry in changes.changed {
            let before = self.remove(&entry.id);
            self.by_parent
                .entry(entry.spec.parent_id.clone())
                .or_default()
                .insert(entry.id.clone());
            let after = Arc::new(entry);
            self.entries.insert(after.id.clone(), after.clone());
            self.log.push(Event { before, after: Some(after) });
        }
        self.revision = self.revision.max(changes.revision);
    }

    /// The IDs whose children are authorized for the agent: its own and those of the node
    /// aliases (entries whose parent is the server) its selectors match.
    fn parents<'a>(
        &'a self,
        server_id: &SpiffeId,
        agent_id: &'a SpiffeId,
        selectors: &SelectorSet,
    ) -> HashSet<&'a SpiffeId> {
        let aliases = self
            .children(server_id)
            .filter(|alias| alias.spec.selectors.is_subset_of(selectors))
            .map(|alias| &alias.spec.spiffe_id);
        std::iter::once(agent_id).chain(aliases).collect()
    }

    fn authorized(&self, parents: &HashSet<&SpiffeId>) -> BTreeMap<String, Arc<Entry>> {
        parents.iter().flat_map(|p| self.children(p)).map(|e| (e.id.clone(), e.clone())).collect()
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

/// What an agent syncing by cursor is sent: see [`AuthorizedEntries::sync_for`].
#[derive(Debug, Clone)]
pub struct AgentSync {
    /// The log epoch and position this answer brings the agent to (its next cursor).
    pub epoch: u64,
    /// See `epoch`.
    pub position: u64,
    /// The store revision of the cache.
    pub revision: u64,
    /// Whether `changed` is the agent's whole authorized set, replacing its copy.
    pub full: bool,
    /// Entries to send, by ID.
    pub changed: BTreeMap<String, Arc<Entry>>,
    /// IDs the agent must drop.
    pub removed: Vec<String>,
}

/// The cache; see the module documentation.
#[derive(Debug)]
pub struct AuthorizedEntries {
    store: Arc<dyn DataStore>,
    server_id: SpiffeId,
    snapshot: RwLock<Snapshot>,
    /// Serializes refreshes, so two callers never apply the same changes twice. Holds the
    /// store's [`DataStore::change_mark`] read before the last refresh that caught up: while
    /// the store still shows it, nothing was committed since, and a refresh reads nothing.
    refreshing: tokio::sync::Mutex<Option<u64>>,
}

impl AuthorizedEntries {
    /// An empty cache over `store`; call [`Self::refresh`] to load it.
    pub fn new(store: Arc<dyn DataStore>, server_id: SpiffeId) -> Self {
        Self {
            store,
            server_id,
            snapshot: RwLock::new(Snapshot::default()),
            refreshing: tokio::sync::Mutex::new(None),
        }
    }

    /// Reads every change since the cached revision; on a datastore failure keeps the
    /// last good copy, logs a warning and returns false. When the store's change mark is
    /// the one seen before the last complete refresh, there is nothing to read: the answer
    /// comes without a datastore call or a blocking thread (the poll each second, and each
    /// agent's sync, mostly find nothing new).
    pub async fn refresh(&self) -> bool {
        self.refresh_from(self.store.change_mark()).await
    }

    /// [`Self::refresh`] with the store's change mark as the caller read it (earlier is
    /// safe: a commit after it is read by the next refresh, as the mark kept is this one).
    pub async fn refresh_from(&self, mark: Option<u64>) -> bool {
        let mut caught_up_at = self.refreshing.lock().await;
        if mark.is_some() && mark == *caught_up_at {
            return true;
        }
        *caught_up_at = None;
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
                        *caught_up_at = mark;
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
        let parents = snap.parents(&self.server_id, agent_id, selectors);
        AuthorizedSet { revision: snap.revision, entries: snap.authorized(&parents) }
    }

    /// What the agent must be sent to be up to date, given the log epoch and position of
    /// its last sync (`cursor`; None: it holds nothing). A cursor of another epoch or one
    /// the log no longer covers gets the whole set (`full`), as does an agent a node alias
    /// change concerns. The caller must also send the whole set when the agent's ID or
    /// selectors are not those the cursor was served for.
    pub fn sync_for(
        &self,
        agent_id: &SpiffeId,
        selectors: &SelectorSet,
        cursor: Option<(u64, u64)>,
    ) -> AgentSync {
        let snap = self.read();
        let (epoch, head) = (snap.log.epoch(), snap.log.head());
        if cursor == Some((epoch, head)) {
            // Idle: nothing to look at, however many entries and aliases there are.
            let (changed, removed) = (BTreeMap::new(), Vec::new());
            return AgentSync {
                epoch,
                position: head,
                revision: snap.revision,
                full: false,
                changed,
                removed,
            };
        }
        let parents = snap.parents(&self.server_id, agent_id, selectors);
        let changes = match cursor {
            Some((epoch, position)) if epoch == snap.log.epoch() => {
                snap.log.changes_for(position, &self.server_id, selectors, &parents)
            }
            _ => AgentChanges::Full,
        };
        let (full, changed, removed) = match changes {
            AgentChanges::Full => (true, snap.authorized(&parents), Vec::new()),
            AgentChanges::Delta { changed, removed } => (false, changed, removed),
        };
        AgentSync { epoch, position: head, revision: snap.revision, full, changed, removed }
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
mod tests;

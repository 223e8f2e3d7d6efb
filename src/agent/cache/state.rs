//! One published state of the cache: the entries with their SVIDs, the bundle, the
//! tainted authorities, the federated bundles held, and two indexes kept in step with the entries so that neither a
//! renewal round nor a new subscriber has to look at every entry:
//!
//! - by renewal time: entries whose SVID renews on its schedule, ordered by that time, and
//!   apart from them the entries that need an SVID at the next round whatever the time
//!   (none yet, entry changed, authority tainted). [`State::due`] reads only what is due.
//! - by selector: for each selector, the entries naming it. The entries a caller may have
//!   all name at least one of the caller's selectors, so [`State::svids_in`] looks only at
//!   those.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher as _, RandomState};
use std::sync::Arc;
use std::time::SystemTime;

use super::entry::CachedEntry;
use super::{DueEntry, EntryId, FederatedBundles, TrustBundle, WorkloadSvid};
use crate::selector::SelectorSet;

/// For each selector (by a hash of it: the entries hold the selectors themselves), the
/// entries naming it, in no order. A hash two selectors share only adds candidates, which
/// [`CachedEntry::matches`] sorts out. Both levels are shared between states: a sync that
/// changes one entry's selectors copies the map's pointers and the lists of that entry's
/// selectors, nothing else.
type SelectorIndex = Arc<HashMap<u64, Named>>;

/// The entries naming one selector. Most selectors are named by one entry (a workload's
/// own uid, pod or path), kept inline; a list is shared between states.
#[derive(Debug, Clone)]
enum Named {
    One(EntryId),
    Many(Arc<Vec<EntryId>>),
}

impl Named {
    fn iter(&self) -> std::slice::Iter<'_, EntryId> {
        match self {
            Named::One(id) => std::slice::from_ref(id).iter(),
            Named::Many(ids) => ids.iter(),
        }
    }

    fn push(&mut self, id: EntryId) {
        match self {
            Named::One(first) => *self = Named::Many(Arc::new(vec![first.clone(), id])),
            Named::Many(ids) => Arc::make_mut(ids).push(id),
        }
    }

    /// Takes `id` out (once); returns whether none is left.
    fn remove(&mut self, id: &EntryId) -> bool {
        match self {
            Named::One(held) => held == id,
            Named::Many(ids) => {
                let list = Arc::make_mut(ids);
                if let Some(at) = list.iter().position(|held| held == id) {
                    list.swap_remove(at);
                }
                match list.as_slice() {
                    [] => true,
                    [last] => {
                        *self = Named::One(last.clone());
                        false
                    }
                    _ => false,
                }
            }
        }
    }
}

/// What readers see: never changed once published, replaced whole by writers.
#[derive(Debug, Default, Clone)]
pub(super) struct State {
    entries: BTreeMap<EntryId, Arc<CachedEntry>>,
    pub(super) bundle: Option<Arc<TrustBundle>>,
    /// Every foreign bundle the agent holds; shared between states until it changes.
    pub(super) federated: Arc<FederatedBundles>,
    tainted: Vec<String>,
    /// Entries whose SVID renews on schedule, by renewal time.
    renewals: BTreeSet<(SystemTime, EntryId)>,
    /// Entries that need an SVID at the next round, whatever the time.
    urgent: BTreeSet<EntryId>,
    /// The entries by selector; see [`SelectorIndex`].
    by_selector: SelectorIndex,
    /// Hashes selectors for `by_selector` (keyed at random once per cache).
    hasher: RandomState,
}

impl State {
    /// The entries, lowest ID first.
    pub(super) fn entries(&self) -> &BTreeMap<EntryId, Arc<CachedEntry>> {
        &self.entries
    }

    /// One entry.
    pub(super) fn entry(&self, id: &str) -> Option<&Arc<CachedEntry>> {
        self.entries.get(id)
    }

    /// The shared ID of an entry held.
    pub(super) fn key(&self, id: &str) -> Option<&EntryId> {
        self.entries.get_key_value(id).map(|(k, _)| k)
    }

    /// The tainted authority IDs.
    pub(super) fn tainted(&self) -> &[String] {
        &self.tainted
    }

    /// Replaces the tainted authority IDs, and with them the renewal index (an SVID whose
    /// authority is tainted is due at once). Costs every entry: the list changes rarely.
    pub(super) fn set_tainted(&mut self, tainted: Vec<String>) {
        self.tainted = tainted;
        let (mut renewals, mut urgent) = (BTreeSet::new(), BTreeSet::new());
        for (id, e) in &self.entries {
            match self.schedule(e) {
                Some(at) => renewals.insert((at, id.clone())),
                None => urgent.insert(id.clone()),
            };
        }
        (self.renewals, self.urgent) = (renewals, urgent);
    }

    /// When the entry's SVID is due on schedule; `None` when it is due at once.
    fn schedule(&self, e: &CachedEntry) -> Option<SystemTime> {
        let svid = e.svid.as_ref()?;
        let tainted =
            svid.authority_id.as_ref().is_some_and(|a| self.tainted.iter().any(|t| **t == **a));
        if e.stale || tainted { None } else { Some(svid.renew_at) }
    }

    fn unschedule(&mut self, id: &EntryId, e: &CachedEntry) {
        match self.schedule(e) {
            Some(at) => self.renewals.remove(&(at, id.clone())),
            None => self.urgent.remove(id),
        };
    }

    /// Adds `id` under each of `selectors` (`add`) or takes it out.
    fn index_selectors(&mut self, id: &EntryId, selectors: &SelectorSet, add: bool) {
        let index = Arc::make_mut(&mut self.by_selector);
        for s in selectors.iter() {
            let key = self.hasher.hash_one(s);
            if add {
                match index.get_mut(&key) {
                    Some(named) => named.push(id.clone()),
                    None => {
                        index.insert(key, Named::One(id.clone()));
                    }
                }
            } else if let Some(named) = index.get_mut(&key)
                && named.remove(id)
            {
                index.remove(&key);
            }
        }
    }

    /// Puts `entry` under `id`, replacing the one there, and keeps both indexes in step
    /// (the selector index only when the selectors differ).
    pub(super) fn put(&mut self, id: EntryId, entry: Arc<CachedEntry>) {
        let old = self.entries.get(&id).cloned();
        if let Some(old) = &old {
            self.unschedule(&id, old);
        }
        match self.schedule(&entry) {
            Some(at) => self.renewals.insert((at, id.clone())),
            None => self.urgent.insert(id.clone()),
        };
        match &old {
            Some(old) if old.selectors == entry.selectors => {}
            Some(old) => {
                self.index_selectors(&id, &old.selectors, false);
                self.index_selectors(&id, &entry.selectors, true);
            }
            None => self.index_selectors(&id, &entry.selectors, true),
        }
        self.entries.insert(id, entry);
    }

    /// Drops an entry (its SVID with it) from the state and both indexes.
    pub(super) fn remove(&mut self, id: &str) -> Option<(EntryId, Arc<CachedEntry>)> {
        let (id, old) = self.entries.remove_entry(id)?;
        self.unschedule(&id, &old);
        self.index_selectors(&id, &old.selectors, false);
        Some((id, old))
    }

    /// Changes one entry in place (copied first if an older state still shares it).
    pub(super) fn update<R>(
        &mut self,
        id: &str,
        change: impl FnOnce(&mut CachedEntry) -> R,
    ) -> Option<R> {
        let (key, entry) = self.entries.get_key_value(id)?;
        let (key, mut entry) = (key.clone(), entry.clone());
        let result = change(Arc::make_mut(&mut entry));
        self.put(key, entry);
        Some(result)
    }

    /// Marks every entry for renewal at the next round that `stale` says must be.
    pub(super) fn mark_stale(&mut self, stale: impl Fn(&CachedEntry) -> bool) {
        let ids: Vec<EntryId> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.stale && stale(e))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.update(&id, |e| e.stale = true);
        }
    }

    /// The entries a caller with `selectors` is entitled to, lowest entry ID first,
    /// whether they hold an SVID yet or not. Looks only at the entries that name one of
    /// the caller's selectors.
    pub(super) fn entries_for<'a>(
        &'a self,
        selectors: &'a SelectorSet,
    ) -> impl Iterator<Item = (&'a EntryId, &'a Arc<CachedEntry>)> + 'a {
        let candidates: BTreeSet<&EntryId> = selectors
            .iter()
            .filter_map(|s| self.by_selector.get(&self.hasher.hash_one(s)))
            .flat_map(|ids| ids.iter())
            .collect();
        candidates
            .into_iter()
            .filter_map(|id| self.entries.get_key_value(id))
            .filter(|(_, e)| e.matches(selectors))
    }

    /// The SVIDs of every entry a caller with `selectors` is entitled to, lowest entry ID
    /// first; entries without an SVID yet are left out.
    pub(super) fn svids_in(&self, selectors: &SelectorSet) -> Vec<WorkloadSvid> {
        self.entries_for(selectors).filter_map(|(_, e)| e.served()).collect()
    }

    /// The foreign bundles a caller holding `svids` may have: those of the trust domains
    /// the entries of its SVIDs federate with, among the ones held. Costs the SVIDs.
    pub(super) fn federated_for(&self, svids: &[WorkloadSvid]) -> FederatedBundles {
        let mut out = FederatedBundles::new();
        if self.federated.is_empty() {
            return out;
        }
        for svid in svids {
            let Some(entry) = self.entries.get(&svid.entry_id) else { continue };
            for td in &entry.federates_with {
                if let Some(bundle) = self.federated.get(td) {
                    out.entry(td.clone()).or_insert_with(|| bundle.clone());
                }
            }
        }
        out
    }

    /// Entries that need an SVID at `now`, lowest entry ID first: costs what is due, not
    /// what is held.
    pub(super) fn due(&self, now: SystemTime) -> Vec<DueEntry> {
        let mut due: Vec<DueEntry> = self
            .urgent
            .iter()
            .map(|id| DueEntry { entry_id: id.clone(), previous_due: None })
            .chain(
                self.renewals
                    .iter()
                    .take_while(|(at, _)| super::super::renewal::renewal_due(now, *at, false))
                    .map(|(at, id)| DueEntry { entry_id: id.clone(), previous_due: Some(*at) }),
            )
            .collect();
        due.sort_by(|a, b| a.entry_id.cmp(&b.entry_id));
        due
    }

    /// How many entries the renewal index holds (each entry exactly once).
    #[cfg(test)]
    pub(super) fn indexed(&self) -> usize {
        self.renewals.len() + self.urgent.len()
    }

    /// How many entries the selector index names, each once per selector.
    #[cfg(test)]
    pub(super) fn selector_indexed(&self) -> usize {
        self.by_selector.values().map(|ids| ids.iter().len()).sum()
    }
}

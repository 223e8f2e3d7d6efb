//! Who follows the cache: one subscription per caller identity (its selector set), shared
//! by every stream of callers with that identity.
//!
//! A subscription holds one `watch` channel whose value is the caller set's current
//! [`Snapshot`]: one immutable, reference-counted SVID list that every stream of those
//! callers reads, never a copy per stream. A [`Subscription`] handle counts as one stream;
//! when the last handle of a set is dropped, the set is removed at once.
//!
//! A publish re-evaluates only the sets a change concerns: an entry concerns the sets that
//! hold all of its selectors (found through an index of the sets by selector), before the
//! change and after it. A concerned set's list is patched (the changed entries taken out,
//! put back where they now match) rather than recomputed from every entry. A new bundle
//! reaches every set, with its SVID list shared as it was. So does a change of the
//! federated bundles held: each set's share of them (what the entries of its SVIDs
//! federate with) is worked out again, and only sets whose share changed are woken. An
//! entry whose `federates_with` changed concerns its sets like any other change.

use std::collections::{HashMap, HashSet};
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use super::state::State;
use super::{EntryId, Snapshot, WorkloadSvid, lock, same_federated};
use crate::selector::{Selector, SelectorSet};

/// One caller set's channel and the number of streams following it.
#[derive(Debug)]
struct Subscribed {
    selectors: SelectorSet,
    tx: watch::Sender<Snapshot>,
    streams: usize,
}

/// The subscriptions, with their indexes by selector set and by selector.
#[derive(Debug, Default)]
pub(super) struct Registry {
    next_id: u64,
    subs: HashMap<u64, Subscribed>,
    by_set: HashMap<SelectorSet, u64>,
    by_selector: HashMap<Selector, HashSet<u64>>,
    /// How many times a caller set's SVID list was re-evaluated by a publish (a count for
    /// tests and metrics: it shows what a publish cost).
    evaluations: u64,
}

/// What a publish changed, for [`Registry::publish`].
pub(super) struct Change<'a> {
    /// The state before.
    pub(super) before: &'a State,
    /// Entries added, removed, or served differently (SVID, hint, selectors, ID).
    pub(super) entries: Vec<EntryId>,
}

impl Registry {
    /// Subscribes a caller with `selectors` to `state` (shared with its caller set).
    /// `state` must be the current one, read with `registry` locked (as `reg`), so that no
    /// publish falls between the two.
    pub(super) fn subscribe(
        registry: &Arc<Mutex<Registry>>,
        mut reg: MutexGuard<'_, Registry>,
        selectors: SelectorSet,
        state: &State,
    ) -> Subscription {
        let id = match reg.by_set.get(&selectors) {
            Some(id) => *id,
            None => {
                let id = reg.next_id;
                reg.next_id += 1;
                let svids: Arc<[WorkloadSvid]> = state.svids_in(&selectors).into();
                let federated = Arc::new(state.federated_for(&svids));
                let snapshot = Snapshot { svids, bundle: state.bundle.clone(), federated };
                for s in selectors.iter() {
                    reg.by_selector.entry(s.clone()).or_default().insert(id);
                }
                reg.by_set.insert(selectors.clone(), id);
                let (tx, _) = watch::channel(snapshot);
                reg.subs.insert(id, Subscribed { selectors, tx, streams: 0 });
                id
            }
        };
        let sub = reg.subs.get_mut(&id).expect("indexed subscriptions exist");
        sub.streams += 1;
        let rx = sub.tx.subscribe();
        Subscription { rx, id, registry: registry.clone() }
    }

    fn release(&mut self, id: u64) {
        let Some(sub) = self.subs.get_mut(&id) else { return };
        sub.streams -= 1;
        if sub.streams > 0 {
            return;
        }
        let Some(sub) = self.subs.remove(&id) else { return };
        self.by_set.remove(&sub.selectors);
        for s in sub.selectors.iter() {
            if let Some(ids) = self.by_selector.get_mut(s) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.by_selector.remove(s);
                }
            }
        }
    }

    /// The caller sets that hold every one of `selectors` (none for the empty set).
    fn supersets_of<'a>(&'a self, selectors: &SelectorSet) -> impl Iterator<Item = u64> + 'a {
        let smallest = selectors
            .iter()
            .map(|s| self.by_selector.get(s))
            .min_by_key(|ids| ids.map_or(0, |ids| ids.len()))
            .flatten();
        let wanted = selectors.clone();
        smallest.into_iter().flatten().copied().filter(move |id| {
            self.subs.get(id).is_some_and(|sub| wanted.is_subset_of(&sub.selectors))
        })
    }

    /// Tells the caller sets `change` concerns what they are entitled to in `next`, and
    /// every set the new bundle or federated bundles when they changed.
    pub(super) fn publish(&mut self, change: Change<'_>, next: &State) {
        let mut concerned: HashMap<u64, Vec<&str>> = HashMap::new();
        for id in &change.entries {
            let old = change.before.entry(id).map(|e| &e.selectors);
            let new = next.entry(id).map(|e| &e.selectors);
            let mut sets: HashSet<u64> = HashSet::new();
            for selectors in [old, new].into_iter().flatten() {
                sets.extend(self.supersets_of(selectors));
            }
            for set in sets {
                concerned.entry(set).or_default().push(&**id);
            }
        }
        let bundle_changed = match (&change.before.bundle, &next.bundle) {
            (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
            (None, None) => false,
            _ => true,
        };
        let federated_changed = !Arc::ptr_eq(&change.before.federated, &next.federated);
        let ids: Vec<u64> = if bundle_changed || federated_changed {
            self.subs.keys().copied().collect()
        } else {
            concerned.keys().copied().collect()
        };
        for id in ids {
            let Some(sub) = self.subs.get(&id) else { continue };
            let current = sub.tx.borrow().clone();
            let svids = match concerned.get(&id) {
                Some(changed) => {
                    self.evaluations += 1;
                    patched(&current.svids, changed, next, &sub.selectors)
                }
                None => current.svids.clone(),
            };
            let federated = next.federated_for(&svids);
            let federated = if same_federated(&federated, &current.federated) {
                current.federated.clone()
            } else {
                Arc::new(federated)
            };
            let view = Snapshot { svids, bundle: next.bundle.clone(), federated };
            sub.tx.send_if_modified(|held| {
                let changed = !held.serves_as(&view);
                if changed {
                    *held = view;
                }
                changed
            });
        }
    }

    /// Caller sets subscribed now.
    pub(super) fn len(&self) -> usize {
        self.subs.len()
    }

    /// Caller-set re-evaluations made by publishes so far.
    pub(super) fn evaluations(&self) -> u64 {
        self.evaluations
    }
}

/// `svids` with the entries in `changed` taken out and put back as they are in `next`
/// where they still match `selectors`; the same list (shared) when nothing differs.
fn patched(
    svids: &Arc<[WorkloadSvid]>,
    changed: &[&str],
    next: &State,
    selectors: &SelectorSet,
) -> Arc<[WorkloadSvid]> {
    let changed: HashSet<&str> = changed.iter().copied().collect();
    let mut list: Vec<WorkloadSvid> =
        svids.iter().filter(|s| !changed.contains(&*s.entry_id)).cloned().collect();
    list.extend(
        changed
            .iter()
            .filter_map(|id| next.entry(id))
            .filter(|e| e.matches(selectors))
            .filter_map(|e| e.served()),
    );
    list.sort_by(|a, b| a.entry_id.cmp(&b.entry_id));
    let same =
        list.len() == svids.len() && list.iter().zip(svids.iter()).all(|(a, b)| a.serves_as(b));
    if same { svids.clone() } else { list.into() }
}

/// One stream's subscription to its caller set: reads like the `watch` receiver it
/// wraps; dropping the last one of a set removes the set at once.
#[derive(Debug)]
pub struct Subscription {
    rx: watch::Receiver<Snapshot>,
    id: u64,
    registry: Arc<Mutex<Registry>>,
}

impl Deref for Subscription {
    type Target = watch::Receiver<Snapshot>;

    fn deref(&self) -> &Self::Target {
        &self.rx
    }
}

impl DerefMut for Subscription {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.rx
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        lock(&self.registry).release(self.id);
    }
}

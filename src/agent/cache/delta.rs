//! What a sync hands the cache, and how the cache applies it to its current state.
//!
//! The cache is the agent's only copy of its entries: a sync does not rebuild the cache
//! from a copy of its own but hands over what changed ([`CacheDelta`]): the entries the
//! server sent (every authorized one when `full`), the IDs it dropped, and the bundle,
//! tainted list and federated bundles when they came. Only the entries named are parsed,
//! compared with the one held, put in place and re-indexed; only the caller sets they
//! concern are told. A delta that changes nothing publishes nothing.

use std::collections::HashSet;
use std::sync::Arc;

use keycard_workload_api::SpiffeBundle;

use super::entry::{CachedEntry, shared_id};
use super::{CacheError, EntryChanges, EntryId, FederatedBundles, SvidCache, TrustBundle};
use super::{State, federated, lock};
use crate::wire::proto as pb;

/// What one sync changed, for [`SvidCache::apply`]; see the module documentation.
#[derive(Debug, Clone, Default)]
pub struct CacheDelta<'a> {
    /// `entries` are the whole set: every entry held that is not among them goes.
    pub full: bool,
    /// Entries new or changed (all of them when `full`).
    pub entries: Vec<pb::Entry>,
    /// IDs of entries to drop.
    pub removed: Vec<String>,
    /// The bundle, when the sync brought one the agent may adopt (`None`: keep the one
    /// held). A bundle without X.509 authorities is refused, and nothing changes.
    pub bundle: Option<&'a SpiffeBundle>,
    /// The tainted authority IDs, when the sync sent them (`None`: unchanged).
    pub tainted: Option<Vec<String>>,
    /// The whole set of federated bundles, when the sync sent it (a trust domain left out
    /// is no longer served; `None`: unchanged).
    pub federated: Option<FederatedBundles>,
}

impl SvidCache {
    /// Applies a sync's `delta` to the current state in one publish. SVIDs of entries
    /// that are gone (or now name another SPIFFE ID) are dropped at once; an entry the
    /// agent cannot parse is skipped (and one held under its ID dropped).
    pub fn apply(&self, delta: CacheDelta<'_>) -> Result<EntryChanges, CacheError> {
        let bundle = match delta.bundle {
            Some(b) if b.x509_authorities.is_empty() => return Err(CacheError::EmptyBundle),
            Some(b) => Some(Arc::new(TrustBundle::of(b)?)),
            None => None,
        };
        let _writer = lock(&self.writer);
        let current = self.current();
        let mut next = State::clone(&current);
        let mut changes = EntryChanges::default();
        // Entries whose change a workload sees: the caller sets they concern are told.
        let mut changed: Vec<EntryId> = Vec::new();
        if let Some(tainted) = delta.tainted
            && tainted != current.tainted()
        {
            next.set_tainted(tainted);
            changes.tainted = true;
        }
        if delta.full {
            let kept: HashSet<&str> = delta.entries.iter().map(|e| e.id.as_str()).collect();
            let gone: Vec<EntryId> =
                current.entries().keys().filter(|id| !kept.contains(&***id)).cloned().collect();
            for id in gone {
                changes.removed += drop_entry(&mut next, &id, &mut changed);
            }
        }
        for id in &delta.removed {
            changes.removed += drop_entry(&mut next, id, &mut changed);
        }
        for e in &delta.entries {
            let Some(mut cached) = CachedEntry::parse(e) else {
                tracing::warn!(entry_id = %e.id, "skipping an entry the agent cannot parse");
                changes.skipped += 1;
                changes.removed += drop_entry(&mut next, &e.id, &mut changed);
                continue;
            };
            let id = shared_id(next.key(&e.id), &e.id);
            let old = next.entry(&id).cloned();
            let Some(old) = old else {
                changes.added += 1;
                changed.push(id.clone());
                next.put(id, Arc::new(cached));
                continue;
            };
            cached.carry_over(&old);
            if cached.serves_differently_from(&old) {
                changed.push(id.clone());
            } else if cached.same_as(&old) {
                continue;
            }
            changes.updated += 1;
            next.put(id, Arc::new(cached));
        }
        let federated = match delta.federated {
            Some(set) => federated::keep_shared(&current.federated, set),
            None => current.federated.clone(),
        };
        let federated_changed = !Arc::ptr_eq(&federated, &current.federated);
        next.federated = federated;
        let mut bundle_changed = false;
        if let Some(bundle) = bundle
            && current.bundle.as_deref() != Some(&*bundle)
        {
            Self::mark_unverifiable(&mut next, &bundle, self.clock.now());
            next.bundle = Some(bundle);
            bundle_changed = true;
        }
        if changes.any() || bundle_changed || federated_changed {
            self.install(&current, next, changed);
        }
        Ok(changes)
    }
}

/// Drops the entry `id` from `next` if held, noting it in `changed`; returns how many
/// entries went (0 or 1).
fn drop_entry(next: &mut State, id: &str, changed: &mut Vec<EntryId>) -> usize {
    match next.remove(id) {
        Some((key, _)) => {
            changed.push(key);
            1
        }
        None => 0,
    }
}

//! The agent's workload SVID cache: the entries the server authorized for this agent, the
//! current X.509-SVID of each, the trust bundle, and the bundles of foreign trust domains
//! (federation) that entries name in `federates_with`.
//!
//! The [`Manager`](super::manager::Manager) fills it; the Workload API reads it with
//! [`SvidCache::svids_for`] and follows it with [`SvidCache::subscribe`], which wakes a
//! subscriber only when what *that* caller is entitled to changes (a rotation, a bundle
//! change, an entry removed). Callers with the same selectors share one subscription and
//! one SVID list ([`subscribers`]); a publish costs the caller sets it concerns, and a
//! renewal round what is due ([`state`]). An SVID replaces the previous one only after it has been
//! checked ([`SvidCache::update_svids`]): a bad answer from the server never reaches a
//! workload.
//!
//! Readers never wait for a writer's work. The state is an immutable snapshot behind an
//! `Arc`: a reader clones the `Arc` (a lock held for a pointer copy) and works on its own
//! copy. A writer takes the writers' lock (readers never take it), copies the snapshot,
//! checks chains (up to [`MAX_BATCH`](crate::wire::MAX_BATCH) of them a round) on the copy
//! with no lock readers wait on, then swaps the new snapshot in.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use keycard_workload_api::{SpiffeBundle, X509BundleSet};
use rustls_pki_types::UnixTime;
use x509_parser::prelude::{FromDer as _, ParsedExtension, X509Certificate};

use crate::clock::Clock;
use crate::selector::SelectorSet;
use crate::wire::proto as pb;

mod bundle_rule;
mod delta;
mod entry;
mod federated;
mod state;
mod subscribers;
mod types;

pub use bundle_rule::check_bundle_update;
pub use delta::CacheDelta;
use entry::CachedEntry;
pub use federated::{FederatedBundles, same_federated};
use state::State;
pub use subscribers::Subscription;
use subscribers::{Change, Registry};
pub use types::{
    CacheError, CachedSvid, DueEntry, EntryChanges, EntryId, EntryView, NewSvid, Snapshot, SvidKey,
    TrustBundle, WorkloadSvid,
};

/// The cache; see the module documentation. Shared as `Arc<SvidCache>`.
#[derive(Debug)]
pub struct SvidCache {
    clock: Arc<dyn Clock>,
    /// The current snapshot; held only to copy or swap the `Arc`.
    state: RwLock<Arc<State>>,
    /// Serializes writers (sync, SVID updates) across their checks; readers never take it.
    writer: Mutex<()>,
    /// The caller sets subscribed; held to add or drop one, and by a publish.
    subscribers: Arc<Mutex<Registry>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unix_time(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default())
}

/// The leaf's `notAfter`, public key and authority key ID.
fn leaf_facts(leaf: &[u8]) -> Option<(SystemTime, Vec<u8>, Option<String>)> {
    let (_, cert) = X509Certificate::from_der(leaf).ok()?;
    let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    let aki = cert.extensions().iter().find_map(|ext| match ext.parsed_extension() {
        ParsedExtension::AuthorityKeyIdentifier(aki) => {
            aki.key_identifier.as_ref().map(|k| hex::encode(k.0))
        }
        _ => None,
    });
    Some((SystemTime::UNIX_EPOCH + Duration::from_secs(secs), cert.public_key().raw.to_vec(), aki))
}

impl SvidCache {
    /// An empty cache: no entries, no bundle.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            state: RwLock::new(Arc::new(State::default())),
            writer: Mutex::new(()),
            subscribers: Arc::default(),
        }
    }

    /// The current snapshot (a pointer copy).
    fn current(&self) -> Arc<State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Publishes `next` and tells the caller sets whose view changed (the sets the
    /// `changed` entries concern; all of them on a new bundle). Called with the writers'
    /// lock held, so that snapshots reach subscribers in the order they were made.
    fn install(&self, before: &State, next: State, changed: Vec<EntryId>) {
        let next = Arc::new(next);
        // The registry is locked before the state is swapped: a subscriber that joins
        // meanwhile reads either the old state (and is then told) or the new one.
        let mut registry = lock(&self.subscribers);
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = next.clone();
        registry.publish(Change { before, entries: changed }, &next);
    }

    /// The SVIDs of every entry whose selectors are a subset of `selectors`, lowest entry
    /// ID first. Entries without an SVID yet are left out, and an entry with no selectors
    /// matches nobody (the empty set would otherwise match every caller).
    pub fn svids_for(&self, selectors: &SelectorSet) -> Vec<WorkloadSvid> {
        self.current().svids_in(selectors)
    }

    /// The current bundle, once loaded.
    pub fn bundle(&self) -> Option<Arc<TrustBundle>> {
        self.current().bundle.clone()
    }

    /// Every foreign bundle held, by trust domain.
    pub fn federated(&self) -> Arc<FederatedBundles> {
        self.current().federated.clone()
    }

    /// The foreign bundles a caller with `selectors` may have: those of the trust domains
    /// the entries it holds SVIDs of federate with, among the ones held.
    pub fn federated_for(&self, selectors: &SelectorSet) -> FederatedBundles {
        let state = self.current();
        state.federated_for(&state.svids_in(selectors))
    }

    /// The cached SVID of one entry.
    pub fn svid(&self, entry_id: &str) -> Option<Arc<CachedSvid>> {
        self.current().entry(entry_id).and_then(|e| e.svid.clone())
    }

    /// Every cached SVID, lowest entry ID first (one consistent snapshot).
    pub fn svids(&self) -> Vec<Arc<CachedSvid>> {
        self.current().entries().values().filter_map(|e| e.svid.clone()).collect()
    }

    /// IDs of the entries held, in order.
    pub fn entry_ids(&self) -> Vec<EntryId> {
        self.current().entries().keys().cloned().collect()
    }

    /// How many entries the cache holds.
    pub fn len(&self) -> usize {
        self.current().entries().len()
    }

    /// Whether the cache holds no entry.
    pub fn is_empty(&self) -> bool {
        self.current().entries().is_empty()
    }

    /// Every entry held with its revision, lowest ID first (what the revision-list sync
    /// compares with the server's list).
    pub fn revisions(&self) -> Vec<(EntryId, u64)> {
        self.current().entries().iter().map(|(id, e)| (id.clone(), e.revision)).collect()
    }

    /// The tainted authority IDs of the last sync that sent them.
    pub fn tainted(&self) -> Vec<String> {
        self.current().tainted().to_vec()
    }

    /// The current entries and SVIDs as one consistent image, to write out (the disk
    /// cache); taking it copies a pointer.
    pub fn image(&self) -> CacheImage {
        CacheImage(self.current())
    }

    /// Follows what a caller with `selectors` is entitled to: the subscription holds the
    /// current snapshot and is marked changed whenever it differs. Callers with the same
    /// selectors share one snapshot; dropping the last of their subscriptions ends it.
    pub fn subscribe(&self, selectors: SelectorSet) -> Subscription {
        // The registry is locked before the state is read: a writer that swaps a new
        // state in meanwhile publishes only after this subscriber is registered.
        let registry = lock(&self.subscribers);
        let state = self.current();
        Registry::subscribe(&self.subscribers, registry, selectors, &state)
    }

    /// Caller sets (distinct selector sets) subscribed now.
    pub fn subscriptions(&self) -> usize {
        lock(&self.subscribers).len()
    }

    /// How many times publishes re-evaluated a caller set's SVIDs so far.
    pub fn subscriber_evaluations(&self) -> u64 {
        lock(&self.subscribers).evaluations()
    }

    /// Replaces the entries, bundle and tainted authorities with a sync's result; the
    /// federated bundles stay. See [`SvidCache::set_synced`].
    pub fn set_entries(
        &self,
        entries: &BTreeMap<String, pb::Entry>,
        bundle: Option<&SpiffeBundle>,
        tainted: &[String],
    ) -> Result<EntryChanges, CacheError> {
        self.set_synced(entries, bundle, tainted, None)
    }

    /// Replaces the entries, bundle and tainted authorities with a whole set, and the
    /// federated bundles with `federated` when given, in one publish: a full
    /// [`CacheDelta`] (see [`SvidCache::apply`]).
    pub fn set_synced(
        &self,
        entries: &BTreeMap<String, pb::Entry>,
        bundle: Option<&SpiffeBundle>,
        tainted: &[String],
        federated: Option<FederatedBundles>,
    ) -> Result<EntryChanges, CacheError> {
        self.apply(CacheDelta {
            full: true,
            entries: entries.values().cloned().collect(),
            removed: Vec::new(),
            bundle,
            tainted: Some(tainted.to_vec()),
            federated,
        })
    }

    /// Marks for replacement every SVID that no longer chains to `bundle` (its authority
    /// was removed from the bundle, e.g. revoked): it is renewed in the next round instead
    /// of at its planned time.
    fn mark_unverifiable(state: &mut State, bundle: &TrustBundle, now: SystemTime) {
        let mut set = X509BundleSet::new();
        set.insert(bundle.x509.clone());
        state.mark_stale(|entry| {
            let Some(svid) = &entry.svid else { return false };
            match keycard_workload_api::verify_chain(&svid.chain, &set, unix_time(now)) {
                Ok(_) => false,
                Err(e) => {
                    tracing::info!(entry_id = %svid.entry_id, error = %e, "SVID no longer chains to the bundle; renewing it now");
                    true
                }
            }
        });
    }

    /// Entries that need an SVID at `now`: none yet, entry changed, authority tainted,
    /// or renewal time reached. Lowest entry ID first. Costs what is due, not what is held.
    pub fn due(&self, now: SystemTime) -> Vec<DueEntry> {
        self.current().due(now)
    }

    /// Checks each new SVID (chain to the current bundle, the entry's SPIFFE ID, the
    /// agent's key, not expired) and puts the good ones in place of the old ones; a bad
    /// one is refused and the old SVID kept. Subscribers are told once, at the end.
    pub fn update_svids(&self, svids: Vec<NewSvid>) -> Vec<Result<(), CacheError>> {
        if svids.is_empty() {
            return Vec::new();
        }
        let _writer = lock(&self.writer);
        let now = self.clock.now();
        let current = self.current();
        let mut next = State::clone(&current);
        let mut changed = Vec::new();
        // The authority ID of the batch's last SVID: most come from one authority.
        let mut authority = None;
        let results = svids
            .into_iter()
            .map(|svid| {
                let entry_id = svid.entry_id.clone();
                let result = Self::update_one(&mut next, svid, now, &mut authority);
                if result.is_ok() {
                    changed.push(entry_id);
                }
                result
            })
            .collect();
        self.install(&current, next, changed);
        results
    }

    /// Checks `new` and puts it in place. `authority` is the authority ID of the last
    /// SVID put in place, shared with this one if it has the same.
    fn update_one(
        state: &mut State,
        new: NewSvid,
        now: SystemTime,
        authority: &mut Option<Arc<str>>,
    ) -> Result<(), CacheError> {
        let bundle = state.bundle.clone().ok_or(CacheError::NoBundle)?;
        let Some((entry_id, entry)) = state.entries().get_key_value(&*new.entry_id) else {
            return Err(CacheError::UnknownEntry(new.entry_id.to_string()));
        };
        let bad = |reason: String| CacheError::BadChain { entry_id: entry_id.to_string(), reason };
        let mut set = X509BundleSet::new();
        set.insert(bundle.x509.clone());
        let id = keycard_workload_api::verify_chain(&new.chain, &set, unix_time(now))
            .map_err(|e| bad(e.to_string()))?;
        if id != entry.spiffe_id {
            return Err(CacheError::WrongId {
                entry_id: entry_id.to_string(),
                found: id.to_string(),
                expected: entry.spiffe_id.to_string(),
            });
        }
        let leaf = new.chain.first().ok_or_else(|| bad("empty chain".into()))?;
        let (expires_at, public_key, authority_id) =
            leaf_facts(leaf).ok_or_else(|| bad("unreadable leaf".into()))?;
        if expires_at <= now {
            return Err(bad("expired".into()));
        }
        if public_key != new.key.public_key_der() {
            return Err(CacheError::KeyMismatch(entry_id.to_string()));
        }
        // One copy per authority: shared with the SVID held before or the last one put.
        let held = entry.svid.as_ref().and_then(|s| s.authority_id.as_ref());
        let authority_id = authority_id.map(|aki| {
            let shared = [held, authority.as_ref()].into_iter().flatten().find(|a| ***a == *aki);
            shared.cloned().unwrap_or_else(|| Arc::from(aki))
        });
        authority.clone_from(&authority_id);
        let entry_id = entry_id.clone();
        let svid = Arc::new(CachedSvid {
            entry_id: entry_id.clone(),
            // The entry's (equal to the leaf's, checked above): one copy shared.
            spiffe_id: entry.spiffe_id.clone(),
            chain: new.chain.into(),
            key: Arc::new(SvidKey::of(&new.key)),
            serial: new.serial.into(),
            issued_at: new.issued_at,
            expires_at,
            authority_id,
            renew_at: new.renew_at,
        });
        state.update(&entry_id, |entry| {
            entry.stale = false;
            entry.svid = Some(svid);
        });
        Ok(())
    }

    /// Every entry with its selectors and its SVID's expiry, lowest entry ID first.
    pub fn entry_views(&self) -> Vec<EntryView> {
        self.current().entries().iter().map(|(id, e)| Self::view(id, e)).collect()
    }

    /// The entries a caller with `selectors` is entitled to (with or without an SVID),
    /// lowest entry ID first; costs the entries naming one of its selectors, not all.
    pub fn entry_views_for(&self, selectors: &SelectorSet) -> Vec<EntryView> {
        self.current().entries_for(selectors).map(|(id, e)| Self::view(id, e)).collect()
    }

    fn view(id: &EntryId, e: &CachedEntry) -> EntryView {
        EntryView {
            entry_id: id.clone(),
            spiffe_id: e.spiffe_id.clone(),
            selectors: e.selectors.clone(),
            hint: e.hint.clone(),
            svid_expires_at: e.svid.as_ref().map(|s| s.expires_at),
            jwt_bound: e.jwt_bound,
        }
    }
}

/// One consistent image of the cache's entries and SVIDs (see [`SvidCache::image`]).
#[derive(Debug, Clone)]
pub struct CacheImage(Arc<State>);

impl CacheImage {
    /// The entries as protobuf, with the fields the agent uses, lowest ID first.
    pub fn entries(&self) -> Vec<pb::Entry> {
        self.0.entries().iter().map(|(id, e)| e.to_pb(id)).collect()
    }

    /// Every SVID, lowest entry ID first.
    pub fn svids(&self) -> impl Iterator<Item = &Arc<CachedSvid>> + '_ {
        self.0.entries().values().filter_map(|e| e.svid.as_ref())
    }

    /// The tainted authority IDs.
    pub fn tainted(&self) -> &[String] {
        self.0.tainted()
    }
}

#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
pub(crate) use test_support::test_svid;

#[cfg(test)]
mod delta_tests;
#[cfg(test)]
mod federation_tests;
#[cfg(test)]
mod subscriber_tests;
#[cfg(test)]
mod tests;

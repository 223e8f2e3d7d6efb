//! The agent's workload SVID cache: the entries the server authorized for this agent, the
//! current X.509-SVID of each, and the trust bundle.
//!
//! The [`Manager`](super::manager::Manager) fills it; the Workload API reads it with
//! [`SvidCache::svids_for`] and follows it with [`SvidCache::subscribe`], which wakes a
//! subscriber only when what *that* caller is entitled to changes (a rotation, a bundle
//! change, an entry removed). An SVID replaces the previous one only after it has been
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

use keycard_workload_api::{SpiffeBundle, SpiffeId, X509BundleSet};
use rustls_pki_types::UnixTime;
use tokio::sync::watch;
use x509_parser::prelude::{FromDer as _, ParsedExtension, X509Certificate};

use crate::clock::Clock;
use crate::selector::{Selector, SelectorSet};
use crate::wire::proto as pb;

mod bundle_rule;
mod types;

pub use bundle_rule::check_bundle_update;
pub use types::{
    CacheError, CachedSvid, DueEntry, EntryChanges, EntryView, NewSvid, Snapshot, TrustBundle,
    WorkloadSvid,
};

/// One entry as the cache keeps it: parsed once when synced.
#[derive(Debug, Clone)]
struct CachedEntry {
    spiffe_id: SpiffeId,
    selectors: SelectorSet,
    hint: String,
    dns_names: Vec<String>,
    x509_ttl_seconds: i64,
    /// Set when the entry changed in a way its SVID must follow (DNS names, TTL).
    stale: bool,
    svid: Option<Arc<CachedSvid>>,
}

/// What readers see: never changed once published, replaced whole by writers.
#[derive(Debug, Default, Clone)]
struct State {
    entries: BTreeMap<String, CachedEntry>,
    bundle: Option<Arc<TrustBundle>>,
    tainted: Vec<String>,
}

/// A subscriber: the caller's selectors and where its snapshots go.
type Subscriber = Arc<(SelectorSet, watch::Sender<Snapshot>)>;

/// The cache; see the module documentation. Shared as `Arc<SvidCache>`.
#[derive(Debug)]
pub struct SvidCache {
    clock: Arc<dyn Clock>,
    /// The current snapshot; held only to copy or swap the `Arc`.
    state: RwLock<Arc<State>>,
    /// Serializes writers (sync, SVID updates) across their checks; readers never take it.
    writer: Mutex<()>,
    /// Held only to add a subscriber or copy the list.
    subscribers: Mutex<Vec<Subscriber>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn parse_entry(e: &pb::Entry) -> Option<(SpiffeId, SelectorSet)> {
    let id = SpiffeId::parse(&e.spiffe_id).ok()?;
    let selectors: Result<SelectorSet, _> =
        e.selectors.iter().map(|s| Selector::parse(s)).collect();
    Some((id, selectors.ok()?))
}

fn unix_time(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default())
}

/// The leaf's `notAfter` and authority key ID.
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
            subscribers: Mutex::new(Vec::new()),
        }
    }

    /// The current snapshot (a pointer copy).
    fn current(&self) -> Arc<State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Publishes `next` and tells every subscriber whose view changed. Called with the
    /// writers' lock held, so that snapshots reach subscribers in the order they were made.
    fn install(&self, next: State) {
        let next = Arc::new(next);
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = next.clone();
        let subscribers: Vec<Subscriber> = {
            let mut list = lock(&self.subscribers);
            list.retain(|s| !s.1.is_closed());
            list.clone()
        };
        for sub in subscribers {
            let (selectors, tx) = &*sub;
            let view =
                Snapshot { svids: Self::svids_in(&next, selectors), bundle: next.bundle.clone() };
            tx.send_if_modified(|current| {
                let changed = !current.same_as(&view);
                if changed {
                    *current = view;
                }
                changed
            });
        }
    }

    /// The SVIDs of every entry whose selectors are a subset of `selectors`, lowest entry
    /// ID first. Entries without an SVID yet are left out, and an entry with no selectors
    /// matches nobody (the empty set would otherwise match every caller).
    pub fn svids_for(&self, selectors: &SelectorSet) -> Vec<WorkloadSvid> {
        Self::svids_in(&self.current(), selectors)
    }

    fn svids_in(state: &State, selectors: &SelectorSet) -> Vec<WorkloadSvid> {
        state
            .entries
            .iter()
            .filter(|(_, e)| !e.selectors.is_empty() && e.selectors.is_subset_of(selectors))
            .filter_map(|(_, e)| {
                let svid = e.svid.as_ref()?;
                Some(WorkloadSvid {
                    entry_id: svid.entry_id.clone(),
                    spiffe_id: svid.spiffe_id.clone(),
                    chain: svid.chain.clone(),
                    key: svid.key.clone(),
                    serial: svid.serial.clone(),
                    expires_at: svid.expires_at,
                    hint: e.hint.clone(),
                })
            })
            .collect()
    }

    /// The current bundle, once loaded.
    pub fn bundle(&self) -> Option<Arc<TrustBundle>> {
        self.current().bundle.clone()
    }

    /// The cached SVID of one entry.
    pub fn svid(&self, entry_id: &str) -> Option<Arc<CachedSvid>> {
        self.current().entries.get(entry_id).and_then(|e| e.svid.clone())
    }

    /// Every cached SVID, lowest entry ID first (one consistent snapshot).
    pub fn svids(&self) -> Vec<Arc<CachedSvid>> {
        self.current().entries.values().filter_map(|e| e.svid.clone()).collect()
    }

    /// IDs of the entries held, in order.
    pub fn entry_ids(&self) -> Vec<String> {
        self.current().entries.keys().cloned().collect()
    }

    /// Follows what a caller with `selectors` is entitled to: the receiver holds the
    /// current snapshot and is marked changed whenever it differs.
    pub fn subscribe(&self, selectors: SelectorSet) -> watch::Receiver<Snapshot> {
        // The list is locked before the state is read: a writer that swaps a new state in
        // meanwhile copies the list only after this subscriber is on it, so it is told.
        let mut list = lock(&self.subscribers);
        let state = self.current();
        let snapshot =
            Snapshot { svids: Self::svids_in(&state, &selectors), bundle: state.bundle.clone() };
        let (tx, rx) = watch::channel(snapshot);
        list.push(Arc::new((selectors, tx)));
        rx
    }

    /// Replaces the entries, bundle and tainted authorities with a sync's result. SVIDs
    /// of entries that are gone (or now name another SPIFFE ID) are dropped at once. A
    /// bundle without X.509 authorities is refused (nothing changes).
    pub fn set_entries(
        &self,
        entries: &BTreeMap<String, pb::Entry>,
        bundle: Option<&SpiffeBundle>,
        tainted: &[String],
    ) -> Result<EntryChanges, CacheError> {
        let bundle = match bundle {
            Some(b) if b.x509_authorities.is_empty() => return Err(CacheError::EmptyBundle),
            Some(b) => Some(Arc::new(TrustBundle {
                spiffe: b.clone(),
                x509: b.x509_bundle().map_err(|e| CacheError::BadBundle(e.to_string()))?,
                jwt: b.jwt_bundle().map_err(|e| CacheError::BadBundle(e.to_string()))?,
            })),
            None => None,
        };
        let _writer = lock(&self.writer);
        let current = self.current();
        let mut changes = EntryChanges::default();
        let mut next = State { tainted: tainted.to_vec(), ..State::default() };
        for (id, e) in entries {
            let Some((spiffe_id, selectors)) = parse_entry(e) else {
                tracing::warn!(entry_id = %id, "skipping an entry the agent cannot parse");
                changes.skipped += 1;
                continue;
            };
            let mut cached = CachedEntry {
                spiffe_id,
                selectors,
                hint: e.hint.clone(),
                dns_names: e.dns_names.clone(),
                x509_ttl_seconds: e.x509_ttl_seconds,
                stale: false,
                svid: None,
            };
            match current.entries.get(id) {
                Some(old) if old.spiffe_id == cached.spiffe_id => {
                    cached.svid = old.svid.clone();
                    cached.stale = old.stale
                        || old.dns_names != cached.dns_names
                        || old.x509_ttl_seconds != cached.x509_ttl_seconds;
                }
                Some(_) => {}
                None => changes.added += 1,
            }
            next.entries.insert(id.clone(), cached);
        }
        changes.removed =
            current.entries.keys().filter(|id| !next.entries.contains_key(*id)).count();
        next.bundle = current.bundle.clone();
        if let Some(bundle) = bundle
            && current.bundle.as_deref() != Some(&*bundle)
        {
            Self::mark_unverifiable(&mut next, &bundle, self.clock.now());
            next.bundle = Some(bundle);
        }
        self.install(next);
        Ok(changes)
    }

    /// Marks for replacement every SVID that no longer chains to `bundle` (its authority
    /// was removed from the bundle, e.g. revoked): it is renewed in the next round instead
    /// of at its planned time.
    fn mark_unverifiable(state: &mut State, bundle: &TrustBundle, now: SystemTime) {
        let mut set = X509BundleSet::new();
        set.insert(bundle.x509.clone());
        for (id, entry) in state.entries.iter_mut() {
            let Some(svid) = &entry.svid else { continue };
            if let Err(e) = keycard_workload_api::verify_chain(&svid.chain, &set, unix_time(now)) {
                tracing::info!(entry_id = %id, error = %e, "SVID no longer chains to the bundle; renewing it now");
                entry.stale = true;
            }
        }
    }

    /// Entries that need an SVID at `now`: none yet, entry changed, authority tainted,
    /// or renewal time reached. Lowest entry ID first.
    pub fn due(&self, now: SystemTime) -> Vec<DueEntry> {
        let state = self.current();
        state
            .entries
            .iter()
            .filter_map(|(id, e)| {
                let previous_due = match &e.svid {
                    None => None,
                    Some(_) if e.stale => None,
                    Some(s) => {
                        let tainted =
                            s.authority_id.as_ref().is_some_and(|a| state.tainted.contains(a));
                        if tainted {
                            None
                        } else if super::renewal::renewal_due(now, s.renew_at, false) {
                            Some(s.renew_at)
                        } else {
                            return None;
                        }
                    }
                };
                Some(DueEntry { entry_id: id.clone(), previous_due })
            })
            .collect()
    }

    /// Checks each new SVID (chain to the current bundle, the entry's SPIFFE ID, the
    /// agent's key, not expired) and puts the good ones in place of the old ones; a bad
    /// one is refused and the old SVID kept. Subscribers are told once, at the end.
    pub fn update_svids(&self, svids: Vec<NewSvid>) -> Vec<Result<(), CacheError>> {
        let _writer = lock(&self.writer);
        let now = self.clock.now();
        let mut next = State::clone(&self.current());
        let results =
            svids.into_iter().map(|svid| Self::update_one(&mut next, svid, now)).collect();
        self.install(next);
        results
    }

    fn update_one(state: &mut State, new: NewSvid, now: SystemTime) -> Result<(), CacheError> {
        let entry_id = new.entry_id.clone();
        let bundle = state.bundle.clone().ok_or(CacheError::NoBundle)?;
        let entry = state
            .entries
            .get_mut(&entry_id)
            .ok_or_else(|| CacheError::UnknownEntry(entry_id.clone()))?;
        let bad = |reason: String| CacheError::BadChain { entry_id: entry_id.clone(), reason };
        let mut set = X509BundleSet::new();
        set.insert(bundle.x509.clone());
        let id = keycard_workload_api::verify_chain(&new.chain, &set, unix_time(now))
            .map_err(|e| bad(e.to_string()))?;
        if id != entry.spiffe_id {
            return Err(CacheError::WrongId {
                entry_id,
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
            return Err(CacheError::KeyMismatch(entry_id));
        }
        entry.stale = false;
        entry.svid = Some(Arc::new(CachedSvid {
            entry_id: new.entry_id,
            spiffe_id: id,
            chain: new.chain,
            key: new.key,
            serial: new.serial,
            issued_at: new.issued_at,
            expires_at,
            authority_id,
            renew_at: new.renew_at,
        }));
        Ok(())
    }

    /// Every entry with its selectors and its SVID's expiry, lowest entry ID first.
    pub fn entry_views(&self) -> Vec<EntryView> {
        self.current()
            .entries
            .iter()
            .map(|(id, e)| EntryView {
                entry_id: id.clone(),
                spiffe_id: e.spiffe_id.clone(),
                selectors: e.selectors.clone(),
                hint: e.hint.clone(),
                svid_expires_at: e.svid.as_ref().map(|s| s.expires_at),
            })
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
pub(crate) use test_support::test_svid;

#[cfg(test)]
mod tests;

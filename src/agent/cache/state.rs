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
use std::sync::Arc;
use std::time::SystemTime;

use keycard_workload_api::{SpiffeId, TrustDomain};
use rustls_pki_types::CertificateDer;

use super::{CachedSvid, DueEntry, FederatedBundles, TrustBundle, WorkloadSvid};
use crate::selector::{Selector, SelectorSet};

/// One entry as the cache keeps it: parsed once when synced.
#[derive(Debug, Clone)]
pub(super) struct CachedEntry {
    pub(super) spiffe_id: SpiffeId,
    pub(super) selectors: SelectorSet,
    pub(super) hint: String,
    pub(super) dns_names: Vec<String>,
    pub(super) x509_ttl_seconds: i64,
    /// Whether the entry's JWT-SVIDs are bound to its X.509-SVID (`jwt_svid_binding`).
    pub(super) jwt_bound: bool,
    /// The foreign trust domains whose bundles the entry's workloads receive, sorted and
    /// without duplicates.
    pub(super) federates_with: Vec<TrustDomain>,
    /// Set when the entry changed in a way its SVID must follow (DNS names, TTL).
    pub(super) stale: bool,
    pub(super) svid: Option<Arc<CachedSvid>>,
    /// The SVID as workloads get it, made once per SVID (and hint): every caller's set
    /// shares its chain.
    pub(super) served: Option<WorkloadSvid>,
}

impl CachedEntry {
    /// Puts `svid` in place, with the form workloads get.
    pub(super) fn set_svid(&mut self, svid: Arc<CachedSvid>) {
        let chain: Arc<[CertificateDer<'static>]> = svid.chain.clone();
        self.served = Some(WorkloadSvid {
            entry_id: svid.entry_id.clone(),
            spiffe_id: svid.spiffe_id.clone(),
            chain,
            key: svid.key.clone(),
            serial: svid.serial.clone(),
            expires_at: svid.expires_at,
            hint: self.hint.clone(),
        });
        self.svid = Some(svid);
    }

    /// Whether a caller with `selectors` is entitled to this entry. An entry with no
    /// selectors matches nobody (the empty set would otherwise match every caller).
    pub(super) fn matches(&self, selectors: &SelectorSet) -> bool {
        !self.selectors.is_empty() && self.selectors.is_subset_of(selectors)
    }

    /// Whether `other` holds the same entry and SVID in every field the cache keeps.
    pub(super) fn same_as(&self, other: &CachedEntry) -> bool {
        !self.serves_differently_from(other)
            && self.dns_names == other.dns_names
            && self.x509_ttl_seconds == other.x509_ttl_seconds
            && self.jwt_bound == other.jwt_bound
            && self.stale == other.stale
    }

    /// What a workload sees of this entry changed from `old` (SVID, ID, hint, selectors,
    /// the trust domains it federates with).
    pub(super) fn serves_differently_from(&self, old: &CachedEntry) -> bool {
        let same_svid = match (&self.svid, &old.svid) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        !same_svid
            || self.spiffe_id != old.spiffe_id
            || self.hint != old.hint
            || self.selectors != old.selectors
            || self.federates_with != old.federates_with
    }
}

/// What readers see: never changed once published, replaced whole by writers.
#[derive(Debug, Default, Clone)]
pub(super) struct State {
    entries: BTreeMap<String, Arc<CachedEntry>>,
    pub(super) bundle: Option<Arc<TrustBundle>>,
    /// Every foreign bundle the agent holds; shared between states until it changes.
    pub(super) federated: Arc<FederatedBundles>,
    pub(super) tainted: Vec<String>,
    /// Entries whose SVID renews on schedule, by renewal time.
    renewals: BTreeSet<(SystemTime, String)>,
    /// Entries that need an SVID at the next round, whatever the time.
    urgent: BTreeSet<String>,
    /// For each selector, the entries naming it; shared between states until an entry
    /// sync rebuilds it.
    by_selector: Arc<HashMap<Selector, Vec<String>>>,
}

impl State {
    /// An empty state with these tainted authorities.
    pub(super) fn with_tainted(tainted: Vec<String>) -> Self {
        Self { tainted, ..Self::default() }
    }

    /// The entries, lowest ID first.
    pub(super) fn entries(&self) -> &BTreeMap<String, Arc<CachedEntry>> {
        &self.entries
    }

    /// One entry.
    pub(super) fn entry(&self, id: &str) -> Option<&Arc<CachedEntry>> {
        self.entries.get(id)
    }

    /// When the entry's SVID is due on schedule; `None` when it is due at once.
    fn schedule(&self, e: &CachedEntry) -> Option<SystemTime> {
        let svid = e.svid.as_ref()?;
        let tainted = svid.authority_id.as_ref().is_some_and(|a| self.tainted.contains(a));
        if e.stale || tainted { None } else { Some(svid.renew_at) }
    }

    fn unindex(&mut self, id: &str, e: &CachedEntry) {
        match self.schedule(e) {
            Some(at) => self.renewals.remove(&(at, id.to_owned())),
            None => self.urgent.remove(id),
        };
    }

    /// Puts `entry` under `id`, replacing the one there, and keeps the renewal index in
    /// step. Entries with new selectors need [`State::reindex_selectors`] afterwards.
    pub(super) fn put(&mut self, id: String, entry: Arc<CachedEntry>) {
        if let Some(old) = self.entries.get(&id).cloned() {
            self.unindex(&id, &old);
        }
        match self.schedule(&entry) {
            Some(at) => self.renewals.insert((at, id.clone())),
            None => self.urgent.insert(id.clone()),
        };
        self.entries.insert(id, entry);
    }

    /// Changes one entry in place (copied first if an older state still shares it).
    pub(super) fn update<R>(
        &mut self,
        id: &str,
        change: impl FnOnce(&mut CachedEntry) -> R,
    ) -> Option<R> {
        let mut entry = self.entries.get(id)?.clone();
        let result = change(Arc::make_mut(&mut entry));
        self.put(id.to_owned(), entry);
        Some(result)
    }

    /// Marks every entry for renewal at the next round that `stale` says must be.
    pub(super) fn mark_stale(&mut self, stale: impl Fn(&CachedEntry) -> bool) {
        let ids: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.stale && stale(e))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.update(&id, |e| e.stale = true);
        }
    }

    /// Rebuilds the selector index from the entries (after an entry sync).
    pub(super) fn reindex_selectors(&mut self) {
        let mut index: HashMap<Selector, Vec<String>> = HashMap::new();
        for (id, e) in &self.entries {
            for s in e.selectors.iter() {
                index.entry(s.clone()).or_default().push(id.clone());
            }
        }
        self.by_selector = Arc::new(index);
    }

    /// The entries a caller with `selectors` is entitled to, lowest entry ID first,
    /// whether they hold an SVID yet or not. Looks only at the entries that name one of
    /// the caller's selectors.
    pub(super) fn entries_for<'a>(
        &'a self,
        selectors: &'a SelectorSet,
    ) -> impl Iterator<Item = (&'a String, &'a Arc<CachedEntry>)> + 'a {
        let candidates: BTreeSet<&String> =
            selectors.iter().filter_map(|s| self.by_selector.get(s)).flatten().collect();
        candidates
            .into_iter()
            .filter_map(|id| self.entries.get_key_value(id))
            .filter(|(_, e)| e.matches(selectors))
    }

    /// The SVIDs of every entry a caller with `selectors` is entitled to, lowest entry ID
    /// first; entries without an SVID yet are left out.
    pub(super) fn svids_in(&self, selectors: &SelectorSet) -> Vec<WorkloadSvid> {
        self.entries_for(selectors).filter_map(|(_, e)| e.served.clone()).collect()
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
}

//! One entry as the cache keeps it: parsed once when synced, in the compact form the cache
//! serves from, with the entry's revision (what the revision-list sync compares) and, once
//! issued, its SVID.
//!
//! The cache is the agent's only copy of its entries: the disk cache writes them back as
//! protobuf ([`CachedEntry::to_pb`]) with the fields the agent uses.

use std::sync::Arc;

use keycard_workload_api::{SpiffeId, TrustDomain};

use super::{CachedSvid, EntryId, WorkloadSvid, federated};
use crate::selector::{Selector, SelectorSet};
use crate::wire::proto as pb;

/// The `jwt_svid_binding` value that binds an entry's JWT-SVIDs to its X.509-SVID.
const JWT_BOUND: &str = "x509";

/// One entry as the cache keeps it; see the module documentation.
#[derive(Debug, Clone)]
pub(super) struct CachedEntry {
    /// The entry's revision on the server.
    pub(super) revision: u64,
    pub(super) spiffe_id: SpiffeId,
    pub(super) selectors: SelectorSet,
    /// Shared with the form workloads get ([`WorkloadSvid::hint`]).
    pub(super) hint: Arc<str>,
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
}

impl CachedEntry {
    /// The entry `e` as the cache keeps it, without an SVID; `None` when its SPIFFE ID or a
    /// selector does not parse.
    pub(super) fn parse(e: &pb::Entry) -> Option<Self> {
        let spiffe_id = SpiffeId::parse(&e.spiffe_id).ok()?;
        let selectors: Result<SelectorSet, _> =
            e.selectors.iter().map(|s| Selector::parse(s)).collect();
        Some(Self {
            revision: e.revision,
            spiffe_id,
            selectors: selectors.ok()?,
            hint: shared_hint(&e.hint),
            dns_names: e.dns_names.clone(),
            x509_ttl_seconds: e.x509_ttl_seconds,
            jwt_bound: e.jwt_svid_binding == JWT_BOUND,
            federates_with: federated::parse_federates_with(e),
            stale: false,
            svid: None,
        })
    }

    /// The entry as protobuf, with the fields the agent uses (for the disk cache).
    pub(super) fn to_pb(&self, id: &str) -> pb::Entry {
        pb::Entry {
            id: id.to_owned(),
            revision: self.revision,
            spiffe_id: self.spiffe_id.to_string(),
            selectors: self.selectors.iter().map(Selector::to_string).collect(),
            dns_names: self.dns_names.clone(),
            hint: self.hint.to_string(),
            x509_ttl_seconds: self.x509_ttl_seconds,
            jwt_svid_binding: if self.jwt_bound { JWT_BOUND.to_owned() } else { String::new() },
            federates_with: self.federates_with.iter().map(|td| td.name().to_owned()).collect(),
            ..Default::default()
        }
    }

    /// Takes over what `old` (the entry held under the same ID) holds that still applies:
    /// its SVID when the SPIFFE ID is the same (marked stale when the DNS names or TTL
    /// changed), and the shared hint when it is equal.
    pub(super) fn carry_over(&mut self, old: &CachedEntry) {
        if *self.hint == *old.hint {
            self.hint = old.hint.clone();
        }
        if old.spiffe_id != self.spiffe_id {
            return;
        }
        self.svid = old.svid.clone();
        self.stale = old.stale
            || old.dns_names != self.dns_names
            || old.x509_ttl_seconds != self.x509_ttl_seconds;
    }

    /// The SVID as workloads get it, if the entry has one: every part of it is shared with
    /// the cached SVID and the entry (made from pointers, never kept).
    pub(super) fn served(&self) -> Option<WorkloadSvid> {
        let svid = self.svid.as_ref()?;
        Some(WorkloadSvid {
            entry_id: svid.entry_id.clone(),
            spiffe_id: svid.spiffe_id.clone(),
            chain: svid.chain.clone(),
            key: svid.key.clone(),
            serial: svid.serial.clone(),
            expires_at: svid.expires_at,
            hint: self.hint.clone(),
        })
    }

    /// Whether a caller with `selectors` is entitled to this entry. An entry with no
    /// selectors matches nobody (the empty set would otherwise match every caller).
    pub(super) fn matches(&self, selectors: &SelectorSet) -> bool {
        !self.selectors.is_empty() && self.selectors.is_subset_of(selectors)
    }

    /// Whether `other` holds the same entry (revision included) and SVID in every field
    /// the cache keeps.
    pub(super) fn same_as(&self, other: &CachedEntry) -> bool {
        !self.serves_differently_from(other)
            && self.revision == other.revision
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

/// `hint` as the cache keeps it: the empty hint (most entries') is one shared value.
fn shared_hint(hint: &str) -> Arc<str> {
    static EMPTY: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    if hint.is_empty() { EMPTY.get_or_init(|| Arc::from("")).clone() } else { Arc::from(hint) }
}

/// The entry's ID as the cache shares it: the one `held` already uses for it, else a new one.
pub(super) fn shared_id(held: Option<&EntryId>, id: &str) -> EntryId {
    held.cloned().unwrap_or_else(|| Arc::from(id))
}

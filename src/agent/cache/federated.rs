//! The cache's share of federation: the bundles of foreign trust domains it holds (the
//! whole set the server sends, replaced whole), and which of them an entry names.
//!
//! A caller set's share is worked out in [`super::state`] (`federated_for`: the trust
//! domains the entries of its SVIDs federate with, among the ones held). Sets are kept
//! sharing their bundles' `Arc`s across syncs that resend equal bundles, so that comparing
//! two snapshots' bundles is mostly a pointer comparison and an unchanged set wakes nobody.

use std::collections::BTreeMap;
use std::sync::Arc;

use keycard_workload_api::TrustDomain;

use super::TrustBundle;
use crate::wire::proto as pb;

/// Bundles of foreign trust domains, by trust domain: every one the agent holds (the
/// server sends them all), or those one caller set may have (the union of the
/// `federates_with` of the entries it holds SVIDs of, restricted to the bundles held).
pub type FederatedBundles = BTreeMap<TrustDomain, Arc<TrustBundle>>;

/// Whether two federated sets hold the same bundles (pointer comparisons first: sets made
/// from one cache state share their bundles).
pub fn same_federated(a: &FederatedBundles, b: &FederatedBundles) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|((ta, ba), (tb, bb))| ta == tb && (Arc::ptr_eq(ba, bb) || ba == bb))
}

/// The entry's `federates_with` as trust domains, sorted and without duplicates; a name
/// that is not a trust domain is skipped (and logged), the rest kept.
pub(super) fn parse_federates_with(e: &pb::Entry) -> Vec<TrustDomain> {
    let mut out: Vec<TrustDomain> = e
        .federates_with
        .iter()
        .filter_map(|name| match TrustDomain::new(name) {
            Ok(td) => Some(td),
            Err(err) => {
                tracing::warn!(entry_id = %e.id, federates_with = %name, error = %err, "skipping a federated trust domain the agent cannot parse");
                None
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// `set`, sharing what is unchanged with `held`: the same `Arc` when nothing differs
/// (so that publishes see no change), and each unchanged bundle's `Arc` otherwise.
pub(super) fn keep_shared(
    held: &Arc<FederatedBundles>,
    set: FederatedBundles,
) -> Arc<FederatedBundles> {
    if same_federated(held, &set) {
        return held.clone();
    }
    let set = set
        .into_iter()
        .map(|(td, bundle)| match held.get(&td) {
            Some(old) if **old == *bundle => (td, old.clone()),
            _ => (td, bundle),
        })
        .collect();
    Arc::new(set)
}

//! Which federated bundles the agent takes from a sync that sent the set.
//!
//! The server sends every foreign bundle it holds, as one set that replaces the agent's
//! (the Workload API then serves each caller only those its entries federate with). Each
//! bundle is parsed on its own: one the agent cannot read (bad JSON, a bad authority) is
//! logged with its trust domain and the bundle held for that domain, if any, is kept, so
//! that one foreign domain's bad bundle never costs the others (nor fails the sync). A
//! bundle for the agent's own trust domain has no place in the set: it is ignored, with a
//! warning, and the own bundle comes only from the server's own field.

use std::sync::Arc;

use keycard_workload_api::{SpiffeBundle, TrustDomain};

use crate::agent::cache::{CacheError, FederatedBundles, TrustBundle};
use crate::agent::client::FederatedUpdate;

/// Why one federated bundle of a sync was not taken.
#[derive(Debug, thiserror::Error)]
enum Refused {
    /// The map key is not a trust domain name.
    #[error("not a trust domain name: {0}")]
    Name(String),
    /// The bundle JSON does not parse.
    #[error("bad bundle JSON: {0}")]
    Json(#[from] keycard_workload_api::BundleJsonError),
    /// Its X.509 or JWT form cannot be made.
    #[error(transparent)]
    Forms(#[from] CacheError),
}

fn parse(td: &TrustDomain, json: &[u8]) -> Result<TrustBundle, Refused> {
    let spiffe = SpiffeBundle::parse(td.clone(), json)?;
    Ok(TrustBundle::of(&spiffe)?)
}

/// The set to hold after `update`: every bundle that parses, and for one that does not the
/// bundle `held` for its trust domain (if any); never one of `own` trust domain.
pub(super) fn merge(
    own: &TrustDomain,
    held: &FederatedBundles,
    update: &FederatedUpdate,
) -> FederatedBundles {
    let mut out = FederatedBundles::new();
    for (name, json) in &update.bundles {
        let td = match TrustDomain::new(name) {
            Ok(td) => td,
            Err(_) => {
                let e = Refused::Name(name.clone());
                tracing::warn!(trust_domain = %name, error = %e, "ignoring a federated bundle");
                continue;
            }
        };
        if td == *own {
            tracing::warn!(trust_domain = %name, "ignoring a federated bundle for the agent's own trust domain");
            continue;
        }
        match parse(&td, json) {
            Ok(bundle) => {
                out.insert(td, Arc::new(bundle));
            }
            Err(e) => {
                let kept = held.get(&td);
                tracing::warn!(trust_domain = %name, error = %e, kept_previous = kept.is_some(), "cannot read the federated bundle the server sent");
                if let Some(previous) = kept {
                    out.insert(td, previous.clone());
                }
            }
        }
    }
    out
}

/// The SPIFFE forms of `set`, as [`crate::agent::client::SyncedEntries`] keeps them.
pub(super) fn spiffe_forms(
    set: &FederatedBundles,
) -> std::collections::BTreeMap<TrustDomain, SpiffeBundle> {
    set.iter().map(|(td, b)| (td.clone(), b.spiffe.clone())).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).unwrap()
    }

    fn bundle_json(name: &str) -> Vec<u8> {
        crate::ca::manager::test_ca(td(name)).bundle().unwrap().to_json().unwrap().into_bytes()
    }

    fn update(items: &[(&str, Vec<u8>)]) -> FederatedUpdate {
        let bundles: BTreeMap<String, Vec<u8>> =
            items.iter().map(|(n, j)| (n.to_string(), j.clone())).collect();
        FederatedUpdate { bundles, digest: b"d1".to_vec() }
    }

    #[test]
    fn every_good_bundle_is_taken_and_the_own_domain_ignored() {
        let own = td("example.org");
        let set = update(&[
            ("example.com", bundle_json("example.com")),
            ("example.net", bundle_json("example.net")),
            ("example.org", bundle_json("example.org")),
        ]);
        let merged = merge(&own, &FederatedBundles::new(), &set);
        assert_eq!(
            merged.keys().map(TrustDomain::name).collect::<Vec<_>>(),
            ["example.com", "example.net"]
        );
        let com = &merged[&td("example.com")];
        assert_eq!(com.x509.trust_domain(), &td("example.com"));
        assert!(!com.jwt.is_empty(), "the JWT form is made too");
    }

    #[test]
    fn a_bad_bundle_keeps_the_previous_one_of_its_domain_and_costs_no_other() {
        let own = td("example.org");
        let first = merge(
            &own,
            &FederatedBundles::new(),
            &update(&[("example.com", bundle_json("example.com"))]),
        );
        let next = update(&[
            ("example.com", b"{not json".to_vec()),
            ("example.net", bundle_json("example.net")),
            ("bad.example", br#"{"keys":[{"use":"x509-svid","x5c":["not base64!"]}]}"#.to_vec()),
            ("Not A Domain!", bundle_json("example.net")),
        ]);
        let merged = merge(&own, &first, &next);
        assert!(Arc::ptr_eq(&merged[&td("example.com")], &first[&td("example.com")]), "kept");
        assert!(merged.contains_key(&td("example.net")));
        assert!(!merged.contains_key(&td("bad.example")), "nothing held to keep for it");
        assert_eq!(merged.len(), 2);
    }

    #[test]
    fn an_empty_set_means_none_any_more() {
        let own = td("example.org");
        let held = merge(
            &own,
            &FederatedBundles::new(),
            &update(&[("example.com", bundle_json("example.com"))]),
        );
        assert!(merge(&own, &held, &update(&[])).is_empty());
    }
}

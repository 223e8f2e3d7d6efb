//! A set of bundles keyed by trust domain: our own and federated ones.
//!
//! Peers are verified with the bundle of *their* trust domain, so both kinds of bundle
//! live in a map from trust domain to bundle. [`crate::X509BundleSet`] and
//! [`crate::JwtBundleSet`] are this one type over the two kinds of bundle.

use std::collections::BTreeMap;

use crate::{SpiffeId, TrustDomain};

/// A bundle that belongs to one trust domain.
pub trait TrustDomainBundle {
    /// The trust domain whose authorities the bundle holds.
    fn trust_domain(&self) -> &TrustDomain;
}

/// Bundles of several trust domains, at most one per domain, ordered by domain name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleSet<B> {
    bundles: BTreeMap<TrustDomain, B>,
}

impl<B> Default for BundleSet<B> {
    fn default() -> Self {
        Self { bundles: BTreeMap::new() }
    }
}

impl<B: TrustDomainBundle> BundleSet<B> {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the bundle of its trust domain; returns the replaced one.
    pub fn insert(&mut self, bundle: B) -> Option<B> {
        self.bundles.insert(bundle.trust_domain().clone(), bundle)
    }

    /// The bundle of `trust_domain`.
    pub fn get(&self, trust_domain: &TrustDomain) -> Option<&B> {
        self.bundles.get(trust_domain)
    }

    /// The bundle of the trust domain `id` belongs to.
    pub fn get_for_id(&self, id: &SpiffeId) -> Option<&B> {
        self.bundles.get(&id.trust_domain())
    }

    /// The bundle of `trust_domain`, to edit in place.
    pub fn get_mut(&mut self, trust_domain: &TrustDomain) -> Option<&mut B> {
        self.bundles.get_mut(trust_domain)
    }

    /// Removes and returns the bundle of `trust_domain`.
    pub fn remove(&mut self, trust_domain: &TrustDomain) -> Option<B> {
        self.bundles.remove(trust_domain)
    }

    /// The bundles, ordered by trust domain name.
    pub fn iter(&self) -> impl Iterator<Item = &B> {
        self.bundles.values()
    }

    /// Number of trust domains.
    pub fn len(&self) -> usize {
        self.bundles.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.bundles.is_empty()
    }
}

impl<B: TrustDomainBundle> FromIterator<B> for BundleSet<B> {
    fn from_iter<I: IntoIterator<Item = B>>(iter: I) -> Self {
        let mut set = Self::new();
        for bundle in iter {
            set.insert(bundle);
        }
        set
    }
}

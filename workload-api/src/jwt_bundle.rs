//! JWT bundles: the public keys (JWT authorities) that a trust domain signs JWT-SVIDs with,
//! each named by its key ID (`kid`), and a set of such bundles keyed by trust domain.
//!
//! For the JSON form (a SPIFFE bundle JWK Set) see [`crate::bundle_json`].

use crate::bundle_set::{BundleSet, TrustDomainBundle};
use std::collections::BTreeMap;

use crate::jwk::Jwk;
use crate::spiffe_id::TrustDomain;

/// What a caller can get wrong when editing a bundle.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtBundleError {
    /// JWT authorities are looked up by `kid`, so it cannot be empty.
    #[error("a JWT authority needs a non-empty key ID")]
    EmptyKid,
}

/// The JWT authorities of one trust domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtBundle {
    trust_domain: TrustDomain,
    /// Keyed by `kid`; a BTreeMap so that iteration and serialization are deterministic.
    authorities: BTreeMap<String, Jwk>,
}

impl JwtBundle {
    /// An empty bundle for `trust_domain` (an empty bundle trusts no JWT-SVIDs).
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self { trust_domain, authorities: BTreeMap::new() }
    }

    /// A bundle holding `authorities`; fails on an empty key ID.
    pub fn from_authorities(
        trust_domain: TrustDomain,
        authorities: impl IntoIterator<Item = (String, Jwk)>,
    ) -> Result<Self, JwtBundleError> {
        let mut bundle = Self::new(trust_domain);
        for (kid, key) in authorities {
            bundle.add_authority(kid, key)?;
        }
        Ok(bundle)
    }

    /// The trust domain whose JWT-SVIDs these keys verify.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// All authorities, by key ID.
    pub fn authorities(&self) -> &BTreeMap<String, Jwk> {
        &self.authorities
    }

    /// The authority with key ID `kid`.
    pub fn authority(&self, kid: &str) -> Option<&Jwk> {
        self.authorities.get(kid)
    }

    /// Adds or replaces the authority `kid`, returning the key it replaced.
    pub fn add_authority(
        &mut self,
        kid: impl Into<String>,
        key: Jwk,
    ) -> Result<Option<Jwk>, JwtBundleError> {
        let kid = kid.into();
        if kid.is_empty() {
            return Err(JwtBundleError::EmptyKid);
        }
        Ok(self.authorities.insert(kid, key))
    }

    /// Removes the authority `kid`, returning it if it was present.
    pub fn remove_authority(&mut self, kid: &str) -> Option<Jwk> {
        self.authorities.remove(kid)
    }

    /// Number of authorities.
    pub fn len(&self) -> usize {
        self.authorities.len()
    }

    /// True when the bundle holds no authority.
    pub fn is_empty(&self) -> bool {
        self.authorities.is_empty()
    }
}

/// JWT bundles of several trust domains (our own and federated ones), one per domain.
pub type JwtBundleSet = BundleSet<JwtBundle>;

impl TrustDomainBundle for JwtBundle {
    fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jws::Es256Signer;

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).unwrap()
    }

    fn key() -> Jwk {
        Es256Signer::generate().unwrap().public_jwk().clone()
    }

    #[test]
    fn authorities_are_added_found_replaced_and_removed_by_kid() {
        let mut b = JwtBundle::new(td("example.org"));
        assert!(b.is_empty());
        let (k1, k2) = (key(), key());
        assert_eq!(b.add_authority("a", k1.clone()), Ok(None));
        assert_eq!(b.add_authority("b", k2.clone()), Ok(None));
        assert_eq!(b.authority("a"), Some(&k1));
        assert_eq!(b.authority("c"), None);
        assert_eq!(b.add_authority("a", k2.clone()), Ok(Some(k1)));
        assert_eq!(b.remove_authority("a"), Some(k2));
        assert_eq!(b.remove_authority("a"), None);
        assert_eq!(b.authorities().keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn empty_kid_is_refused() {
        let mut b = JwtBundle::new(td("example.org"));
        assert_eq!(b.add_authority("", key()), Err(JwtBundleError::EmptyKid));
        let res = JwtBundle::from_authorities(td("example.org"), [(String::new(), key())]);
        assert_eq!(res, Err(JwtBundleError::EmptyKid));
    }

    #[test]
    fn set_keeps_one_bundle_per_trust_domain() {
        let mut one = JwtBundle::new(td("one.org"));
        one.add_authority("k", key()).unwrap();
        let mut set: JwtBundleSet =
            [JwtBundle::new(td("two.org")), JwtBundle::new(td("one.org"))].into_iter().collect();
        assert_eq!(set.len(), 2);
        assert!(set.insert(one.clone()).is_some_and(|old| old.is_empty()));
        assert_eq!(set.get(&td("one.org")), Some(&one));
        assert!(set.get(&td("three.org")).is_none());
        let names: Vec<_> = set.iter().map(|b| b.trust_domain().name().to_owned()).collect();
        assert_eq!(names, ["one.org", "two.org"]);
        set.get_mut(&td("two.org")).unwrap().add_authority("x", key()).unwrap();
        assert_eq!(set.remove(&td("two.org")).unwrap().len(), 1);
        assert_eq!(set.len(), 1);
    }
}

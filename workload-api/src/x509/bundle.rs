//! X.509 bundles: the CA certificates (authorities) a trust domain's SVIDs chain up to,
//! and the set of bundles a workload trusts, keyed by trust domain.

use crate::bundle_set::{BundleSet, TrustDomainBundle};
use std::fmt;

use rustls_pki_types::{CertificateDer, TrustAnchor};

use super::error::X509BundleError;
use super::{PemProblem, pem_certificates};
use crate::spiffe_id::TrustDomain;

/// The X.509 authorities of one trust domain.
///
/// Every authority is well-formed DER X.509 usable as a webpki trust anchor, and no
/// authority appears twice; order of insertion is kept.
#[derive(Clone, PartialEq, Eq)]
pub struct X509Bundle {
    trust_domain: TrustDomain,
    authorities: Vec<CertificateDer<'static>>,
}

impl X509Bundle {
    /// An empty bundle for `trust_domain`.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self { trust_domain, authorities: Vec::new() }
    }

    /// A bundle of the given DER certificates; duplicates are dropped.
    pub fn from_authorities(
        trust_domain: TrustDomain,
        authorities: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Result<Self, X509BundleError> {
        let mut bundle = Self::new(trust_domain);
        for (index, cert) in authorities.into_iter().enumerate() {
            check_authority(&cert, index)?;
            bundle.push_unique(cert);
        }
        Ok(bundle)
    }

    /// Parses concatenated DER certificates, the form of the Workload API `bundle` fields.
    pub fn parse_der(trust_domain: TrustDomain, der: &[u8]) -> Result<Self, X509BundleError> {
        let mut certs = Vec::new();
        let mut rest = der;
        while !rest.is_empty() {
            let index = certs.len();
            let (after, _) = x509_parser::parse_x509_certificate(rest)
                .map_err(|e| X509BundleError::Der { index, reason: e.to_string() })?;
            let (one, after) = rest.split_at(rest.len() - after.len());
            certs.push(CertificateDer::from(one.to_vec()));
            rest = after;
        }
        Self::from_authorities(trust_domain, certs)
    }

    /// Parses PEM text holding one or more `CERTIFICATE` blocks.
    pub fn parse_pem(trust_domain: TrustDomain, pem: &str) -> Result<Self, X509BundleError> {
        let certs = pem_certificates(pem).map_err(|p| match p {
            PemProblem::Decode(reason) => X509BundleError::Pem(reason),
            PemProblem::Label { index, label } => {
                X509BundleError::UnexpectedPemLabel { index, label }
            }
        })?;
        Self::from_authorities(trust_domain, certs)
    }

    /// The trust domain these authorities sign for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The authorities, in insertion order.
    pub fn authorities(&self) -> &[CertificateDer<'static>] {
        &self.authorities
    }

    /// Adds an authority; returns `false` (and changes nothing) if it was already present.
    pub fn add_authority(
        &mut self,
        cert: CertificateDer<'static>,
    ) -> Result<bool, X509BundleError> {
        check_authority(&cert, self.authorities.len())?;
        Ok(self.push_unique(cert))
    }

    /// Removes an authority; returns whether it was present.
    pub fn remove_authority(&mut self, cert: &CertificateDer<'_>) -> bool {
        let before = self.authorities.len();
        self.authorities.retain(|c| c.as_ref() != cert.as_ref());
        self.authorities.len() != before
    }

    /// Whether `cert` is one of the authorities.
    pub fn contains_authority(&self, cert: &CertificateDer<'_>) -> bool {
        self.authorities.iter().any(|c| c.as_ref() == cert.as_ref())
    }

    /// Number of authorities.
    pub fn len(&self) -> usize {
        self.authorities.len()
    }

    /// Whether the bundle has no authority (nothing of this trust domain is trusted).
    pub fn is_empty(&self) -> bool {
        self.authorities.is_empty()
    }

    /// The authorities as PEM `CERTIFICATE` blocks, LF line endings.
    pub fn to_pem(&self) -> String {
        let blocks: Vec<pem::Pem> =
            self.authorities.iter().map(|c| pem::Pem::new("CERTIFICATE", c.to_vec())).collect();
        pem::encode_many_config(
            &blocks,
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        )
    }

    /// The authorities as concatenated DER, the Workload API form.
    pub fn to_der(&self) -> Vec<u8> {
        self.authorities.iter().flat_map(|c| c.as_ref().iter().copied()).collect()
    }

    /// The authorities as webpki trust anchors.
    pub(crate) fn trust_anchors(&self) -> Vec<TrustAnchor<'_>> {
        // Every authority passed `check_authority`, so none is skipped in practice.
        self.authorities.iter().filter_map(|c| webpki::anchor_from_trusted_cert(c).ok()).collect()
    }

    fn push_unique(&mut self, cert: CertificateDer<'static>) -> bool {
        if self.contains_authority(&cert) {
            return false;
        }
        self.authorities.push(cert);
        true
    }
}

impl fmt::Debug for X509Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509Bundle")
            .field("trust_domain", &self.trust_domain)
            .field("authorities", &self.authorities.len())
            .finish()
    }
}

/// Checks that `cert` is DER X.509 that webpki accepts as a trust anchor.
/// Checks that `cert` (at `index`) is one well-formed DER certificate that webpki takes as
/// a trust anchor: the rule every authority of an [`X509Bundle`] meets.
pub(crate) fn check_authority(
    cert: &CertificateDer<'_>,
    index: usize,
) -> Result<(), X509BundleError> {
    match x509_parser::parse_x509_certificate(cert.as_ref()) {
        Ok(([], _)) => {}
        Ok(_) => {
            let reason = "trailing data after the certificate".to_owned();
            return Err(X509BundleError::Der { index, reason });
        }
        Err(e) => return Err(X509BundleError::Der { index, reason: e.to_string() }),
    }
    webpki::anchor_from_trusted_cert(cert)
        .map(|_| ())
        .map_err(|e| X509BundleError::Der { index, reason: format!("{e:?}") })
}

/// The X.509 bundles a workload trusts, one per trust domain.
pub type X509BundleSet = BundleSet<X509Bundle>;

impl TrustDomainBundle for X509Bundle {
    fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SpiffeId;
    use crate::x509::test_support::{ca_params, root};

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).unwrap()
    }

    #[test]
    fn pem_round_trip_keeps_authorities_in_order() {
        let (a, b) = (root(ca_params("a.org", "A")), root(ca_params("a.org", "B")));
        let bundle = X509Bundle::from_authorities(td("a.org"), [a.cert, b.cert]).unwrap();
        let pem = bundle.to_pem();
        assert_eq!(pem.matches("-----BEGIN CERTIFICATE-----").count(), 2);
        assert!(!pem.contains('\r'));
        let back = X509Bundle::parse_pem(td("a.org"), &pem).unwrap();
        assert_eq!(back, bundle);
    }

    #[test]
    fn der_round_trip() {
        let (a, b) = (root(ca_params("a.org", "A")), root(ca_params("a.org", "B")));
        let bundle = X509Bundle::from_authorities(td("a.org"), [a.cert, b.cert]).unwrap();
        let back = X509Bundle::parse_der(td("a.org"), &bundle.to_der()).unwrap();
        assert_eq!(back, bundle);
    }

    #[test]
    fn duplicates_are_dropped_and_removal_works() {
        let a = root(ca_params("a.org", "A"));
        let mut bundle =
            X509Bundle::from_authorities(td("a.org"), [a.cert.clone(), a.cert.clone()]).unwrap();
        assert_eq!(bundle.len(), 1);
        assert!(!bundle.add_authority(a.cert.clone()).unwrap());
        assert!(bundle.remove_authority(&a.cert));
        assert!(!bundle.remove_authority(&a.cert));
        assert!(bundle.is_empty());
    }

    #[test]
    fn corrupt_der_and_pem_are_rejected() {
        let a = root(ca_params("a.org", "A"));
        let mut bad = a.cert.to_vec();
        bad.truncate(bad.len() / 2);
        let err = X509Bundle::parse_der(td("a.org"), &bad).unwrap_err();
        assert!(matches!(err, X509BundleError::Der { index: 0, .. }), "{err:?}");
        let err =
            X509Bundle::parse_pem(td("a.org"), "-----BEGIN CERTIFICATE-----\n!!").unwrap_err();
        assert!(matches!(err, X509BundleError::Pem(_)), "{err:?}");
        let key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let err = X509Bundle::parse_pem(td("a.org"), key).unwrap_err();
        assert!(matches!(err, X509BundleError::UnexpectedPemLabel { index: 0, .. }), "{err:?}");
    }

    #[test]
    fn bundle_set_lookup_by_trust_domain() {
        let a = root(ca_params("a.org", "A"));
        let b = root(ca_params("b.org", "B"));
        let set: X509BundleSet = [
            X509Bundle::from_authorities(td("a.org"), [a.cert.clone()]).unwrap(),
            X509Bundle::from_authorities(td("b.org"), [b.cert.clone()]).unwrap(),
        ]
        .into_iter()
        .collect();
        assert_eq!(set.len(), 2);
        assert!(set.get(&td("a.org")).unwrap().contains_authority(&a.cert));
        assert!(!set.get(&td("a.org")).unwrap().contains_authority(&b.cert));
        let id = SpiffeId::parse("spiffe://b.org/web").unwrap();
        assert!(set.get_for_id(&id).unwrap().contains_authority(&b.cert));
        assert!(set.get(&td("c.org")).is_none());
    }
}

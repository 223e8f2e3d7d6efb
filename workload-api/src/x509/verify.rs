//! X509-SVID chain verification: the certificate rules, the leaf's validity period, then
//! RFC 5280 path validation (rustls-webpki) to the bundle of the leaf's own trust domain.

use rustls_pki_types::{CertificateDer, UnixTime};

use super::bundle::{X509Bundle, X509BundleSet};
use super::error::X509SvidError;
use super::rules::{check_certificates, check_validity, unix_secs};
use crate::spiffe_id::SpiffeId;

/// Verifies an X509-SVID chain (leaf first, then intermediates) and returns the leaf's
/// SPIFFE ID.
///
/// Checks, in order: parsing; the leaf's SPIFFE ID (one URI SAN, valid, non-root path);
/// the leaf's basic constraints, key usage and extended key usage; every signing
/// certificate's constraints; the leaf's validity at `now`; and path validation to the
/// authorities of the bundle of the leaf's own trust domain. The first broken rule is
/// returned. No DNS name is required or checked: the SPIFFE ID is the identity.
pub fn verify_chain(
    chain: &[CertificateDer<'_>],
    bundles: &X509BundleSet,
    now: UnixTime,
) -> Result<SpiffeId, X509SvidError> {
    let (parsed, id) = check_certificates(chain)?;
    check_validity(&parsed[0], now)?;

    let trust_domain = id.trust_domain();
    let own = bundles
        .get(&trust_domain)
        .ok_or_else(|| X509SvidError::NoBundleForTrustDomain(trust_domain.clone()))?;
    match verify_path(chain, own, now) {
        Ok(()) => Ok(id),
        Err(webpki::Error::UnknownIssuer) => {
            // Tell "signed by a stranger" apart from "signed by a known authority of the
            // wrong trust domain": the second is a misconfiguration worth naming.
            let signer = bundles
                .iter()
                .filter(|b| b.trust_domain() != &trust_domain)
                .find(|b| verify_path(chain, b, now).is_ok());
            match signer {
                Some(b) => Err(X509SvidError::SignedByOtherTrustDomain {
                    id_trust_domain: trust_domain,
                    signer_trust_domain: b.trust_domain().clone(),
                }),
                None => Err(X509SvidError::UntrustedChain(format!(
                    "no authority of trust domain {trust_domain} issued this chain"
                ))),
            }
        }
        Err(e) => Err(map_webpki_error(e)),
    }
}

/// Runs webpki path validation of `chain` against the authorities of `bundle`.
fn verify_path(
    chain: &[CertificateDer<'_>],
    bundle: &X509Bundle,
    now: UnixTime,
) -> Result<(), webpki::Error> {
    let (leaf, intermediates) = chain.split_first().ok_or(webpki::Error::BadDer)?;
    let end_entity = webpki::EndEntityCert::try_from(leaf)?;
    let anchors = bundle.trust_anchors();
    // No name check follows: webpki only checks names when asked to
    // (`verify_is_valid_for_subject_name`), and SPIFFE identifies by URI SAN instead.
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            intermediates,
            now,
            AnyExtendedKeyUsage,
            None,
            None,
        )
        .map(|_| ())
}

/// An EKU policy that accepts any well-formed EKU extension, or none.
///
/// webpki applies its EKU policy to every certificate of the path, not only the leaf.
/// The SPIFFE rule (the leaf's EKU, when present, has both serverAuth and clientAuth) is
/// already enforced by `rules::check_leaf`, so one SVID verifies the same way whether it
/// is presented by a client or a server. Signing certificates MAY carry an EKU, and the
/// standard gives it no meaning, so like go-spiffe (which verifies with ExtKeyUsageAny)
/// we do not let a CA's EKU reject the chain. Choosing `KeyUsage::client_auth()` here
/// would instead reject chains whose CA has, say, serverAuth only.
struct AnyExtendedKeyUsage;

impl webpki::ExtendedKeyUsageValidator for AnyExtendedKeyUsage {
    fn validate(&self, iter: webpki::KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        for purpose in iter {
            purpose?;
        }
        Ok(())
    }
}

/// Maps a webpki path-validation error (other than `UnknownIssuer`) to a SPIFFE rule.
fn map_webpki_error(e: webpki::Error) -> X509SvidError {
    #[allow(deprecated)]
    match e {
        webpki::Error::CertExpired { time, not_after } => {
            X509SvidError::Expired { not_after: unix_secs(not_after), now: unix_secs(time) }
        }
        webpki::Error::CertNotValidYet { time, not_before } => {
            X509SvidError::NotYetValid { not_before: unix_secs(not_before), now: unix_secs(time) }
        }
        webpki::Error::InvalidSignatureForPublicKey
        | webpki::Error::SignatureAlgorithmMismatch
        | webpki::Error::UnsupportedSignatureAlgorithm
        | webpki::Error::UnsupportedSignatureAlgorithmContext(_)
        | webpki::Error::UnsupportedSignatureAlgorithmForPublicKey
        | webpki::Error::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => {
            X509SvidError::BadSignature(format!("{e:?}"))
        }
        webpki::Error::UnknownIssuer => X509SvidError::UntrustedChain(format!("{e:?}")),
        other => X509SvidError::ChainRejected(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x509::test_support::*;

    fn err(chain: &[CertificateDer<'_>], bundles: &X509BundleSet) -> X509SvidError {
        verify_chain(chain, bundles, now()).unwrap_err()
    }

    #[test]
    fn root_intermediate_leaf_chain_passes_and_returns_id() {
        let w = world();
        let id = verify_chain(&w.chain(), &w.bundles, now()).unwrap();
        assert_eq!(id.as_str(), "spiffe://example.org/web");
    }

    #[test]
    fn root_leaf_chain_passes() {
        let r = root(ca_params("example.org", "root"));
        let l = leaf(leaf_params("spiffe://example.org/db"), &r);
        let set = bundles(&[("example.org", &r)]);
        let id = verify_chain(&[l.cert], &set, now()).unwrap();
        assert_eq!(id.path(), "/db");
    }

    #[test]
    fn chain_that_includes_the_root_passes() {
        let w = world();
        let chain = [w.leaf.cert.clone(), w.intermediate.cert.clone(), w.root.cert.clone()];
        verify_chain(&chain, &w.bundles, now()).unwrap();
    }

    #[test]
    fn ed25519_and_p384_leaves_pass() {
        let r = root(ca_params("example.org", "root"));
        let set = bundles(&[("example.org", &r)]);
        for alg in [&rcgen::PKCS_ED25519, &rcgen::PKCS_ECDSA_P384_SHA384] {
            let l = leaf_with_alg(leaf_params("spiffe://example.org/x"), &r, alg);
            verify_chain(&[l.cert], &set, now()).unwrap();
        }
    }

    #[test]
    fn leaf_with_client_auth_only_ca_eku_passes() {
        // A CA restricted to clientAuth must not make its SVIDs unusable as servers.
        let r = root(ca_params("example.org", "root"));
        let mut p = ca_params("example.org", "int");
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let i = intermediate(p, &r);
        let l = leaf(leaf_params("spiffe://example.org/x"), &i);
        verify_chain(&[l.cert, i.cert], &bundles(&[("example.org", &r)]), now()).unwrap();
    }

    #[test]
    fn no_bundle_for_trust_domain() {
        let w = world();
        let other = root(ca_params("other.org", "other"));
        let e = err(&w.chain(), &bundles(&[("other.org", &other)]));
        assert!(
            matches!(&e, X509SvidError::NoBundleForTrustDomain(td) if td.name() == "example.org"),
            "{e:?}"
        );
    }

    #[test]
    fn signed_by_other_trust_domain() {
        let mine = root(ca_params("example.org", "example root"));
        let theirs = root(ca_params("other.org", "other root"));
        let l = leaf(leaf_params("spiffe://example.org/web"), &theirs);
        let set = bundles(&[("example.org", &mine), ("other.org", &theirs)]);
        match err(&[l.cert], &set) {
            X509SvidError::SignedByOtherTrustDomain { id_trust_domain, signer_trust_domain } => {
                assert_eq!(id_trust_domain.name(), "example.org");
                assert_eq!(signer_trust_domain.name(), "other.org");
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn untrusted_chain() {
        let w = world();
        let stranger = root(ca_params("example.org", "stranger root"));
        let l = leaf(leaf_params("spiffe://example.org/web"), &stranger);
        let e = err(&[l.cert], &w.bundles);
        assert!(matches!(e, X509SvidError::UntrustedChain(_)), "{e:?}");
    }

    #[test]
    fn expired() {
        let mut p = leaf_params("spiffe://example.org/web");
        p.not_before = rcgen::date_time_ymd(2029, 1, 1);
        p.not_after = rcgen::date_time_ymd(2029, 12, 31);
        let w = world_with(p);
        let e = err(&w.chain(), &w.bundles);
        assert!(
            matches!(e, X509SvidError::Expired { not_after, now: n } if not_after < n),
            "{e:?}"
        );
    }

    #[test]
    fn not_yet_valid() {
        let mut p = leaf_params("spiffe://example.org/web");
        p.not_before = rcgen::date_time_ymd(2030, 1, 2);
        p.not_after = rcgen::date_time_ymd(2030, 2, 1);
        let w = world_with(p);
        let e = err(&w.chain(), &w.bundles);
        assert!(matches!(e, X509SvidError::NotYetValid { .. }), "{e:?}");
    }

    #[test]
    fn expired_intermediate_is_reported_as_expired() {
        let r = root(ca_params("example.org", "root"));
        let mut p = ca_params("example.org", "int");
        p.not_after = rcgen::date_time_ymd(2029, 6, 1);
        let i = intermediate(p, &r);
        let l = leaf(leaf_params("spiffe://example.org/web"), &i);
        let e = err(&[l.cert, i.cert], &bundles(&[("example.org", &r)]));
        assert!(matches!(e, X509SvidError::Expired { .. }), "{e:?}");
    }

    #[test]
    fn bad_signature() {
        let w = world();
        let mut tampered = w.leaf.cert.to_vec();
        let last = tampered.len() - 1;
        tampered[last] ^= 0x01;
        let chain = [CertificateDer::from(tampered), w.intermediate.cert.clone()];
        let e = err(&chain, &w.bundles);
        assert!(matches!(e, X509SvidError::BadSignature(_)), "{e:?}");
    }

    #[test]
    fn webpki_errors_map_to_rules() {
        let t = UnixTime::since_unix_epoch(std::time::Duration::from_secs(10));
        let e = map_webpki_error(webpki::Error::CertExpired { time: t, not_after: t });
        assert!(matches!(e, X509SvidError::Expired { not_after: 10, now: 10 }));
        let e = map_webpki_error(webpki::Error::PathLenConstraintViolated);
        assert!(matches!(e, X509SvidError::ChainRejected(_)));
    }
}

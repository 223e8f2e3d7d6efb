//! X509-SVID validation (`verify_chain`, `spiffe_id_of`): the fuzzer writes the leaf's
//! TBSCertificate and the check signs it with certs-dev's example.org intermediate key, so
//! mutations reach the rules rather than dying at the signature. A leaf keycard accepts
//! must decode with the strict DER decoder and follow every rule of the X509-SVID
//! standard, checked again here on the strict decoding.

use std::sync::OnceLock;

use keycard_workload_api::{X509Bundle, X509BundleSet, spiffe_id_of, verify_chain};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_cert::der::Decode as _;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages};

use super::common;

/// AlgorithmIdentifier of ecdsa-with-SHA256 (no parameters).
const ECDSA_SHA256: &[u8] =
    &[0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];

struct Fixture {
    signer: EcdsaKeyPair,
    rng: SystemRandom,
    intermediate: Vec<u8>,
    bundles: X509BundleSet,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let rng = SystemRandom::new();
        let key = common::pem_first(common::INTERMEDIATE_KEY_PEM);
        let signer = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &key, &rng)
            .expect("certs-dev intermediate key");
        let root = common::pem_first(common::ROOT_PEM);
        let bundle = X509Bundle::parse_der(common::trust_domain(), &root).expect("root bundle");
        let mut bundles = X509BundleSet::new();
        bundles.insert(bundle);
        Fixture { signer, rng, intermediate: common::pem_first(common::INTERMEDIATE_PEM), bundles }
    })
}

/// A certificate made of `tbs` signed by the intermediate (ECDSA P-256, SHA-256).
pub fn sign_tbs(tbs: &[u8]) -> Vec<u8> {
    let f = fixture();
    let signature = f.signer.sign(&f.rng, tbs).expect("ECDSA signing");
    let mut bits = vec![0u8];
    bits.extend_from_slice(signature.as_ref());
    let mut body = tbs.to_vec();
    body.extend_from_slice(ECDSA_SHA256);
    body.extend_from_slice(&common::der_wrap(0x03, &bits));
    common::der_wrap(0x30, &body)
}

/// Signs `data` as a leaf TBSCertificate, validates the chain and checks an accepted one.
pub fn check(data: &[u8]) -> bool {
    let f = fixture();
    let leaf = sign_tbs(data);
    let chain = [CertificateDer::from(leaf.as_slice()), CertificateDer::from(&f.intermediate[..])];
    let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(common::NOW_SECS));
    let by_id = spiffe_id_of(&chain[0]);
    let Ok(id) = verify_chain(&chain, &f.bundles, now) else { return false };
    assert_eq!(by_id.as_ref(), Ok(&id), "spiffe_id_of disagrees with verify_chain");
    assert_eq!(id.trust_domain_name(), common::TRUST_DOMAIN);
    assert!(!id.is_root(), "accepted a leaf whose ID has no path");

    let cert = x509_cert::Certificate::from_der(&leaf).expect("accepted a leaf that is not DER");
    let tbs = &cert.tbs_certificate;
    let validity = &tbs.validity;
    let now_secs = common::NOW_SECS;
    assert!(validity.not_before.to_unix_duration().as_secs() <= now_secs, "not yet valid");
    assert!(validity.not_after.to_unix_duration().as_secs() >= now_secs, "expired");
    let extensions = tbs.extensions.as_deref().unwrap_or_default();
    let one = |dotted: &str| {
        let found: Vec<_> =
            extensions.iter().filter(|e| e.extn_id == common::oid(dotted)).collect();
        assert!(found.len() <= 1, "accepted a leaf with {} extensions {dotted}", found.len());
        found.into_iter().next()
    };

    // Exactly one URI SAN, the SPIFFE ID (DNS names are allowed).
    let san = one("2.5.29.17").expect("accepted a leaf without SubjectAltName");
    let uris = common::uri_sans(std::slice::from_ref(san));
    assert_eq!(uris, [id.to_string()], "URI SANs of an accepted leaf");

    // Basic constraints present, cA false. The one encoding read leniently on purpose is
    // an explicit `cA FALSE` (`30 03 01 01 00`), which older keycard servers minted.
    let bc = one("2.5.29.19").expect("accepted a leaf without basic constraints");
    match BasicConstraints::from_der(bc.extn_value.as_bytes()) {
        Ok(bc) => assert!(!bc.ca, "accepted a CA certificate as a leaf"),
        Err(e) => assert_eq!(
            bc.extn_value.as_bytes(),
            [0x30, 0x03, 0x01, 0x01, 0x00],
            "accepted basic constraints that are neither DER nor an explicit cA FALSE: {e}"
        ),
    }

    // Key usage present and critical; digitalSignature, neither keyCertSign nor cRLSign.
    let ku_ext = one("2.5.29.15").expect("accepted a leaf without key usage");
    assert!(ku_ext.critical, "accepted a leaf whose key usage is not critical");
    let ku = KeyUsage::from_der(ku_ext.extn_value.as_bytes()).expect("KeyUsage DER");
    assert!(ku.0.contains(KeyUsages::DigitalSignature), "leaf without digitalSignature");
    assert!(!ku.0.contains(KeyUsages::KeyCertSign), "leaf with keyCertSign");
    assert!(!ku.0.contains(KeyUsages::CRLSign), "leaf with cRLSign");

    // EKU optional; when present both serverAuth and clientAuth.
    if let Some(eku) = one("2.5.29.37") {
        let eku = ExtendedKeyUsage::from_der(eku.extn_value.as_bytes()).expect("EKU DER");
        for purpose in ["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"] {
            assert!(eku.0.contains(&common::oid(purpose)), "EKU without {purpose}");
        }
    }

    // Issued by the intermediate, under the signature algorithm it was signed with.
    let issuer = x509_cert::Certificate::from_der(&f.intermediate).expect("intermediate");
    assert_eq!(tbs.issuer, issuer.tbs_certificate.subject, "issuer is not the intermediate");
    assert_eq!(tbs.signature, cert.signature_algorithm, "inner and outer algorithms differ");
    true
}

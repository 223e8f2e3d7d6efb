//! Tests of the X509-SVID rules, one or more per rule.

use rcgen::{CustomExtension, ExtendedKeyUsagePurpose as Eku, IsCa, KeyUsagePurpose as Ku};

use super::*;
use crate::x509::test_support::*;
use crate::x509::verify_chain;

const ID: &str = "spiffe://example.org/web";

/// Verifies a world whose leaf was built from `p`, expecting an error.
fn leaf_err(p: rcgen::CertificateParams) -> X509SvidError {
    let w = world_with(p);
    verify_chain(&w.chain(), &w.bundles, now()).unwrap_err()
}

/// Verifies root -> intermediate(`p`) -> leaf, expecting an error.
fn signing_err(p: rcgen::CertificateParams) -> X509SvidError {
    let r = root(ca_params("example.org", "root"));
    let i = intermediate(p, &r);
    let l = leaf(leaf_params(ID), &i);
    verify_chain(&[l.cert, i.cert], &bundles(&[("example.org", &r)]), now()).unwrap_err()
}

fn with_ku(kus: &[Ku]) -> rcgen::CertificateParams {
    let mut p = leaf_params(ID);
    p.key_usages = kus.to_vec();
    p
}

#[test]
fn empty_chain() {
    let w = world();
    assert_eq!(verify_chain(&[], &w.bundles, now()), Err(X509SvidError::EmptyChain));
}

#[test]
fn der() {
    let w = world();
    let mut broken = w.intermediate.cert.to_vec();
    broken.truncate(broken.len() - 10);
    let chain = [w.leaf.cert.clone(), CertificateDer::from(broken)];
    let e = verify_chain(&chain, &w.bundles, now()).unwrap_err();
    assert!(matches!(e, X509SvidError::Der { index: 1, .. }), "{e:?}");
    let mut trailing = w.leaf.cert.to_vec();
    trailing.push(0);
    let e = spiffe_id_of(&CertificateDer::from(trailing)).unwrap_err();
    assert!(matches!(e, X509SvidError::Der { index: 0, .. }), "{e:?}");
}

#[test]
fn no_uri_san() {
    let mut p = leaf_params(ID);
    p.subject_alt_names = vec![rcgen::SanType::DnsName("web.example.org".try_into().unwrap())];
    assert_eq!(leaf_err(p), X509SvidError::NoUriSan);
}

#[test]
fn multiple_uri_sans() {
    let mut p = leaf_params(ID);
    p.subject_alt_names.push(uri("spiffe://example.org/other"));
    assert_eq!(leaf_err(p), X509SvidError::MultipleUriSans(2));
}

#[test]
fn invalid_spiffe_id() {
    let p = leaf_params("https://example.org/web");
    let e = leaf_err(p);
    assert_eq!(e, X509SvidError::InvalidSpiffeId(crate::SpiffeIdError::WrongScheme));
}

#[test]
fn root_path_id() {
    let e = leaf_err(leaf_params("spiffe://example.org"));
    assert!(matches!(e, X509SvidError::RootPathId(_)), "{e:?}");
}

#[test]
fn leaf_is_ca() {
    let mut p = leaf_params(ID);
    drop_basic_constraints(&mut p);
    p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    assert_eq!(leaf_err(p), X509SvidError::LeafIsCa);
    // cA TRUE written by hand next to the SKI the helpers add: still a CA.
    let mut p = leaf_params(ID);
    drop_basic_constraints(&mut p);
    p.custom_extensions.push(basic_constraints(&[0x30, 0x03, 0x01, 0x01, 0xff]));
    assert_eq!(leaf_err(p), X509SvidError::LeafIsCa);
}

#[test]
fn leaf_basic_constraints_as_an_empty_sequence_pass() {
    let w = world();
    let (_, cert) = x509_parser::parse_x509_certificate(&w.leaf.cert).unwrap();
    let bc = cert
        .extensions()
        .iter()
        .find(|e| e.oid == x509_parser::oid_registry::OID_X509_EXT_BASIC_CONSTRAINTS)
        .unwrap();
    assert!(bc.critical);
    assert_eq!(bc.value, [0x30, 0x00]);
    assert_eq!(verify_chain(&w.chain(), &w.bundles, now()).unwrap().as_str(), ID);
}

#[test]
fn leaf_basic_constraints_with_ca_false_spelled_out_still_pass() {
    // Not DER (older keycard servers minted it), but the validator reads it leniently,
    // so that an upgraded agent keeps accepting SVIDs from a server not yet upgraded.
    let w = world();
    let mut p = leaf_params(ID);
    drop_basic_constraints(&mut p);
    p.custom_extensions.push(basic_constraints(&[0x30, 0x03, 0x01, 0x01, 0x00]));
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &w.intermediate.issuer).unwrap().der().clone();
    assert!(keycard_certs_dev::strict_der::check(&cert).is_err());
    let chain = [cert, w.intermediate.cert.clone()];
    assert_eq!(verify_chain(&chain, &w.bundles, now()).unwrap().as_str(), ID);
}

#[test]
fn missing_basic_constraints() {
    let mut p = leaf_params(ID);
    drop_basic_constraints(&mut p);
    assert_eq!(leaf_err(p), X509SvidError::MissingBasicConstraints);
}

#[test]
fn key_usage_missing() {
    assert_eq!(leaf_err(with_ku(&[])), X509SvidError::KeyUsageMissing);
}

#[test]
fn key_usage_not_critical() {
    let mut p = with_ku(&[]);
    // KeyUsage (2.5.29.15) = BIT STRING with digitalSignature only, not critical.
    let mut ext = CustomExtension::from_oid_content(&[2, 5, 29, 15], vec![3, 2, 7, 0x80]);
    ext.set_criticality(false);
    p.custom_extensions.push(ext);
    assert_eq!(leaf_err(p), X509SvidError::KeyUsageNotCritical);
}

#[test]
fn leaf_no_digital_signature() {
    let e = leaf_err(with_ku(&[Ku::KeyEncipherment, Ku::KeyAgreement]));
    assert_eq!(e, X509SvidError::LeafNoDigitalSignature);
}

#[test]
fn leaf_key_cert_sign() {
    let e = leaf_err(with_ku(&[Ku::DigitalSignature, Ku::KeyCertSign]));
    assert_eq!(e, X509SvidError::LeafKeyCertSign);
}

#[test]
fn leaf_crl_sign() {
    let e = leaf_err(with_ku(&[Ku::DigitalSignature, Ku::CrlSign]));
    assert_eq!(e, X509SvidError::LeafCrlSign);
}

#[test]
fn eku_missing_server_auth() {
    let mut p = leaf_params(ID);
    p.extended_key_usages = vec![Eku::ClientAuth];
    assert_eq!(leaf_err(p), X509SvidError::EkuMissingServerAuth);
}

#[test]
fn eku_missing_client_auth() {
    let mut p = leaf_params(ID);
    p.extended_key_usages = vec![Eku::ServerAuth];
    assert_eq!(leaf_err(p), X509SvidError::EkuMissingClientAuth);
}

#[test]
fn leaf_without_eku_passes() {
    let mut p = leaf_params(ID);
    p.extended_key_usages = vec![];
    let w = world_with(p);
    assert_eq!(verify_chain(&w.chain(), &w.bundles, now()).unwrap().as_str(), ID);
}

#[test]
fn signing_cert_not_ca() {
    let mut p = ca_params("example.org", "int");
    not_ca(&mut p);
    assert_eq!(signing_err(p), X509SvidError::SigningCertNotCa { index: 1 });
    let mut p = ca_params("example.org", "int");
    p.is_ca = IsCa::NoCa;
    assert_eq!(signing_err(p), X509SvidError::SigningCertNotCa { index: 1 });
}

#[test]
fn signing_cert_no_key_cert_sign() {
    let mut p = ca_params("example.org", "int");
    p.key_usages = vec![Ku::CrlSign];
    assert_eq!(signing_err(p), X509SvidError::SigningCertNoKeyCertSign { index: 1 });
}

#[test]
fn signing_cert_id_has_path() {
    let mut p = ca_params("example.org", "int");
    p.subject_alt_names = vec![uri("spiffe://example.org/ca")];
    let e = signing_err(p);
    assert!(matches!(e, X509SvidError::SigningCertIdHasPath { index: 1, .. }), "{e:?}");
}

#[test]
fn signing_cert_without_spiffe_id_passes() {
    let r = root(ca_params("example.org", "root"));
    let mut p = ca_params("example.org", "int");
    p.subject_alt_names = vec![];
    let i = intermediate(p, &r);
    let l = leaf(leaf_params(ID), &i);
    verify_chain(&[l.cert, i.cert], &bundles(&[("example.org", &r)]), now()).unwrap();
}

#[test]
fn spiffe_id_of_reads_leaf_and_ca_ids() {
    let w = world();
    assert_eq!(spiffe_id_of(&w.leaf.cert).unwrap().as_str(), ID);
    assert!(spiffe_id_of(&w.root.cert).unwrap().is_root());
}

#[test]
fn rules_run_before_time_and_chain() {
    // An expired, untrusted leaf that is also a CA reports the leaf rule first.
    let stranger = root(ca_params("example.org", "stranger"));
    let mut p = leaf_params(ID);
    drop_basic_constraints(&mut p);
    p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.not_after = rcgen::date_time_ymd(2029, 12, 31);
    let l = leaf(p, &stranger);
    let e = verify_chain(&[l.cert], &world().bundles, now()).unwrap_err();
    assert_eq!(e, X509SvidError::LeafIsCa);
}

#[test]
fn a_certificate_whose_structure_is_not_der_is_refused() {
    // The subject's RDN written as a SEQUENCE instead of a SET: x509-parser reads it,
    // strict decoders do not (found by the x509_svid fuzz target, whose artifact replays
    // the same through a full chain check).
    let w = world();
    let mut der = w.leaf.cert.to_vec();
    assert!(spiffe_id_of(&w.leaf.cert).is_ok());
    // The leaf's subject is its second name; its RDN sets are tagged 0x31 before an
    // AttributeTypeAndValue SEQUENCE holding an OID (0x30 len 0x06 0x03 0x55 0x04).
    let rdns: Vec<usize> = der
        .windows(6)
        .enumerate()
        .filter(|(_, w)| w[0] == 0x31 && w[2] == 0x30 && w[4] == 0x06 && w[5] == 0x03)
        .map(|(i, _)| i)
        .collect();
    der[*rdns.last().unwrap()] = 0x30;
    let mutated = rustls_pki_types::CertificateDer::from(der);
    let err = spiffe_id_of(&mutated).unwrap_err();
    assert!(
        matches!(&err, X509SvidError::Der { reason, .. } if reason.starts_with("not DER")),
        "{err:?}"
    );
}

#[test]
fn a_uri_san_that_is_not_text_still_counts() {
    // Two URI SANs, the first made unreadable (0xff bytes): still two URI SANs. Alone, an
    // unreadable URI SAN is a DER error (found by the x509_svid fuzz target).
    let garble = |mut der: Vec<u8>, uri: &[u8]| {
        let at = der.windows(uri.len()).position(|w| w == uri).unwrap();
        der[at + 9] = 0xff;
        rustls_pki_types::CertificateDer::from(der)
    };
    let mut p = leaf_params(ID);
    p.subject_alt_names.push(uri("spiffe://example.org/other"));
    let two = world_with(p).leaf.cert.to_vec();
    let err = spiffe_id_of(&garble(two, b"spiffe://example.org/web")).unwrap_err();
    assert!(matches!(err, X509SvidError::MultipleUriSans(2)), "{err:?}");
    let one = world().leaf.cert.to_vec();
    let err = spiffe_id_of(&garble(one, b"spiffe://example.org/web")).unwrap_err();
    assert!(matches!(err, X509SvidError::Der { .. }), "{err:?}");
}

#[test]
fn rule_extensions_must_be_der() {
    // The key usage value tagged [APPLICATION 3] instead of BIT STRING: x509-parser reads
    // it as key usage bits (found by the x509_svid fuzz target).
    let w = world();
    let mut der = w.leaf.cert.to_vec();
    let ku_oid = [0x06, 0x03, 0x55, 0x1d, 0x0f];
    let at = der.windows(5).position(|x| x == &ku_oid[..]).unwrap();
    // OID, BOOLEAN critical (3 bytes), OCTET STRING header (2 bytes), then the BIT STRING.
    assert_eq!(der[at + 10], 0x03);
    der[at + 10] = 0x43;
    let chain = [rustls_pki_types::CertificateDer::from(der)];
    let err = check_certificates(&chain).unwrap_err();
    assert!(
        matches!(&err, X509SvidError::Der { reason, .. } if reason.contains("2.5.29.15")),
        "{err:?}"
    );
    // The tolerated explicit cA FALSE is certs-dev's leaf-ca-false-explicit vector, which
    // certs-dev's validator tests require to pass (test helpers here make only DER).
}

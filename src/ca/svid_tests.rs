//! End-to-end tests of the X.509 authority: CA profile, SVID profile, TTL caps, upstream
//! reload, and verification by rustls-webpki. Upstream chains and openssl: upstream_tests.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keycard_workload_api::{SpiffeId, TrustDomain, X509Bundle, X509BundleSet, X509Svid};
use proptest::prelude::*;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer, UnixTime};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::*;
use crate::clock::{Clock, ManualClock};

const HOUR: Duration = Duration::from_secs(3600);

pub(super) fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

pub(super) fn clock() -> ManualClock {
    ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000))
}

pub(super) fn new_ca(ttl: Duration, clock: &dyn Clock) -> X509Authority {
    let key = Arc::new(SigningKey::generate(KeyType::EcP256).unwrap());
    X509Authority::self_signed(&AuthorityOptions::new(td(), ttl), key, clock).unwrap()
}

pub(super) fn request(id: &str, dns: &[&str], ttl: Duration) -> (SvidRequest, SigningKey) {
    let key = SigningKey::generate(KeyType::EcP256).unwrap();
    let req = SvidRequest {
        public_key: SubjectPublicKeyInfoDer::from(key.public_key_der()),
        spiffe_id: SpiffeId::parse(id).unwrap(),
        dns_names: dns.iter().map(|s| s.to_string()).collect(),
        ttl,
    };
    (req, key)
}

pub(super) fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = X509Certificate::from_der(der).unwrap();
    assert!(rest.is_empty());
    cert
}

pub(super) fn secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

pub(super) fn uris_and_dns(cert: &X509Certificate<'_>) -> (Vec<String>, Vec<String>) {
    let san = cert.subject_alternative_name().unwrap().unwrap();
    let (mut uris, mut dns) = (Vec::new(), Vec::new());
    for name in &san.value.general_names {
        match name {
            GeneralName::URI(u) => uris.push(u.to_string()),
            GeneralName::DNSName(d) => dns.push(d.to_string()),
            other => panic!("unexpected SAN {other:?}"),
        }
    }
    (uris, dns)
}

pub(super) fn aki(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions().iter().find_map(|e| match e.parsed_extension() {
        ParsedExtension::AuthorityKeyIdentifier(a) => {
            a.key_identifier.as_ref().map(|k| k.0.to_vec())
        }
        _ => None,
    })
}

pub(super) fn ski(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions().iter().find_map(|e| match e.parsed_extension() {
        ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
        _ => None,
    })
}

/// Verifies `svid` against `root` with rustls-webpki, for both client and server use.
pub(super) fn webpki_verify(svid: &SignedSvid, root: &CertificateDer<'_>, at: SystemTime) {
    let anchor = webpki::anchor_from_trusted_cert(root).unwrap().to_owned();
    let ee = webpki::EndEntityCert::try_from(&svid.leaf).unwrap();
    let time = UnixTime::since_unix_epoch(at.duration_since(UNIX_EPOCH).unwrap());
    for usage in [webpki::KeyUsage::client_auth(), webpki::KeyUsage::server_auth()] {
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            std::slice::from_ref(&anchor),
            &svid.chain_without_root[1..],
            time,
            usage,
            None,
            None,
        )
        .unwrap();
    }
}

#[test]
fn self_signed_ca_has_the_ca_profile() {
    let clock = clock();
    let ca = new_ca(24 * HOUR, &clock);
    let other = new_ca(24 * HOUR, &clock);
    let cert = parse(ca.certificate());
    assert_eq!(ca.root(), ca.certificate());
    assert!(ca.chain_without_root().is_empty());
    assert_eq!(cert.subject().as_raw(), cert.issuer().as_raw());
    assert_ne!(cert.subject().as_raw(), parse(other.certificate()).subject().as_raw());
    let cn: Vec<_> = cert.subject().iter_common_name().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(cn, ["keycard CA"]);
    let serial_attrs =
        cert.subject().iter_attributes().filter(|a| a.attr_type().to_id_string() == "2.5.4.5");
    assert_eq!(serial_attrs.count(), 1);

    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && bc.value.ca && bc.value.path_len_constraint.is_none());
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
    assert!(!ku.value.digital_signature() && !ku.value.key_encipherment());
    assert_eq!(ski(&cert).as_deref(), ca.subject_key_id());
    assert!(ca.subject_key_id().is_some());
    assert_eq!(uris_and_dns(&cert), (vec!["spiffe://example.org".to_string()], vec![]));
    assert!(cert.name_constraints().unwrap().is_none());

    let now = secs(clock.now());
    assert_eq!(cert.validity().not_before.timestamp(), now - 30);
    assert_eq!(cert.validity().not_after.timestamp(), now + 24 * 3600);
    assert_eq!(secs(ca.not_after()), now + 24 * 3600);
    cert.verify_signature(None).unwrap();
}

#[test]
fn minted_svid_has_every_property_of_the_spiffe_leaf_profile() {
    let clock = clock();
    let ca = new_ca(24 * HOUR, &clock);
    clock.advance(Duration::from_secs(600));
    let id = "spiffe://example.org/ns/prod/sa/web";
    let (req, _key) = request(id, &["web.example.org", "*.web.example.org"], HOUR);
    let svid = ca.sign_x509_svid(&req, &clock).unwrap();
    assert_eq!(svid.chain_without_root, vec![svid.leaf.clone()]);

    let cert = parse(&svid.leaf);
    let ca_cert = parse(ca.certificate());
    assert_eq!(cert.version(), x509_parser::x509::X509Version::V3);
    assert_eq!(cert.issuer().as_raw(), ca_cert.subject().as_raw());
    assert_eq!(cert.public_key().raw, req.public_key.as_ref());
    cert.verify_signature(Some(ca_cert.public_key())).unwrap();

    let (uris, dns) = uris_and_dns(&cert);
    assert_eq!(uris, [id]);
    assert_eq!(dns, ["web.example.org", "*.web.example.org"]);

    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.critical);
    assert!(
        ku.value.digital_signature() && ku.value.key_encipherment() && ku.value.key_agreement()
    );
    assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign());
    assert!(!ku.value.non_repudiation() && !ku.value.data_encipherment());
    let eku = cert.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.server_auth && eku.value.client_auth && !eku.value.any);
    assert!(eku.value.other.is_empty() && !eku.value.code_signing);
    let bc = cert.basic_constraints().unwrap().expect("basic constraints must be present");
    assert!(!bc.value.ca && bc.value.path_len_constraint.is_none());

    assert!(ski(&cert).is_some());
    assert_eq!(aki(&cert).as_deref(), ca.subject_key_id());

    let serial = cert.tbs_certificate.raw_serial();
    assert_eq!(serial.len(), 16);
    assert_eq!(serial[0] & 0x80, 0, "serial must be positive without padding");
    assert_eq!(serial, svid.serial.as_slice());

    let now = secs(clock.now());
    assert_eq!(cert.validity().not_before.timestamp(), now - 30);
    assert_eq!(cert.validity().not_after.timestamp(), now + 3600);
    assert_eq!(secs(svid.not_before), now - 30);
    assert_eq!(secs(svid.not_after), now + 3600);
    webpki_verify(&svid, ca.root(), clock.now());
}

#[test]
fn serials_differ_between_svids() {
    let clock = clock();
    let ca = new_ca(24 * HOUR, &clock);
    let (req, _k) = request("spiffe://example.org/a", &[], HOUR);
    let a = ca.sign_x509_svid(&req, &clock).unwrap();
    let b = ca.sign_x509_svid(&req, &clock).unwrap();
    assert_ne!(a.serial, b.serial);
}

#[test]
fn ttl_is_capped_at_a_sixth_of_the_ca_lifetime() {
    let clock = clock();
    let ca = new_ca(6 * HOUR, &clock);
    let (req, _k) = request("spiffe://example.org/a", &[], 5 * HOUR);
    let svid = ca.sign_x509_svid(&req, &clock).unwrap();
    // The CA lives 6 h plus its 30 s backdate; a sixth of that is 1 h plus 5 s.
    assert_eq!(secs(svid.not_after), secs(clock.now()) + 3605);
}

#[test]
fn not_after_never_outlives_the_ca() {
    let clock = clock();
    let ca = new_ca(HOUR, &clock);
    clock.advance(Duration::from_secs(55 * 60));
    let (req, _k) = request("spiffe://example.org/a", &[], Duration::from_secs(600));
    let svid = ca.sign_x509_svid(&req, &clock).unwrap();
    assert_eq!(svid.not_after, ca.not_after());
    assert_eq!(parse(&svid.leaf).validity().not_after.timestamp(), secs(ca.not_after()));
}

#[test]
fn requests_breaking_a_rule_are_refused() {
    let clock = clock();
    let ca = new_ca(HOUR, &clock);
    let sign = |req: &SvidRequest| ca.sign_x509_svid(req, &clock).unwrap_err();
    let (root_id, _k) = request("spiffe://example.org", &[], HOUR);
    assert!(matches!(sign(&root_id), CaError::RootPathId(_)));
    let (foreign, _k) = request("spiffe://other.org/a", &[], HOUR);
    assert!(matches!(sign(&foreign), CaError::ForeignTrustDomain { .. }));
    let (zero, _k) = request("spiffe://example.org/a", &[], Duration::ZERO);
    assert!(matches!(sign(&zero), CaError::ZeroTtl));
    let (bad_dns, _k) = request("spiffe://example.org/a", &["not a name"], HOUR);
    assert!(matches!(sign(&bad_dns), CaError::InvalidDnsName(_)));
    let (mut bad_key, _k) = request("spiffe://example.org/a", &[], HOUR);
    bad_key.public_key = SubjectPublicKeyInfoDer::from(vec![0x30, 0x00]);
    assert!(matches!(sign(&bad_key), CaError::UnsupportedKey(_)));
    let (ok, _k) = request("spiffe://example.org/a", &[], HOUR);
    clock.advance(2 * HOUR);
    assert!(matches!(sign(&ok), CaError::CaNotValidNow { .. }));
}

fn path_segment() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9._-]{1,12}".prop_filter("no dot segments", |s| s != "." && s != "..")
}

fn dns_label() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?"
}

#[test]
fn every_minted_svid_verifies_and_names_its_id() {
    let clock = clock();
    let ca = new_ca(24 * HOUR, &clock);
    let strategy = (
        prop::collection::vec(path_segment(), 1..5),
        prop::collection::vec(prop::collection::vec(dns_label(), 1..4), 0..4),
        1u64..=(8 * 3600),
        prop::sample::select(vec![KeyType::EcP256, KeyType::EcP384, KeyType::Ed25519]),
    );
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(64));
    runner
        .run(&strategy, |(segments, dns_labels, ttl_secs, key_type)| {
            let id = td().spiffe_id(&format!("/{}", segments.join("/"))).unwrap();
            let dns_names: Vec<String> =
                dns_labels.iter().map(|l| format!("{}.test", l.join("."))).collect();
            let key = SigningKey::generate(key_type).unwrap();
            let req = SvidRequest {
                public_key: SubjectPublicKeyInfoDer::from(key.public_key_der()),
                spiffe_id: id.clone(),
                dns_names: dns_names.clone(),
                ttl: Duration::from_secs(ttl_secs),
            };
            let svid = ca.sign_x509_svid(&req, &clock).unwrap();
            webpki_verify(&svid, ca.root(), clock.now());
            let cert = parse(&svid.leaf);
            prop_assert_eq!(uris_and_dns(&cert), (vec![id.to_string()], dns_names));
            let expected_ttl = ttl_secs.min(max_svid_ttl(ca.ttl()).as_secs()) as i64;
            prop_assert_eq!(
                cert.validity().not_after.timestamp(),
                secs(clock.now()) + expected_ttl
            );
            // The workload-api validator (every X509-SVID rule plus the key match) agrees.
            let key_der = PrivatePkcs8KeyDer::from(key.pkcs8_der().secret_pkcs8_der().to_vec());
            let x509_svid = X509Svid::from_der(svid.chain_without_root.clone(), key_der).unwrap();
            let bundle = X509Bundle::from_authorities(td(), [ca.root().clone()]).unwrap();
            let bundles: X509BundleSet = [bundle].into_iter().collect();
            let now = UnixTime::since_unix_epoch(clock.now().duration_since(UNIX_EPOCH).unwrap());
            x509_svid.validate(&bundles, now).unwrap();
            // And so does openssl, an independent verifier.
            let dir = tempfile::tempdir().unwrap();
            super::upstream_tests::openssl_verify(
                dir.path(),
                ca.root(),
                &svid.chain_without_root,
                clock.now(),
            );
            Ok(())
        })
        .unwrap();
}

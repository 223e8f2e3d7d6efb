//! Every certificate the CA mints is strict DER (issue 15, defect 1): self-signed and
//! upstream-signed CA certificates and X.509-SVIDs for workloads, agents and the server, with
//! every key type, checked with `keycard_certs_dev::strict_der` (RustCrypto `x509-cert`/`der`
//! plus a canonical re-encoding of each extension). Lenient parsers (x509-parser, webpki,
//! openssl) accept a BasicConstraints `cA FALSE` written out; Python's `cryptography`, and so
//! py-spiffe, rejects the whole certificate. The leaves also stay acceptable to the parsers
//! that accepted them before: x509-parser, rustls-webpki, our validator and the `spiffe` crate.

use std::sync::Arc;
use std::time::Duration;

use keycard_certs_dev::strict_der;
use rustls_pki_types::SubjectPublicKeyInfoDer;
use x509_parser::oid_registry::OID_X509_EXT_BASIC_CONSTRAINTS;

use super::svid_tests::{clock, new_ca, parse, request, ski, td, webpki_verify};
use super::*;
use crate::clock::Clock;

const HOUR: Duration = Duration::from_secs(3600);

/// Fails with the certificate's role and the checker's reason unless `der` is strict DER.
fn assert_strict(role: &str, der: &[u8]) {
    if let Err(e) = strict_der::check(der) {
        panic!("{role}: not strict DER: {e}");
    }
}

/// A leaf's BasicConstraints must be critical and exactly an empty SEQUENCE.
fn assert_leaf_basic_constraints(role: &str, der: &[u8]) {
    let cert = parse(der);
    let bc = cert.extensions().iter().find(|e| e.oid == OID_X509_EXT_BASIC_CONSTRAINTS);
    let bc = bc.unwrap_or_else(|| panic!("{role}: no basic constraints"));
    assert!(bc.critical, "{role}: basic constraints not critical");
    assert_eq!(bc.value, template::LEAF_BASIC_CONSTRAINTS, "{role}: {:02x?}", bc.value);
    assert!(ski(&cert).is_some(), "{role}: no subject key identifier");
}

#[test]
fn every_certificate_the_ca_mints_is_strict_der() {
    let clock = clock();
    let ca = new_ca(24 * HOUR, &clock);
    assert_strict("self-signed CA", ca.certificate());

    // An upstream root signs our intermediate: both CA certificates and the leaves under it.
    let upstream_root = new_ca(48 * HOUR, &clock);
    let upstream = UpstreamAuthority::new(
        vec![upstream_root.certificate().clone()],
        SigningKey::from_pkcs8_pem(&upstream_root.key().key_pair().serialize_pem()).unwrap(),
    )
    .unwrap();
    let key = Arc::new(SigningKey::generate(KeyType::EcP384).unwrap());
    let opts = AuthorityOptions::new(td(), 24 * HOUR);
    let intermediate = X509Authority::signed_by_upstream(&opts, key, &upstream, &clock).unwrap();
    assert_strict("upstream-signed CA", intermediate.certificate());

    let ids: [(&str, &str, &[&str]); 3] = [
        (
            "workload SVID",
            "spiffe://example.org/ns/prod/sa/web",
            &["web.example.org", "*.web.test"],
        ),
        ("agent SVID", "spiffe://example.org/keycard/agent/join_token/3f2a", &[]),
        ("server SVID", "spiffe://example.org/keycard/server", &[]),
    ];
    for (authority, under) in [(&ca, "self-signed CA"), (&intermediate, "upstream-signed CA")] {
        for (role, id, dns) in ids {
            for key_type in [KeyType::EcP256, KeyType::EcP384, KeyType::Ed25519] {
                let key = SigningKey::generate(key_type).unwrap();
                let (mut req, _) = request(id, dns, HOUR);
                req.public_key = SubjectPublicKeyInfoDer::from(key.public_key_der());
                let svid = authority.sign_x509_svid(&req, &clock).unwrap();
                let role = format!("{role} ({key_type:?}) under the {under}");
                assert_strict(&role, &svid.leaf);
                assert_leaf_basic_constraints(&role, &svid.leaf);
                for (i, cert) in svid.chain_without_root.iter().enumerate() {
                    assert_strict(&format!("{role}, chain[{i}]"), cert);
                }
                webpki_verify(&svid, authority.root(), clock.now());
            }
        }
    }
}

#[test]
fn leaves_pass_the_lenient_parsers_too() {
    let clock = clock();
    let ca = new_ca(24 * HOUR, &clock);
    let (req, key) = request("spiffe://example.org/web", &[], HOUR);
    let svid = ca.sign_x509_svid(&req, &clock).unwrap();
    // x509-parser reads it as cA=false, critical.
    let cert = parse(&svid.leaf);
    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && !bc.value.ca && bc.value.path_len_constraint.is_none());
    // The `spiffe` crate (what Rust workloads link) accepts leaf and key.
    let chain: Vec<u8> = svid.chain_without_root.iter().flat_map(|c| c.to_vec()).collect();
    let parsed = spiffe::X509Svid::parse_from_der(&chain, key.pkcs8_der().secret_pkcs8_der())
        .unwrap_or_else(|e| panic!("the spiffe crate rejects the leaf: {e}"));
    assert_eq!(parsed.spiffe_id().to_string(), "spiffe://example.org/web");
    // Our validator, with the bundle of the trust domain.
    let bundle =
        keycard_workload_api::X509Bundle::from_authorities(td(), [ca.root().clone()]).unwrap();
    let bundles: keycard_workload_api::X509BundleSet = [bundle].into_iter().collect();
    let ours = keycard_workload_api::X509Svid::from_der(
        svid.chain_without_root.clone(),
        rustls_pki_types::PrivatePkcs8KeyDer::from(key.pkcs8_der().secret_pkcs8_der().to_vec()),
    )
    .unwrap();
    let now = rustls_pki_types::UnixTime::since_unix_epoch(
        clock.now().duration_since(std::time::UNIX_EPOCH).unwrap(),
    );
    ours.validate(&bundles, now).unwrap();
    // And rustls-webpki, for both usages.
    webpki_verify(&svid, ca.root(), clock.now());
}

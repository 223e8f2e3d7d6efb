//! criterion micro-benchmarks of keycard's hot paths: selector subset matching, SPIFFE ID
//! parsing, the CSR check, X.509-SVID and JWT-SVID signing, JWT-SVID validation, and the
//! SPIFFE bundle JSON both ways.
//!
//! Run with `cargo bench --bench micro` (add a name to filter, e.g. `-- jwt`).

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use keycard::ca::{DEFAULT_MAX_CSR_LEN, SvidRequest, verify_csr};
use keycard::selector::{Selector, SelectorSet};
use keycard_workload_api::{JwtBundleSet, SpiffeBundle, SpiffeId, validate_jwt_svid};
use rcgen::PublicKeyData as _;
use rustls_pki_types::SubjectPublicKeyInfoDer;

/// The in-process scenarios' CA and trust domain, shared with the load binary.
#[path = "load/inproc/common.rs"]
#[allow(dead_code)]
mod common;
use common::{system_ca as ca, td};

fn selectors(items: &[String]) -> SelectorSet {
    items.iter().map(|s| Selector::parse(s).expect("a selector")).collect()
}

fn selector_matching(c: &mut Criterion) {
    // An entry's three selectors against a workload's twelve (what the agent's cache asks
    // for every entry a caller could match).
    let workload: Vec<String> = (0..12).map(|i| format!("unix:supplementary_gid:{i}")).collect();
    let mut workload_set = selectors(&workload);
    workload_set.insert(Selector::parse("unix:uid:1000").expect("a selector"));
    let entry = selectors(&[
        "unix:uid:1000".to_owned(),
        "unix:supplementary_gid:3".to_owned(),
        "unix:supplementary_gid:7".to_owned(),
    ]);
    let miss = selectors(&["unix:uid:1001".to_owned()]);
    c.bench_function("selector subset, 3 of 13 (match)", |b| {
        b.iter(|| black_box(&entry).is_subset_of(black_box(&workload_set)))
    });
    c.bench_function("selector subset, 1 of 13 (miss)", |b| {
        b.iter(|| black_box(&miss).is_subset_of(black_box(&workload_set)))
    });
}

fn spiffe_id_parse(c: &mut Criterion) {
    let text = "spiffe://bench.example/ns/payments/sa/api-server";
    c.bench_function("SpiffeId::parse", |b| b.iter(|| SpiffeId::parse(black_box(text))));
}

fn csr_check(c: &mut Criterion) {
    let key = rcgen::KeyPair::generate().expect("a P-256 key");
    let csr = rcgen::CertificateParams::default().serialize_request(&key).expect("a CSR");
    let der = csr.der().to_vec();
    c.bench_function("verify_csr (P-256)", |b| {
        b.iter(|| verify_csr(black_box(&der), DEFAULT_MAX_CSR_LEN).expect("a good CSR"))
    });
    // The same signature check with ring alone: what the parse and DER checks add.
    let rng = ring::rand::SystemRandom::new();
    let alg = &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING;
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("a key");
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("a key");
    let message = [7u8; 300];
    let sig = pair.sign(&rng, &message).expect("signed");
    use ring::signature::KeyPair as _;
    let public = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        pair.public_key().as_ref().to_vec(),
    );
    c.bench_function("ring P-256 verify (raw)", |b| {
        b.iter(|| public.verify(black_box(&message), black_box(sig.as_ref())).expect("valid"))
    });
    c.bench_function("ring P-256 sign (raw)", |b| {
        b.iter(|| pair.sign(&rng, black_box(&message)).expect("signed"))
    });
}

fn x509_signing(c: &mut Criterion) {
    let ca = ca();
    let key = rcgen::KeyPair::generate().expect("a P-256 key");
    let request = SvidRequest {
        public_key: SubjectPublicKeyInfoDer::from(key.subject_public_key_info()),
        spiffe_id: SpiffeId::parse("spiffe://bench.example/workload").expect("an ID"),
        dns_names: Vec::new(),
        ttl: Duration::from_secs(3600),
    };
    c.bench_function("X.509-SVID signing (CaManager)", |b| {
        b.iter(|| ca.sign_x509_svid(black_box(&request)).expect("signed"))
    });
}

fn jwt(c: &mut Criterion) {
    let ca = ca();
    let id = SpiffeId::parse("spiffe://bench.example/workload").expect("an ID");
    let audiences = vec!["api.bench.example".to_owned()];
    let ttl = Duration::from_secs(300);
    c.bench_function("JWT-SVID signing (CaManager)", |b| {
        b.iter(|| ca.sign_jwt_svid(black_box(&id), &audiences, ttl).expect("signed"))
    });
    let token = ca.sign_jwt_svid(&id, &audiences, ttl).expect("signed").token;
    let bundle = ca.bundle().expect("a bundle").jwt_bundle().expect("a JWT bundle");
    let mut bundles = JwtBundleSet::new();
    bundles.insert(bundle);
    c.bench_function("JWT-SVID validation", |b| {
        b.iter(|| {
            validate_jwt_svid(
                black_box(&token),
                &bundles,
                &["api.bench.example"],
                SystemTime::now(),
            )
            .expect("a valid token")
        })
    });
}

fn bundle_json(c: &mut Criterion) {
    let ca = ca();
    let bundle: SpiffeBundle = ca.bundle().expect("a bundle");
    let json = bundle.to_json().expect("JSON");
    c.bench_function("bundle JSON encode", |b| b.iter(|| black_box(&bundle).to_json()));
    c.bench_function("bundle JSON decode", |b| {
        b.iter(|| SpiffeBundle::parse(td(), black_box(json.as_bytes())).expect("parsed"))
    });
}

criterion_group!(
    benches,
    selector_matching,
    spiffe_id_parse,
    csr_check,
    x509_signing,
    jwt,
    bundle_json
);
criterion_main!(benches);

//! What the in-process scenarios share: a CA like the server's, CSRs made before timing,
//! the raw ring baseline, and medians of alternating rounds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keycard::ca::journal::MemoryJournal;
use keycard::ca::{CaConfig, CaManager, KeyType, MemoryKeyManager};
use keycard::clock::{Clock, SystemClock};
use keycard_workload_api::{SpiffeId, TrustDomain};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};

/// The trust domain of every in-process scenario.
pub fn td() -> TrustDomain {
    TrustDomain::new("bench.example").expect("a valid trust domain")
}

/// A workload SPIFFE ID in [`td`].
pub fn workload_id(n: usize) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://bench.example/workload/{n}")).expect("a valid SPIFFE ID")
}

/// A CA manager as the server runs it (ec-p256 authorities of 24 h, in-memory keys and
/// journal), on `clock`.
pub fn ca_manager(clock: Arc<dyn Clock>) -> Arc<CaManager> {
    let config = CaConfig {
        trust_domain: td(),
        x509_key_type: KeyType::EcP256,
        jwt_key_type: KeyType::EcP256,
        ca_ttl: Duration::from_secs(24 * 3600),
        backdate: Duration::from_secs(10),
        upstream: None,
        refresh_hint: Duration::from_secs(60),
    };
    let keys = Arc::new(MemoryKeyManager::new());
    let journal = Arc::new(MemoryJournal::default());
    Arc::new(CaManager::open(config, keys, clock, journal).expect("the bench CA starts"))
}

/// A CA manager on the system clock.
pub fn system_ca() -> Arc<CaManager> {
    ca_manager(Arc::new(SystemClock))
}

/// `n` DER CSRs, each for a fresh P-256 key, as an agent makes them.
pub fn csrs(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|_| {
            let key = rcgen::KeyPair::generate().expect("a P-256 key");
            let csr = rcgen::CertificateParams::default()
                .serialize_request(&key)
                .expect("a CSR for a fresh key");
            csr.der().to_vec()
        })
        .collect()
}

/// The raw baseline: ring ECDSA P-256 (SHA-256, ASN.1 signatures, as X.509 uses) signing
/// `count` messages of `message_len` bytes on this thread; signatures per second.
pub fn raw_sign_rate(count: usize, message_len: usize) -> f64 {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .expect("a fresh P-256 key");
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        .expect("the key just made");
    let mut message = vec![0x5au8; message_len];
    let started = Instant::now();
    for i in 0..count {
        // A different message each time, as each TBS certificate is.
        message[i % message_len] = i as u8;
        let signature = key.sign(&rng, &message).expect("ring signs");
        std::hint::black_box(signature);
    }
    count as f64 / started.elapsed().as_secs_f64()
}

/// The median of `values` (0 when empty).
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 { values[mid] } else { (values[mid - 1] + values[mid]) / 2.0 }
}

/// Runs `keycard` and `baseline` alternately `rounds` times (so that noise from other
/// processes falls on both) and returns the median of each.
pub fn alternate(
    rounds: usize,
    mut keycard: impl FnMut() -> f64,
    mut baseline: impl FnMut() -> f64,
) -> (f64, f64) {
    let mut ours = Vec::with_capacity(rounds);
    let mut theirs = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        ours.push(keycard());
        theirs.push(baseline());
    }
    (median(ours), median(theirs))
}

//! Every checked-in and freshly generated bad vector must be rejected by the workload-api
//! X509-SVID validator with exactly the variant the manifest names, and every good SVID must
//! be accepted.

use std::path::Path;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, UnixTime};

use keycard_workload_api::TrustDomain;
use keycard_workload_api::x509::{X509Bundle, X509BundleSet, X509Svid, X509SvidError};

use crate::{Manifest, generate};

/// A fixed "now" inside the validity of the good material (2026-01-01T00:00:00Z) but after
/// `expired` ended and before `not-yet-valid` starts.
fn now() -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(1_767_225_600))
}

/// The certificates of a PEM file as DER, in order (a truncated block stays truncated).
fn ders(path: &Path) -> Vec<Vec<u8>> {
    let blocks = pem::parse_many(std::fs::read(path).unwrap()).unwrap();
    blocks.into_iter().map(|b| b.into_contents()).collect()
}

/// The bundles of both trust domains.
fn bundles(dir: &Path) -> X509BundleSet {
    let mut set = X509BundleSet::new();
    for td in &Manifest::describe().trust_domains {
        let trust_domain = TrustDomain::new(&td.trust_domain).unwrap();
        let roots = ders(&dir.join(&td.bundle));
        let roots = roots.into_iter().map(CertificateDer::from);
        set.insert(X509Bundle::from_authorities(trust_domain, roots).unwrap());
    }
    set
}

/// Parses and validates one chain file with its key file.
fn validate(
    dir: &Path,
    chain: &Path,
    key: &Path,
    set: &X509BundleSet,
) -> Result<(), X509SvidError> {
    let chain_der: Vec<u8> = ders(&dir.join(chain)).concat();
    let key_der = ders(&dir.join(key)).concat();
    let svid = X509Svid::parse_der(&chain_der, &key_der)?;
    svid.validate(set, now())
}

/// The variant name of an error, from its `Debug` form (`Variant`, `Variant(..)`, `Variant {..}`).
fn variant(err: &X509SvidError) -> String {
    format!("{err:?}").chars().take_while(|c| c.is_ascii_alphanumeric()).collect()
}

fn check_dir(dir: &Path) {
    let set = bundles(dir);
    let manifest = Manifest::describe();
    for td in &manifest.trust_domains {
        let result = validate(dir, &td.svid, &td.svid_key, &set);
        assert!(result.is_ok(), "{} svid rejected: {result:?}", td.trust_domain);
    }
    let mut failures = Vec::new();
    for vector in &manifest.bad {
        if vector.strict_der_only {
            // Broken only in its encoding, which the validator (x509-parser) reads leniently,
            // as it must for SVIDs that older keycard servers minted.
            if let Err(e) = validate(dir, &vector.chain, &vector.key, &set) {
                failures.push(format!("{}: rejected ({e:?}), README says accepted", vector.name));
            }
            continue;
        }
        match validate(dir, &vector.chain, &vector.key, &set) {
            Ok(()) => failures
                .push(format!("{}: accepted, expected {}", vector.name, vector.expected_error)),
            Err(e) if variant(&e) != vector.expected_error => failures
                .push(format!("{}: got {e:?}, expected {}", vector.name, vector.expected_error)),
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "validator disagreements:\n{}", failures.join("\n"));
}

#[test]
fn validator_rejects_every_generated_bad_vector_with_its_variant() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path()).unwrap();
    check_dir(dir.path());
}

#[test]
fn validator_rejects_every_checked_in_bad_vector_with_its_variant() {
    check_dir(Path::new(env!("CARGO_MANIFEST_DIR")));
}

//! The agent's on-disk workload cache reader (`DiskCache::load_bytes`, what `load` runs on
//! the file's bytes). Input byte 0 picks the mode: even, the rest is the whole file;
//! odd, the rest is the authenticated body, which the check seals with the agent's cache
//! key (so the fuzzer gets past the tag). The stored bundle is certs-dev's example.org
//! root. Invariants: loading never panics and gives the same answer twice; a refused
//! file leaves the cache empty; an accepted file that restores anything carries a tag
//! that verifies under the key (checked with `ring` here); the counts add up against the
//! body read with `serde_json` and `prost` alone; and every SVID the cache then serves
//! passes its own checks again: it chains to the stored bundle with its entry's SPIFFE
//! ID, is not expired, has exactly its entry's DNS names, and its key is the leaf's.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use keycard::agent::cache::SvidCache;
use keycard::agent::disk_cache::DiskCache;
use keycard::agent::storage::AgentStorage;
use keycard::clock::ManualClock;
use keycard::wire::proto::Entry;
use keycard_workload_api::{JwtBundle, SpiffeBundle, X509Bundle, X509BundleSet, verify_chain};
use prost::Message as _;
use rustls_pki_types::UnixTime;
use serde_json::Value;
use x509_cert::der::{Decode as _, Encode as _};

use super::common;

struct Fixture {
    disk: DiskCache,
    key: ring::hmac::Key,
    stored: SpiffeBundle,
    clock: Arc<ManualClock>,
}

/// The agent's stored bundle in every check: the example.org root, sequence 1.
pub fn stored_bundle() -> SpiffeBundle {
    let td = common::trust_domain();
    let root = common::pem_first(common::ROOT_PEM);
    let x509 = X509Bundle::parse_der(td.clone(), &root).expect("root");
    SpiffeBundle::from_parts(&x509, &JwtBundle::new(td), Some(1), Some(Duration::from_secs(300)))
        .expect("bundle")
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let clock = Arc::new(ManualClock::new(common::now()));
        // The directory is needed only to open the cache and make its key; loading from
        // bytes reads no file, so it is removed right away.
        let dir = tempfile::tempdir().expect("temp dir");
        let storage = AgentStorage::open(&dir.path().join("agent")).expect("storage");
        let disk = DiskCache::open(&storage, clock.clone()).expect("disk cache");
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &storage.cache_key().expect("key"));
        Fixture { disk, key, stored: stored_bundle(), clock }
    })
}

/// The whole file for `body`, sealed with the fixture's key (format version 2).
pub fn seal(body: &str) -> Vec<u8> {
    let mac = hex::encode(ring::hmac::sign(&fixture().key, body.as_bytes()).as_ref());
    serde_json::to_vec(&serde_json::json!({ "version": 2, "body": body, "mac": mac }))
        .expect("JSON")
}

/// Loads the file `data` describes (see the module documentation) and checks the result;
/// returns whether the cache then serves an SVID from it.
pub fn check(data: &[u8]) -> bool {
    let Some((&mode, rest)) = data.split_first() else { return false };
    let file = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        match std::str::from_utf8(rest) {
            Ok(body) => seal(body),
            Err(_) => return false,
        }
    };
    let f = fixture();
    let td = common::trust_domain();
    let cache = SvidCache::new(f.clock.clone());
    let result = f.disk.load_bytes(&file, &td, Some(&f.stored), &cache);
    let twice = f.disk.load_bytes(&file, &td, Some(&f.stored), &SvidCache::new(f.clock.clone()));
    assert_eq!(result.as_ref().ok(), twice.as_ref().ok(), "loading is not deterministic");
    let Ok(restored) = result else {
        assert!(cache.svids().is_empty(), "a refused file filled the cache");
        return false;
    };
    if restored == Default::default() {
        return false;
    }

    let envelope: Value = serde_json::from_slice(&file).expect("accepted a non-JSON file");
    let body = envelope["body"].as_str().expect("accepted a file without body");
    let tag = hex::decode(envelope["mac"].as_str().expect("mac")).expect("accepted a non-hex mac");
    ring::hmac::verify(&f.key, body.as_bytes(), &tag).expect("accepted a forged tag");
    let body: Value = serde_json::from_str(body).expect("accepted a non-JSON body");
    let mut entries = BTreeMap::new();
    for e in body["entries"].as_array().expect("entries") {
        let raw = STANDARD.decode(e.as_str().expect("entry text")).expect("entry base64");
        let entry = Entry::decode(raw.as_slice()).expect("accepted an entry that does not decode");
        entries.insert(entry.id.clone(), entry);
    }
    assert_eq!(restored.entries, entries.len(), "entry count");
    let stored_svids = body["svids"].as_array().map_or(0, Vec::len);
    assert_eq!(restored.svids + restored.dropped, stored_svids, "SVID counts");

    let mut bundles = X509BundleSet::new();
    bundles.insert(f.stored.x509_bundle().expect("x509 bundle"));
    let now = UnixTime::since_unix_epoch(Duration::from_secs(common::NOW_SECS));
    let served = cache.svids();
    assert!(served.len() <= restored.svids, "more SVIDs served than restored");
    let served_any = !served.is_empty();
    for svid in served {
        let entry = entries.get(&*svid.entry_id).expect("an SVID for an entry not in the file");
        assert_eq!(svid.spiffe_id.as_str(), entry.spiffe_id, "SVID of another ID");
        let id = verify_chain(&svid.chain, &bundles, now).expect("a restored SVID does not verify");
        assert_eq!(id, svid.spiffe_id);
        assert!(svid.expires_at > common::now(), "an expired SVID restored");
        let leaf = x509_cert::Certificate::from_der(&svid.chain[0]).expect("leaf DER");
        let spki = leaf.tbs_certificate.subject_public_key_info.to_der().expect("SPKI");
        let key = keycard::ca::SigningKey::from_pkcs8_der(svid.key.pkcs8_der().secret_pkcs8_der())
            .expect("a restored key that is not PKCS#8");
        assert_eq!(key.public_key_der(), spki, "a restored key does not match its leaf");
        let names: BTreeSet<String> = dns_names(&leaf);
        let wanted: BTreeSet<String> =
            entry.dns_names.iter().map(|d| d.to_ascii_lowercase()).collect();
        assert_eq!(names, wanted, "a restored SVID with other DNS names than its entry");
    }
    served_any
}

/// The DNS names of a certificate's SubjectAltName, lowercased.
pub fn dns_names(cert: &x509_cert::Certificate) -> BTreeSet<String> {
    use x509_cert::ext::pkix::SubjectAltName;
    use x509_cert::ext::pkix::name::GeneralName;
    let extensions = cert.tbs_certificate.extensions.as_deref().unwrap_or_default();
    extensions
        .iter()
        .filter(|e| e.extn_id == common::oid("2.5.29.17"))
        .flat_map(|e| SubjectAltName::from_der(e.extn_value.as_bytes()).expect("SAN").0)
        .filter_map(|n| match n {
            GeneralName::DnsName(d) => Some(d.to_string().to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

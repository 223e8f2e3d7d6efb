use std::os::unix::fs::PermissionsExt as _;

use keycard_workload_api::SpiffeId;
use rustls::pki_types::SubjectPublicKeyInfoDer;

use super::*;
use crate::ca::{CaManager, KeyType, SvidRequest};
use crate::clock::ManualClock;

fn entry(id: &str) -> pb::Entry {
    pb::Entry {
        id: id.into(),
        spiffe_id: format!("spiffe://example.org/{id}"),
        selectors: vec!["unix:uid:1000".into()],
        revision: 3,
        ..Default::default()
    }
}

fn mint(ca: &CaManager, cache: &SvidCache, entry_id: &str, ttl: Duration) {
    let key = Arc::new(SigningKey::generate(KeyType::EcP256).unwrap());
    let issued = ca
        .sign_x509_svid(&SvidRequest {
            public_key: SubjectPublicKeyInfoDer::from(key.public_key_der()),
            spiffe_id: SpiffeId::parse(&format!("spiffe://example.org/{entry_id}")).unwrap(),
            dns_names: Vec::new(),
            ttl,
        })
        .unwrap();
    let now = SystemTime::now();
    for r in cache.update_svids(vec![NewSvid {
        entry_id: entry_id.into(),
        chain: issued.svid.chain_without_root,
        key,
        serial: hex::encode(issued.svid.serial),
        issued_at: now,
        renew_at: now + ttl / 2,
    }]) {
        r.unwrap();
    }
}

#[test]
fn a_saved_cache_is_restored_checked_and_expired_svids_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let td = TrustDomain::new("example.org").unwrap();
    let ca = crate::ca::manager::test_ca(td.clone());
    let clock = Arc::new(ManualClock::starting_now());
    let cache = SvidCache::new(clock.clone());
    let synced = SyncedEntries {
        revision: 7,
        entries: ["a", "b"].into_iter().map(|id| (id.to_owned(), entry(id))).collect(),
        bundle: Some(ca.bundle().unwrap()),
        tainted_authority_ids: Vec::new(),
    };
    cache.set_entries(&synced.entries, synced.bundle.as_ref(), &[]).unwrap();
    mint(&ca, &cache, "a", Duration::from_secs(3600));
    mint(&ca, &cache, "b", Duration::from_secs(60));

    let mut disk = DiskCache::open(dir.path()).unwrap();
    assert!(disk.save(&synced, &cache).unwrap());
    assert!(!disk.save(&synced, &cache).unwrap(), "an unchanged cache is not written again");
    let file = dir.path().join("cache/workload_cache.json");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(file.parent().unwrap()).unwrap().permissions().mode() & 0o777,
        0o700
    );

    // A restart now: both SVIDs come back, with their keys.
    let fresh = SvidCache::new(clock.clone());
    let restored = DiskCache::open(dir.path()).unwrap().load(&td, &fresh).unwrap();
    assert_eq!(restored, Restored { entries: 2, svids: 2, dropped: 0 });
    for id in ["a", "b"] {
        let (old, new) = (cache.svid(id).unwrap(), fresh.svid(id).unwrap());
        assert_eq!(old.chain, new.chain);
        assert_eq!(old.key.public_key_der(), new.key.public_key_der());
        assert_eq!(secs(old.renew_at), secs(new.renew_at));
    }

    // A restart two minutes later: "b" has expired and is not served.
    clock.advance(Duration::from_secs(120));
    let later = SvidCache::new(clock.clone());
    let restored = DiskCache::open(dir.path()).unwrap().load(&td, &later).unwrap();
    assert_eq!(restored, Restored { entries: 2, svids: 1, dropped: 1 });
    assert!(later.svid("a").is_some() && later.svid("b").is_none());
}

#[test]
fn a_damaged_file_is_an_error_naming_it_and_a_missing_one_restores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let td = TrustDomain::new("example.org").unwrap();
    let cache = SvidCache::new(Arc::new(ManualClock::starting_now()));
    let disk = DiskCache::open(dir.path()).unwrap();
    assert_eq!(disk.load(&td, &cache).unwrap(), Restored::default());
    std::fs::write(dir.path().join("cache/workload_cache.json"), b"{\"version\":").unwrap();
    let e = disk.load(&td, &cache).unwrap_err().to_string();
    assert!(e.contains("workload_cache.json"), "{e}");
}

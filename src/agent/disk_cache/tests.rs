use std::os::unix::fs::PermissionsExt as _;

use super::*;
use crate::ca::CaManager;
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
    let id = format!("spiffe://example.org/{entry_id}");
    let svid = crate::agent::cache::test_svid(ca, entry_id, &id, ttl);
    cache.update_svids(vec![svid]).into_iter().for_each(|r| r.unwrap());
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

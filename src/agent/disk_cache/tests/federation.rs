//! The federated bundles in the cache file: saved, restored into the
//! cache, and the previous format version still read.

use super::*;
use crate::agent::cache::TrustBundle;

fn foreign(name: &str) -> (TrustDomain, SpiffeBundle) {
    let td = TrustDomain::new(name).unwrap();
    (td.clone(), crate::ca::manager::test_ca(td).bundle().unwrap())
}

/// The fixture's cache and file, with example.com's and example.net's bundles held and
/// entry `a` federating with example.com.
async fn saved_with_federation() -> (Fixture, SyncedEntries) {
    let f = Fixture::saved().await;
    let mut synced = f.synced.clone();
    let mut entries = f.entries.clone();
    entries.get_mut("a").unwrap().federates_with = vec!["example.com".into()];
    synced.federated = [foreign("example.com"), foreign("example.net")].into_iter().collect();
    synced.federated_digest = b"digest-1".to_vec();
    let federated = synced
        .federated
        .iter()
        .map(|(td, b)| (td.clone(), Arc::new(TrustBundle::of(b).unwrap())))
        .collect();
    f.cache.set_synced(&entries, synced.bundle.as_ref(), &[], Some(federated)).unwrap();
    let mut disk = DiskCache::open(&f.storage, f.clock.clone()).unwrap();
    assert!(disk.save(&synced, &f.cache).await.unwrap());
    assert!(!disk.save(&synced, &f.cache).await.unwrap(), "unchanged: not written again");
    // The revision and SVIDs stay; a new digest alone is a change worth writing.
    let mut next = synced.clone();
    next.federated_digest = b"digest-2".to_vec();
    assert!(disk.save(&next, &f.cache).await.unwrap());
    assert!(disk.save(&synced, &f.cache).await.unwrap());
    (f, synced)
}

#[tokio::test]
async fn the_federated_bundles_survive_a_restart() {
    let (f, synced) = saved_with_federation().await;
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.file()).unwrap()).unwrap();
    assert_eq!(file["version"], 3);

    let (fresh, restored) = f.load();
    assert_eq!(restored.unwrap(), Restored { entries: 2, svids: 2, dropped: 0 });
    let held = fresh.federated();
    assert_eq!(
        held.keys().map(TrustDomain::name).collect::<Vec<_>>(),
        ["example.com", "example.net"]
    );
    for (td, bundle) in &synced.federated {
        assert_eq!(&held[td].spiffe, bundle);
    }
    let a = fresh.federated_for(&selectors(&["unix:uid:1000"]));
    assert_eq!(a.keys().map(TrustDomain::name).collect::<Vec<_>>(), ["example.com"]);
}

#[tokio::test]
async fn a_version_2_file_is_still_read_but_not_one_claiming_federated_bundles() {
    let (f, _) = saved_with_federation().await;
    let disk = DiskCache::open(&f.storage, f.clock.clone()).unwrap();
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.file()).unwrap()).unwrap();
    let body: serde_json::Value = serde_json::from_str(file["body"].as_str().unwrap()).unwrap();
    assert!(body["federated_bundles"]["example.com"].is_string());
    assert!(body.get("federated_digest").is_none(), "the digest is not kept");
    let stored = f.storage.load_bundle(&f.td).unwrap();
    let seal = |body: &serde_json::Value, version: u32| {
        let body = body.to_string();
        let mac = hex::encode(hmac::sign(&disk.key, body.as_bytes()).as_ref());
        serde_json::json!({"version": version, "body": body, "mac": mac}).to_string()
    };

    // As an agent before federation wrote it: no federated fields.
    let mut old = body.clone();
    let fields = old.as_object_mut().unwrap();
    fields.remove("federated_bundles");
    let fresh = SvidCache::new(f.clock.clone());
    let restored = disk.load_bytes(seal(&old, 2).as_bytes(), &f.td, stored.as_ref(), &fresh);
    assert_eq!(restored.unwrap().svids, 2);
    assert!(fresh.federated().is_empty());

    let fresh = SvidCache::new(f.clock.clone());
    let e = disk
        .load_bytes(seal(&body, 2).as_bytes(), &f.td, stored.as_ref(), &fresh)
        .unwrap_err()
        .to_string();
    assert!(e.contains("version 2"), "{e}");
    assert!(fresh.svids().is_empty());

    // Version 1 (or any other) is ignored, as before.
    let fresh = SvidCache::new(f.clock.clone());
    let restored = disk.load_bytes(seal(&old, 1).as_bytes(), &f.td, stored.as_ref(), &fresh);
    assert_eq!(restored.unwrap(), Restored::default());
}

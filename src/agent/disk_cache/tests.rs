use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

use super::*;
use crate::ca::CaManager;
use crate::clock::ManualClock;
use crate::selector::{Selector, SelectorSet};

mod attacks;
mod federation;

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

fn selectors(items: &[&str]) -> SelectorSet {
    items.iter().map(|s| Selector::parse(s).unwrap()).collect()
}

/// An agent data directory with a stored bundle, a cache holding entries `a` and `b`
/// (selecting uid 1000) with SVIDs, and that cache saved to disk.
struct Fixture {
    dir: tempfile::TempDir,
    td: TrustDomain,
    clock: Arc<ManualClock>,
    storage: AgentStorage,
    cache: SvidCache,
    synced: SyncedEntries,
    /// The entries the cache was given.
    entries: BTreeMap<String, pb::Entry>,
}

impl Fixture {
    async fn saved() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        let ca = crate::ca::manager::test_ca(td.clone());
        let clock = Arc::new(ManualClock::starting_now());
        let storage = AgentStorage::open(dir.path()).unwrap();
        let cache = SvidCache::new(clock.clone());
        let synced = SyncedEntries {
            revision: 7,
            bundle: Some(ca.bundle().unwrap()),
            tainted_authority_ids: Vec::new(),
            ..Default::default()
        };
        let entries: BTreeMap<String, pb::Entry> =
            ["a", "b"].into_iter().map(|id| (id.to_owned(), entry(id))).collect();
        storage.save_bundle(&ca.bundle().unwrap()).unwrap();
        cache.set_entries(&entries, synced.bundle.as_ref(), &[]).unwrap();
        mint(&ca, &cache, "a", Duration::from_secs(3600));
        mint(&ca, &cache, "b", Duration::from_secs(60));
        let mut disk = DiskCache::open(&storage, clock.clone()).unwrap();
        assert!(disk.save(&synced, &cache).await.unwrap());
        assert!(!disk.save(&synced, &cache).await.unwrap(), "an unchanged cache is not written");
        Fixture { dir, td, clock, storage, cache, synced, entries }
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("cache/workload_cache.json")
    }

    /// A restart: a fresh cache filled from the file.
    fn load(&self) -> (SvidCache, Result<Restored, StorageError>) {
        let fresh = SvidCache::new(self.clock.clone());
        let disk = DiskCache::open(&self.storage, self.clock.clone()).unwrap();
        let stored = self.storage.load_bundle(&self.td).unwrap();
        let restored = disk.load(&self.td, stored.as_ref(), &fresh);
        (fresh, restored)
    }
}

#[tokio::test]
async fn a_saved_cache_is_restored_checked_and_expired_svids_are_dropped() {
    let f = Fixture::saved().await;
    let file = f.file();
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(file.parent().unwrap()).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let key = f.dir.path().join(crate::agent::storage::CACHE_KEY_FILE);
    assert_eq!(std::fs::metadata(&key).unwrap().mode() & 0o777, 0o600);

    // A restart now: both SVIDs come back, with their keys.
    let (fresh, restored) = f.load();
    assert_eq!(restored.unwrap(), Restored { entries: 2, svids: 2, dropped: 0 });
    for id in ["a", "b"] {
        let (old, new) = (f.cache.svid(id).unwrap(), fresh.svid(id).unwrap());
        assert_eq!(old.chain, new.chain);
        assert_eq!(old.key.pkcs8_der(), new.key.pkcs8_der());
        assert_eq!(secs(old.renew_at), secs(new.renew_at));
    }

    // A restart two minutes later: "b" has expired and is not served.
    f.clock.advance(Duration::from_secs(120));
    let (later, restored) = f.load();
    assert_eq!(restored.unwrap(), Restored { entries: 2, svids: 1, dropped: 1 });
    assert!(later.svid("a").is_some() && later.svid("b").is_none());
}

#[tokio::test]
async fn a_damaged_file_is_an_error_naming_it_and_a_missing_one_restores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let td = TrustDomain::new("example.org").unwrap();
    let clock = Arc::new(ManualClock::starting_now());
    let cache = SvidCache::new(clock.clone());
    let storage = AgentStorage::open(dir.path()).unwrap();
    let disk = DiskCache::open(&storage, clock).unwrap();
    assert_eq!(disk.load(&td, None, &cache).unwrap(), Restored::default());
    std::fs::write(dir.path().join("cache/workload_cache.json"), b"{\"version\":").unwrap();
    let e = disk.load(&td, None, &cache).unwrap_err().to_string();
    assert!(e.contains("workload_cache.json"), "{e}");
}

#[tokio::test]
async fn an_authentic_body_with_a_field_the_agent_does_not_write_is_refused() {
    let f = Fixture::saved().await;
    let disk = DiskCache::open(&f.storage, f.clock.clone()).unwrap();
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.file()).unwrap()).unwrap();
    let body: serde_json::Value = serde_json::from_str(file["body"].as_str().unwrap()).unwrap();
    let stored = f.storage.load_bundle(&f.td).unwrap();
    // Unknown keys at the top of the body and inside an SVID, each sealed with the agent's
    // own key (a fuzzer found an unknown key holding a number no JSON reader can represent).
    let top = |b: &mut serde_json::Value| b["sentries"] = serde_json::json!([]);
    let svid = |b: &mut serde_json::Value| b["svids"][0]["saved_at"] = serde_json::json!(1);
    for edit in [&top as &dyn Fn(&mut serde_json::Value), &svid] {
        let mut body = body.clone();
        edit(&mut body);
        let body = body.to_string();
        let mac = hex::encode(hmac::sign(&disk.key, body.as_bytes()).as_ref());
        let sealed = serde_json::json!({"version": VERSION, "body": body, "mac": mac});
        let fresh = SvidCache::new(f.clock.clone());
        let e = disk
            .load_bytes(sealed.to_string().as_bytes(), &f.td, stored.as_ref(), &fresh)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field"), "{e}");
        assert!(fresh.svids().is_empty());
    }
}

#[tokio::test]
async fn an_svid_whose_dns_names_are_not_its_entrys_is_dropped() {
    let f = Fixture::saved().await;
    // The entry now names a DNS name the SVID lacks (the file is re-saved, so it is this
    // agent's own and authentic): the SVID is not served for it.
    let mut synced = f.synced.clone();
    synced.revision += 1;
    let mut entries = f.entries.clone();
    entries.get_mut("a").unwrap().dns_names = vec!["a.example.org".into()];
    f.cache.set_entries(&entries, synced.bundle.as_ref(), &[]).unwrap();
    let mut disk = DiskCache::open(&f.storage, f.clock.clone()).unwrap();
    assert!(disk.save(&synced, &f.cache).await.unwrap());
    let (fresh, restored) = f.load();
    assert_eq!(restored.unwrap(), Restored { entries: 2, svids: 1, dropped: 1 });
    assert!(fresh.svid("a").is_none() && fresh.svid("b").is_some());
    assert_eq!(fresh.svids_for(&selectors(&["unix:uid:1000"])).len(), 1);
}

#[test]
fn a_reader_on_the_runtime_is_not_blocked_while_the_cache_is_written() {
    use std::sync::mpsc::channel;

    use crate::agent::cache::test_support::GateClock;

    let dir = tempfile::tempdir().unwrap();
    let td = TrustDomain::new("example.org").unwrap();
    let ca = crate::ca::manager::test_ca(td);
    let clock = GateClock::new();
    let storage = AgentStorage::open(dir.path()).unwrap();
    let cache = Arc::new(SvidCache::new(clock.clone()));
    let synced = SyncedEntries {
        revision: 1,
        bundle: Some(ca.bundle().unwrap()),
        tainted_authority_ids: Vec::new(),
        ..Default::default()
    };
    let entries = [("a".to_owned(), entry("a"))].into();
    cache.set_entries(&entries, synced.bundle.as_ref(), &[]).unwrap();
    mint(&ca, &cache, "a", Duration::from_secs(600));
    let mut disk = DiskCache::open(&storage, clock.clone()).unwrap();

    // One runtime thread, as a busy agent may effectively have: the round saves the cache
    // (held by the gate in the middle of the write), then a Workload API read comes in.
    let gate = clock.arm();
    let (go, go_rx) = tokio::sync::oneshot::channel::<()>();
    let (served_tx, served) = channel();
    let runtime = std::thread::spawn({
        let cache = cache.clone();
        move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let reader = tokio::spawn({
                    let cache = cache.clone();
                    async move {
                        let _ = go_rx.await;
                        let _ =
                            served_tx.send(cache.svids_for(&selectors(&["unix:uid:1000"])).len());
                    }
                });
                let wrote = disk.save(&synced, &cache).await;
                reader.await.unwrap();
                wrote
            })
        }
    });
    gate.entered.recv_timeout(Duration::from_secs(10)).expect("the save reached its write");
    go.send(()).unwrap();
    let read = served.recv_timeout(Duration::from_secs(5));
    let _ = gate.release.send(());
    assert!(runtime.join().unwrap().unwrap(), "the save completed");
    assert_eq!(read, Ok(1), "the reader waited for the disk write");
    assert!(dir.path().join("cache/workload_cache.json").exists());
}

//! Which bundle a sync may bring in: never an empty one, never an older one.

use std::sync::Arc;

use super::harness::{Server, setup, setup_on, td};
use super::*;
use crate::ca::journal::{JournalStore as _, MemoryJournal};
use crate::ca::{CaConfig, CaManager, MemoryKeyManager};

fn config() -> CaConfig {
    CaConfig {
        trust_domain: td(),
        x509_key_type: KeyType::EcP256,
        jwt_key_type: KeyType::EcP256,
        ca_ttl: Duration::from_secs(24 * 3600),
        backdate: Duration::from_secs(10),
        upstream: None,
        refresh_hint: Duration::from_secs(60),
    }
}

#[tokio::test]
async fn an_older_bundle_from_a_rolled_back_server_is_refused_and_the_held_one_kept() {
    let keys = Arc::new(MemoryKeyManager::new());
    let journal = Arc::new(MemoryJournal::default());
    let clock = Arc::new(crate::clock::SystemClock);
    let ca =
        Arc::new(CaManager::open(config(), keys.clone(), clock.clone(), journal.clone()).unwrap());
    // A backup of the CA's state, taken now.
    let backup = Arc::new(MemoryJournal::default());
    backup.save(&journal.load().unwrap()).unwrap();

    let mut s = setup_on(Server::start_with_ca(ca.clone()).await, ManagerOptions::default()).await;
    s.server.entry("spiffe://example.org/web", &s.agent_id, &["unix:uid:1"]);
    let report = s.manager.tick().await.unwrap();
    assert!(!report.bundle_refused);
    let old = s.cache.bundle().unwrap().spiffe.clone();

    // The CA prepares its next authority: a new bundle with a higher sequence is adopted.
    ca.prepare(AuthorityKind::X509).unwrap();
    let report = s.manager.tick().await.unwrap();
    assert!(!report.bundle_refused);
    let newer = s.cache.bundle().unwrap().spiffe.clone();
    assert!(newer.sequence > old.sequence);
    assert_eq!(newer.x509_authorities.len(), 2);

    // The server comes back from the backup (same keys, older journal): it sends the
    // older bundle. The agent keeps the newer one, and the round still syncs entries.
    s.server.shut_down().await;
    let rolled_back = Arc::new(CaManager::open(config(), keys, clock, backup).unwrap());
    assert_eq!(rolled_back.bundle().unwrap().sequence, old.sequence);
    s.server = s.server.restart_with_ca(rolled_back).await;
    s.server.entry("spiffe://example.org/db", &s.agent_id, &["unix:uid:2"]);
    let report = s.manager.tick().await.unwrap();
    assert!(report.bundle_refused, "{report:?}");
    assert_eq!(report.entries, 2);
    assert_eq!(s.cache.bundle().unwrap().spiffe, newer, "the held bundle is kept");
    assert_eq!(s.manager.synced().bundle.as_ref(), Some(&newer), "and stored as such");
    let server_trust = s.manager.client().bundle();
    assert_eq!(Some(server_trust), newer.x509_bundle().ok(), "and trusted for the server");
    assert_eq!(s.cache.svids_for(&selectors(&["unix:uid:2"])).len(), 1);
}

#[tokio::test]
async fn an_empty_bundle_after_a_sync_is_refused_and_the_held_one_kept() {
    let mut s = setup().await;
    s.manager.tick().await.unwrap();
    let held = s.cache.bundle().unwrap().spiffe.clone();

    // What a sync brings: a bundle without authorities (a higher sequence does not make
    // it acceptable).
    let mut empty = held.clone();
    empty.x509_authorities.clear();
    empty.jwt_authorities.clear();
    empty.sequence = held.sequence.map(|n| n + 1);
    let e = s.manager.adopt_bundle(&empty).unwrap_err();
    assert!(matches!(e, CacheError::EmptyBundle), "{e:?}");
    assert_eq!(s.manager.held_bundle().as_ref(), Some(&held), "the held bundle goes on");

    // The cache refuses it too, whoever offers it, and changes nothing.
    let e = s.cache.apply(CacheDelta { bundle: Some(&empty), ..Default::default() }).unwrap_err();
    assert!(matches!(e, CacheError::EmptyBundle), "{e:?}");
    assert_eq!(s.cache.bundle().unwrap().spiffe, held);

    // A restarted agent starts from its stored bundle: an older one is refused at once.
    let mut older = held.clone();
    older.jwt_authorities.clear();
    older.sequence = held.sequence.and_then(|n| n.checked_sub(1));
    let fresh = Manager::new(
        s.server.agent().await,
        Arc::new(SvidCache::new(Arc::new(s.clock.clone()))),
        Arc::new(s.clock.clone()),
        ManagerOptions::default(),
    )
    .with_held_bundle(held.clone());
    assert!(matches!(fresh.adopt_bundle(&older), Err(CacheError::StaleBundle { .. })));
    assert_eq!(fresh.held_bundle(), Some(held));
}

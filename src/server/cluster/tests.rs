//! Two servers on one SQLite file (two handles, as two processes would have).

use std::sync::Arc;
use std::time::Duration;

use keycard_workload_api::TrustDomain;

use super::*;
use crate::ca::{CaConfig, KeyType, MemoryKeyManager, SlotState};
use crate::clock::ManualClock;
use crate::server::datastore::{DataStoreJournal, SqliteDataStore};

struct Server {
    ca: Arc<CaManager>,
    cluster: Cluster,
}

fn server(path: &std::path::Path, id: &str, clock: &ManualClock) -> Server {
    let store: Arc<dyn DataStore> = Arc::new(SqliteDataStore::open(path).unwrap());
    let config = CaConfig {
        trust_domain: TrustDomain::new("example.org").unwrap(),
        x509_key_type: KeyType::EcP256,
        jwt_key_type: KeyType::EcP256,
        ca_ttl: Duration::from_secs(3600),
        backdate: Duration::from_secs(1),
        upstream: None,
        refresh_hint: Duration::from_secs(5),
    };
    let journal = Arc::new(DataStoreJournal::new(store.clone(), id));
    let clock: Arc<dyn Clock> = Arc::new(clock.clone());
    let keys = Arc::new(MemoryKeyManager::new());
    let ca = Arc::new(CaManager::open(config, keys, clock.clone(), journal).unwrap());
    let cluster = Cluster::new(store, ca.clone(), clock, id.into(), format!("{id}:8081"));
    Server { ca, cluster }
}

fn ids(ca: &CaManager, kind: AuthorityKind) -> Vec<String> {
    ca.authorities(kind).into_iter().map(|a| a.id).collect()
}

#[test]
fn servers_publish_each_others_authorities_and_mark_each_others() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let clock = ManualClock::starting_now();
    let (a, b) = (server(&path, "a", &clock), server(&path, "b", &clock));
    a.cluster.refresh().unwrap();
    b.cluster.refresh().unwrap();
    a.cluster.refresh().unwrap();
    for s in [&a, &b] {
        let bundle = s.ca.bundle().unwrap();
        assert_eq!(bundle.x509_authorities.len(), 2);
        assert_eq!(bundle.jwt_authorities.len(), 2);
    }
    assert_eq!(a.ca.bundle().unwrap().sequence, b.ca.bundle().unwrap().sequence);
    let peers = a.cluster.peers();
    assert_eq!(peers.len(), 1);
    assert_eq!(
        (peers[0].id.as_str(), peers[0].address.as_str(), peers[0].live),
        ("b", "b:8081", true)
    );
    clock.advance(PEER_STALE_AFTER);
    assert!(!a.cluster.peers()[0].live, "not announced for {PEER_STALE_AFTER:?}");

    // A rotates by hand; B taints and revokes A's old authority.
    let old = ids(&a.ca, AuthorityKind::X509)[0].clone();
    let next = a.ca.prepare(AuthorityKind::X509).unwrap();
    a.ca.activate(AuthorityKind::X509, &next).unwrap();
    let refused = b.cluster.revoke(AuthorityKind::X509, &old).unwrap_err();
    assert!(refused.to_string().contains("not tainted"), "{refused}");
    let refused = b.cluster.taint(AuthorityKind::X509, &next).unwrap_err();
    assert!(refused.to_string().contains("active"), "{refused}");
    let unknown = b.cluster.taint(AuthorityKind::X509, "00").unwrap_err();
    assert!(unknown.to_string().contains("00"), "{unknown}");

    b.cluster.taint(AuthorityKind::X509, &old).unwrap();
    assert!(b.ca.tainted_x509_authorities().contains(&old), "at once on B");
    a.cluster.refresh().unwrap();
    let mine = a.ca.authorities(AuthorityKind::X509);
    assert!(mine[0].tainted && mine[0].state == SlotState::Old, "A applied the mark: {mine:?}");

    b.cluster.revoke(AuthorityKind::X509, &old).unwrap();
    assert_eq!(b.ca.bundle().unwrap().x509_authorities.len(), 2, "B's own and A's active");
    a.cluster.refresh().unwrap();
    assert!(!ids(&a.ca, AuthorityKind::X509).contains(&old));
    b.cluster.refresh().unwrap();
    let roots = |s: &Server| {
        let mut r: Vec<Vec<u8>> =
            s.ca.bundle().unwrap().x509_authorities.iter().map(|c| c.to_vec()).collect();
        r.sort();
        r
    };
    assert_eq!(roots(&a), roots(&b));
    assert_eq!(a.ca.bundle().unwrap().sequence, b.ca.bundle().unwrap().sequence);
}

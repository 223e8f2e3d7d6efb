//! Manager and cache tests against a real server in-process: SQLite in a tempdir, a real
//! CA manager, the real TLS agent API on 127.0.0.1, an agent attested with a join token.
//! The agent side reads time from a manual clock; the server signs with the system clock.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keycard_workload_api::verify_chain;
use rustls_pki_types::UnixTime;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::*;
use crate::agent::cache::{CacheDelta, CacheError, NewSvid, WorkloadSvid};
use crate::agent::renewal;
use crate::ca::journal::AuthorityKind;
use crate::ca::{KeyType, SigningKey};
use crate::selector::SelectorSet;

mod agent_renewal;
mod bundle;
mod clock_jump;
mod failover;
mod federation;
mod harness;
mod pacing;
mod revisions;
use harness::{selectors, setup, setup_with};

fn leaf_public_key(svid: &WorkloadSvid) -> Vec<u8> {
    let (_, cert) = X509Certificate::from_der(&svid.chain[0]).unwrap();
    cert.public_key().raw.to_vec()
}

fn unix(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(t.duration_since(SystemTime::UNIX_EPOCH).unwrap())
}

fn entry_ids(svids: &[WorkloadSvid]) -> Vec<String> {
    svids.iter().map(|s| s.entry_id.to_string()).collect()
}

#[tokio::test]
async fn entries_in_the_store_get_valid_svids_after_one_tick() {
    let mut s = setup().await;
    let web = s.server.entry("spiffe://example.org/web", &s.agent_id, &["unix:uid:1000"]);
    let db = s.server.entry("spiffe://example.org/db", &s.agent_id, &["unix:uid:1001"]);
    assert!(s.cache.svids_for(&selectors(&["unix:uid:1000"])).is_empty());

    let report = s.manager.tick().await.unwrap();
    assert_eq!((report.entries, report.issued, report.failed, report.batches), (2, 2, 0, 1));
    assert!(report.synced_changed);
    for (entry, uid) in [(&web, "unix:uid:1000"), (&db, "unix:uid:1001")] {
        let svids = s.cache.svids_for(&selectors(&[uid]));
        assert_eq!(entry_ids(&svids), vec![entry.id.clone()]);
        let svid = &svids[0];
        assert_eq!(svid.spiffe_id, entry.spec.spiffe_id);
        let id = verify_chain(&svid.chain, &s.server.bundle_set(), unix(s.clock.now())).unwrap();
        assert_eq!(id, entry.spec.spiffe_id);
        // The key is the agent's own, P-256, and its PKCS#8 form loads back to the same key.
        let key = SigningKey::from_pkcs8_der(svid.key_pkcs8_der().secret_pkcs8_der()).unwrap();
        assert_eq!(key.key_type(), KeyType::EcP256);
        assert_eq!(key.public_key_der(), leaf_public_key(svid));
        // The cache knows which authority signed it: the active one.
        let cached = s.cache.svid(&entry.id).unwrap();
        let active = s.server.ca.authorities(AuthorityKind::X509);
        assert_eq!(cached.authority_id.as_deref(), Some(active[0].id.as_str()));
    }
    let bundle = s.cache.bundle().unwrap();
    assert_eq!(bundle.x509, s.server.ca.bundle().unwrap().x509_bundle().unwrap());
    assert!(!bundle.jwt.authorities().is_empty());

    // Nothing is due before the renewal time: a second tick signs nothing, and says that
    // its sync changed nothing (so the agent stores and counts nothing again).
    let report = s.manager.tick().await.unwrap();
    assert_eq!((report.issued, report.renewed, report.batches), (0, 0, 0));
    assert!(!report.synced_changed, "an idle round reported a change");
    s.server.entry("spiffe://example.org/new", &s.agent_id, &["unix:uid:1002"]);
    let report = s.manager.tick().await.unwrap();
    assert!(report.synced_changed && report.issued == 1);
}

#[tokio::test]
async fn svids_for_returns_entries_whose_selectors_are_a_subset_of_the_callers() {
    let mut s = setup().await;
    let a = s.server.entry("spiffe://example.org/a", &s.agent_id, &["unix:uid:1"]);
    let b = s.server.entry("spiffe://example.org/b", &s.agent_id, &["unix:uid:1", "unix:gid:2"]);
    s.server.entry("spiffe://example.org/c", &s.agent_id, &["unix:uid:3"]);
    s.manager.tick().await.unwrap();

    let only_uid = s.cache.svids_for(&selectors(&["unix:uid:1"]));
    assert_eq!(entry_ids(&only_uid), vec![a.id.clone()]);
    let both = s.cache.svids_for(&selectors(&["unix:uid:1", "unix:gid:2", "unix:user:x"]));
    let mut expected = vec![a.id.clone(), b.id.clone()];
    expected.sort();
    assert_eq!(entry_ids(&both), expected, "lowest entry ID first");
    assert!(s.cache.svids_for(&selectors(&["unix:uid:9"])).is_empty());
    assert!(s.cache.svids_for(&selectors(&["unix:gid:2"])).is_empty());
    assert!(s.cache.svids_for(&SelectorSet::new()).is_empty());
}

#[tokio::test]
async fn a_renewal_after_the_renewal_time_replaces_the_svid_and_notifies() {
    let mut s = setup().await;
    let e = s.server.entry("spiffe://example.org/web", &s.agent_id, &["unix:uid:1000"]);
    let other = s.server.entry("spiffe://example.org/other", &s.agent_id, &["unix:uid:7"]);
    s.manager.tick().await.unwrap();
    let mut sub = s.cache.subscribe(selectors(&["unix:uid:1000"]));
    let mut bystander = s.cache.subscribe(selectors(&["unix:uid:42"]));
    let first = s.cache.svid(&e.id).unwrap();
    assert_eq!(sub.borrow_and_update().svids[0].serial, first.serial);

    // Just before the renewal time nothing happens.
    s.clock.set(first.renew_at - Duration::from_secs(1));
    let other_due = s.cache.svid(&other.id).unwrap().renew_at;
    let report = s.manager.tick().await.unwrap();
    assert_eq!(report.renewed, usize::from(other_due <= s.clock.now()));
    assert!(!sub.has_changed().unwrap());

    s.clock.set(first.renew_at);
    let report = s.manager.tick().await.unwrap();
    assert!(report.renewed >= 1, "{report:?}");
    assert!(sub.has_changed().unwrap());
    let snapshot = sub.borrow_and_update().clone();
    let second = s.cache.svid(&e.id).unwrap();
    assert_ne!(second.serial, first.serial);
    assert_eq!(snapshot.svids[0].serial, second.serial);
    // The renewal keeps the phase: half the new lifetime after the previous due time.
    let validity = renewal::Validity { issued_at: second.issued_at, not_after: second.expires_at };
    assert_eq!(second.renew_at, renewal::steady_renewal(first.renew_at, validity));
    // A caller entitled to nothing was not woken.
    assert!(!bystander.has_changed().unwrap());
    assert!(bystander.borrow_and_update().svids.is_empty());
}

#[tokio::test]
async fn deleting_an_entry_redacts_its_svid_and_notifies() {
    let mut s = setup().await;
    let keep = s.server.entry("spiffe://example.org/keep", &s.agent_id, &["unix:uid:1"]);
    let gone = s.server.entry("spiffe://example.org/gone", &s.agent_id, &["unix:uid:1"]);
    s.manager.tick().await.unwrap();
    let mut sub = s.cache.subscribe(selectors(&["unix:uid:1"]));
    assert_eq!(sub.borrow_and_update().svids.len(), 2);

    s.server.store.delete_entry(&gone.id).unwrap();
    let report = s.manager.tick().await.unwrap();
    assert_eq!((report.entries, report.removed), (1, 1));
    assert!(sub.has_changed().unwrap());
    assert_eq!(entry_ids(&sub.borrow_and_update().svids), vec![keep.id.clone()]);
    assert!(s.cache.svid(&gone.id).is_none());
    assert_eq!(entry_ids(&s.cache.svids_for(&selectors(&["unix:uid:1"]))), vec![keep.id]);
}

#[tokio::test]
async fn a_bad_svid_is_never_published() {
    let mut s = setup().await;
    let a = s.server.entry("spiffe://example.org/a", &s.agent_id, &["unix:uid:1"]);
    let b = s.server.entry("spiffe://example.org/b", &s.agent_id, &["unix:uid:2"]);
    s.manager.tick().await.unwrap();
    let mut sub = s.cache.subscribe(selectors(&["unix:uid:1"]));
    sub.borrow_and_update();
    let good_a = s.cache.svid(&a.id).unwrap();
    let good_b = s.cache.svid(&b.id).unwrap();
    let new = |chain: &Arc<crate::agent::cache::CachedSvid>, key: Arc<SigningKey>| NewSvid {
        entry_id: a.id.as_str().into(),
        chain: chain.chain.to_vec(),
        key,
        serial: "bad".into(),
        issued_at: s.clock.now(),
        renew_at: s.clock.now(),
    };
    let fresh_key = Arc::new(SigningKey::generate(KeyType::EcP256).unwrap());
    let mut truncated = new(&good_a, good_a.key.signing_key());
    truncated.chain[0] = truncated.chain[0][..40].to_vec().into();
    let mut unknown = new(&good_a, good_a.key.signing_key());
    unknown.entry_id = "no-such-entry".into();
    let results = s.cache.update_svids(vec![
        // B's SVID offered for A: wrong SPIFFE ID.
        new(&good_b, good_b.key.signing_key()),
        // A's chain with a key that is not the one it certifies.
        new(&good_a, fresh_key),
        truncated,
        unknown,
    ]);
    assert!(matches!(results[0], Err(CacheError::WrongId { .. })), "{:?}", results[0]);
    assert!(matches!(results[1], Err(CacheError::KeyMismatch(_))), "{:?}", results[1]);
    assert!(matches!(results[2], Err(CacheError::BadChain { .. })), "{:?}", results[2]);
    assert!(matches!(results[3], Err(CacheError::UnknownEntry(_))), "{:?}", results[3]);

    // An expired SVID (as the agent's clock sees it) is refused too.
    s.clock.set(good_a.expires_at + Duration::from_secs(1));
    let results = s.cache.update_svids(vec![new(&good_a, good_a.key.signing_key())]);
    assert!(matches!(results[0], Err(CacheError::BadChain { .. })), "{:?}", results[0]);

    assert_eq!(s.cache.svid(&a.id).unwrap().serial, good_a.serial, "the old SVID is kept");
    assert!(!sub.has_changed().unwrap(), "nobody was told about a refused SVID");
}

#[tokio::test]
async fn the_cache_survives_a_server_outage_and_the_manager_recovers() {
    let mut s = setup().await;
    let e = s.server.entry("spiffe://example.org/web", &s.agent_id, &["unix:uid:1"]);
    s.manager.tick().await.unwrap();
    let before = s.cache.svids_for(&selectors(&["unix:uid:1"]));

    s.server.shut_down().await;
    let err = s.manager.tick().await.unwrap_err();
    assert!(matches!(err, ManagerError::Server(_)), "{err}");
    let during = s.cache.svids_for(&selectors(&["unix:uid:1"]));
    assert_eq!(entry_ids(&during), vec![e.id.clone()]);
    assert_eq!(during[0].serial, before[0].serial);

    // A server on the same port, store and CA: the next round works again.
    let server = s.server.restart().await;
    let added = server.entry("spiffe://example.org/added", &s.agent_id, &["unix:uid:1"]);
    let report = s.manager.tick().await.unwrap();
    assert_eq!((report.entries, report.issued), (2, 1));
    let after = s.cache.svids_for(&selectors(&["unix:uid:1"]));
    assert_eq!(after.len(), 2);
    let svid = after.iter().find(|v| *v.entry_id == *added.id).unwrap();
    verify_chain(&svid.chain, &server.bundle_set(), unix(s.clock.now())).unwrap();
}

#[tokio::test]
async fn twenty_svids_issued_together_get_evenly_spread_first_renewals() {
    let mut s = setup().await;
    for i in 0..20 {
        s.server.entry(&format!("spiffe://example.org/w{i}"), &s.agent_id, &["unix:uid:1"]);
    }
    let report = s.manager.tick().await.unwrap();
    assert_eq!((report.issued, report.batches), (20, 1));
    let mut fractions: Vec<f64> = s
        .cache
        .entry_ids()
        .iter()
        .map(|id| {
            let svid = s.cache.svid(id).unwrap();
            let lifetime = svid.expires_at.duration_since(svid.issued_at).unwrap();
            svid.renew_at.duration_since(svid.issued_at).unwrap().as_secs_f64()
                / lifetime.as_secs_f64()
        })
        .collect();
    fractions.sort_by(f64::total_cmp);
    assert!(fractions[0] >= 0.25 && fractions[19] < 0.75, "{fractions:?}");
    for pair in fractions.windows(2) {
        assert!((pair[1] - pair[0] - 0.025).abs() < 1e-6, "not evenly spaced: {fractions:?}");
    }
}

#[tokio::test]
async fn csrs_go_in_batches_of_at_most_max_batch() {
    let mut s = setup_with(ManagerOptions { max_batch: 4, ..Default::default() }).await;
    for i in 0..10 {
        s.server.entry(&format!("spiffe://example.org/w{i}"), &s.agent_id, &["unix:uid:1"]);
    }
    let report = s.manager.tick().await.unwrap();
    assert_eq!((report.issued, report.batches), (10, 3));
    assert_eq!(s.manager.batch_size(), 4);
}

#[tokio::test]
async fn svids_of_a_tainted_authority_are_replaced_at_once() {
    let mut s = setup().await;
    let e = s.server.entry("spiffe://example.org/web", &s.agent_id, &["unix:uid:1"]);
    s.manager.tick().await.unwrap();
    let old = s.cache.svid(&e.id).unwrap();
    let ca = &s.server.ca;
    let next = ca.prepare(AuthorityKind::X509).unwrap();
    ca.activate(AuthorityKind::X509, &next).unwrap();
    ca.taint(AuthorityKind::X509, old.authority_id.as_deref().unwrap()).unwrap();

    let report = s.manager.tick().await.unwrap();
    assert_eq!((report.issued, report.renewed), (1, 0), "{report:?}");
    let new = s.cache.svid(&e.id).unwrap();
    assert_ne!(new.serial, old.serial);
    assert_eq!(new.authority_id.as_deref(), Some(next.as_str()));
}

#[test]
fn backoff_doubles_up_to_its_ceiling_with_bounded_jitter() {
    let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let mut base = 1.0_f64;
    for _ in 0..10 {
        let d = b.next_delay().as_secs_f64();
        assert!(d >= base * 0.8 - 1e-9 && d <= base * 1.2 + 1e-9, "{d} vs {base}");
        base = (base * 2.0).min(60.0);
    }
    b.reset();
    assert!(b.next_delay() <= Duration::from_millis(1200));
}

#[tokio::test]
async fn the_agent_svid_is_renewed_once_half_its_life_has_passed() {
    let mut s = setup().await;
    let first = s.manager.client_mut().identity().unwrap().clone();
    let report = s.manager.tick().await.unwrap();
    assert!(!report.agent_renewed);

    s.clock.set(first.expires_at - Duration::from_secs(20 * 60));
    let report = s.manager.tick().await.unwrap();
    assert!(report.agent_renewed);
    let second = s.manager.client_mut().identity().unwrap().clone();
    assert_ne!(second.serial, first.serial);
    assert_eq!(second.spiffe_id, first.spiffe_id);
    // The renewed identity is the one used from now on: the next round still works.
    s.manager.tick().await.unwrap();
}

#[tokio::test]
async fn run_does_a_round_and_stops_on_shutdown() {
    let s = setup().await;
    let e = s.server.entry("spiffe://example.org/web", &s.agent_id, &["unix:uid:1"]);
    s.manager.run(std::future::ready(())).await;
    assert!(s.cache.svid(&e.id).is_some());
}

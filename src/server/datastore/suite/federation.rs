//! Federation relationships and foreign bundles: create, read, update, delete, and the
//! claim that lets exactly one of several servers fetch a due bundle.

use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime};

use keycard_workload_api::{SpiffeId, TrustDomain};

use super::Backend;
use crate::server::datastore::{DataStoreError, EndpointProfile, FederationRecord, RefreshOutcome};

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

fn spiffe(name: &str) -> FederationRecord {
    let endpoint_id = SpiffeId::parse(&format!("spiffe://{name}/keycard/server")).unwrap();
    FederationRecord::new(
        td(name),
        format!("https://{name}:8443/"),
        EndpointProfile::HttpsSpiffe { endpoint_id },
        at(10),
    )
}

pub(super) fn federations_are_created_read_updated_and_deleted(backend: &dyn Backend) {
    let store = backend.open();
    let com = spiffe("example.com");
    store.create_federation(&com, Some(b"{\"keys\":[1]}")).unwrap();
    let web = FederationRecord::new(
        td("example.net"),
        "https://bundles.example.net/".into(),
        EndpointProfile::HttpsWeb { ca_pem: Some(b"-----BEGIN CERTIFICATE-----".to_vec()) },
        at(11),
    );
    store.create_federation(&web, None).unwrap();
    match store.create_federation(&com, None) {
        Err(DataStoreError::AlreadyExists { id, .. }) => assert_eq!(id, "example.com"),
        other => panic!("a second relationship with example.com: {other:?}"),
    }

    assert_eq!(store.get_federation(&td("example.com")).unwrap(), Some(com.clone()));
    assert_eq!(store.list_federations().unwrap(), vec![com.clone(), web.clone()]);
    assert_eq!(
        store.get_bundle(&td("example.com")).unwrap().as_deref(),
        Some(&b"{\"keys\":[1]}"[..])
    );
    assert_eq!(store.get_bundle(&td("example.net")).unwrap(), None, "no bootstrap bundle given");

    // An update changes the endpoint and makes the relationship due at once; the
    // refresh history stays.
    store
        .record_federation_refresh(
            &td("example.net"),
            at(12),
            at(400),
            RefreshOutcome::Failed("refused"),
        )
        .unwrap();
    let changed = FederationRecord {
        endpoint_url: "https://other.example.net/".into(),
        profile: EndpointProfile::HttpsWeb { ca_pem: None },
        updated_at: at(20),
        ..web.clone()
    };
    let updated = store.update_federation(&changed, Some(b"{\"keys\":[2]}")).unwrap();
    assert_eq!(updated.endpoint_url, "https://other.example.net/");
    assert_eq!(updated.profile, EndpointProfile::HttpsWeb { ca_pem: None });
    assert_eq!(
        (updated.created_at, updated.updated_at, updated.next_refresh_at),
        (at(11), at(20), at(20))
    );
    assert_eq!(updated.last_error.as_deref(), Some("refused"));
    assert_eq!(
        store.get_bundle(&td("example.net")).unwrap().as_deref(),
        Some(&b"{\"keys\":[2]}"[..])
    );
    match store.update_federation(&spiffe("nowhere.org"), None) {
        Err(DataStoreError::NotFound { id, .. }) => assert_eq!(id, "nowhere.org"),
        other => panic!("updating a missing relationship: {other:?}"),
    }

    // Deleting a relationship deletes its bundle with it.
    let gone = store.delete_federation(&td("example.com")).unwrap();
    assert_eq!(gone, com);
    assert_eq!(store.get_bundle(&td("example.com")).unwrap(), None);
    assert!(matches!(
        store.delete_federation(&td("example.com")),
        Err(DataStoreError::NotFound { .. })
    ));
    assert_eq!(store.list_federations().unwrap(), vec![updated]);
}

pub(super) fn a_refresh_keeps_the_last_good_bundle_when_a_fetch_fails(backend: &dyn Backend) {
    let store = backend.open();
    let com = td("example.com");
    store.create_federation(&spiffe("example.com"), Some(b"boot")).unwrap();
    assert!(
        store
            .record_federation_refresh(&com, at(20), at(320), RefreshOutcome::Fetched(b"v1"))
            .unwrap()
    );
    let rec = store.get_federation(&com).unwrap().unwrap();
    assert_eq!(
        (rec.last_attempt_at, rec.last_success_at, rec.last_error),
        (Some(at(20)), Some(at(20)), None)
    );
    assert_eq!(rec.next_refresh_at, at(320));

    assert!(
        store
            .record_federation_refresh(&com, at(330), at(360), RefreshOutcome::Failed("timed out"))
            .unwrap()
    );
    let rec = store.get_federation(&com).unwrap().unwrap();
    assert_eq!((rec.last_attempt_at, rec.last_success_at), (Some(at(330)), Some(at(20))));
    assert_eq!(rec.last_error.as_deref(), Some("timed out"));
    assert_eq!(
        store.get_bundle(&com).unwrap().as_deref(),
        Some(&b"v1"[..]),
        "the last good bundle stays"
    );

    // A fetch that ends after its relationship was deleted stores nothing.
    store.delete_federation(&com).unwrap();
    assert!(
        !store
            .record_federation_refresh(&com, at(400), at(700), RefreshOutcome::Fetched(b"v2"))
            .unwrap()
    );
    assert_eq!(store.get_bundle(&com).unwrap(), None);
}

pub(super) fn foreign_bundles_are_listed_and_deleted(backend: &dyn Backend) {
    let store = backend.open();
    store.set_bundle(&td("b.org"), b"B").unwrap();
    store.set_bundle(&td("a.org"), b"A").unwrap();
    assert_eq!(
        store.list_bundles().unwrap(),
        vec![(td("a.org"), b"A".to_vec()), (td("b.org"), b"B".to_vec())]
    );
    assert!(store.delete_bundle(&td("a.org")).unwrap());
    assert!(!store.delete_bundle(&td("a.org")).unwrap());
    assert_eq!(store.list_bundles().unwrap(), vec![(td("b.org"), b"B".to_vec())]);
}

pub(super) fn racing_servers_claim_a_due_refresh_exactly_once(backend: &dyn Backend) {
    let first = backend.open();
    first.create_federation(&spiffe("example.com"), None).unwrap();
    let seen = first.get_federation(&td("example.com")).unwrap().unwrap().next_refresh_at;
    let stores: Vec<_> = (0..6).map(|_| backend.open()).collect();
    let barrier = Arc::new(Barrier::new(stores.len()));
    let claims: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(i, store)| {
                let barrier = barrier.clone();
                s.spawn(move || {
                    barrier.wait();
                    store
                        .claim_federation_refresh(&td("example.com"), seen, at(100 + i as u64))
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(claims.iter().filter(|c| **c).count(), 1, "{claims:?}");
    assert!(!first.claim_federation_refresh(&td("example.com"), seen, at(999)).unwrap());
}

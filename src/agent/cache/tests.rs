use super::*;
use crate::ca::CaManager;
use crate::clock::SystemClock;
use crate::selector::Selector;

fn entries() -> BTreeMap<String, pb::Entry> {
    let e = pb::Entry {
        id: "e1".into(),
        spiffe_id: "spiffe://example.org/web".into(),
        selectors: vec!["unix:uid:1000".into()],
        ..Default::default()
    };
    BTreeMap::from([(e.id.clone(), e)])
}

fn mint(ca: &CaManager, cache: &SvidCache) {
    let svid = test_svid(ca, "e1", "spiffe://example.org/web", Duration::from_secs(600));
    cache.update_svids(vec![svid]).into_iter().for_each(|r| r.unwrap());
}

#[test]
fn an_svid_whose_authority_left_the_bundle_is_due_at_once() {
    let td = keycard_workload_api::TrustDomain::new("example.org").unwrap();
    let old = crate::ca::manager::test_ca(td.clone());
    let new = crate::ca::manager::test_ca(td);
    let cache = SvidCache::new(Arc::new(SystemClock));
    let entries = entries();
    cache.set_entries(&entries, Some(&old.bundle().unwrap()), &[]).unwrap();
    mint(&old, &cache);
    let now = SystemTime::now();
    assert!(cache.due(now).is_empty(), "a fresh SVID is not due");

    // The same bundle again: nothing changes.
    cache.set_entries(&entries, Some(&old.bundle().unwrap()), &[]).unwrap();
    assert!(cache.due(now).is_empty());

    // A bundle both authorities are in (rotation in progress): still fine.
    let mut both = old.bundle().unwrap();
    both.x509_authorities.extend(new.bundle().unwrap().x509_authorities);
    cache.set_entries(&entries, Some(&both), &[]).unwrap();
    assert!(cache.due(now).is_empty());

    // The old authority is gone from the bundle: renew now, as a fresh issuance.
    cache.set_entries(&entries, Some(&new.bundle().unwrap()), &[]).unwrap();
    let due = cache.due(now);
    assert_eq!(due.len(), 1);
    assert_eq!(&*due[0].entry_id, "e1");
    assert_eq!(due[0].previous_due, None);
}

#[test]
fn a_reader_is_not_blocked_while_a_writer_checks_chains() {
    use std::sync::mpsc::channel;
    use std::thread;

    use super::test_support::GateClock;

    let td = keycard_workload_api::TrustDomain::new("example.org").unwrap();
    let (old, new) = (crate::ca::manager::test_ca(td.clone()), crate::ca::manager::test_ca(td));
    let clock = GateClock::new();
    let cache = Arc::new(SvidCache::new(clock.clone()));
    let entries = entries();
    cache.set_entries(&entries, Some(&old.bundle().unwrap()), &[]).unwrap();
    mint(&old, &cache);

    // A sync brings a new bundle: the writer re-checks every SVID's chain against it, and
    // the gate holds it right there (where it asks for the time to check expiry).
    let gate = clock.arm();
    let writer = thread::spawn({
        let (cache, bundle) = (cache.clone(), new.bundle().unwrap());
        move || cache.set_entries(&entries, Some(&bundle), &[]).map(|_| ())
    });
    gate.entered.recv_timeout(Duration::from_secs(10)).expect("the writer reached its checks");

    // Meanwhile a Workload API caller reads and subscribes: it is served the state as it
    // was, at once.
    let (tx, rx) = channel();
    let reader = thread::spawn({
        let cache = cache.clone();
        move || {
            let uid =
                crate::selector::SelectorSet::from_iter(
                    [Selector::parse("unix:uid:1000").unwrap()],
                );
            let read = cache.svids_for(&uid).len();
            let subscribed = cache.subscribe(uid).borrow().svids.len();
            let _ = tx.send((read, subscribed));
        }
    });
    let served = rx.recv_timeout(Duration::from_secs(5));
    let _ = gate.release.send(());
    writer.join().unwrap().unwrap();
    reader.join().unwrap();
    assert_eq!(served, Ok((1, 1)), "the reader waited for the writer's chain checks");
    // The write then completed: the SVID, which does not chain to the new bundle, is due.
    assert_eq!(cache.due(clock.time.now()).len(), 1);
}

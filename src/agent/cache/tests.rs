use super::*;
use crate::ca::CaManager;
use crate::clock::SystemClock;

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
    assert_eq!(due[0].entry_id, "e1");
    assert_eq!(due[0].previous_due, None);
}

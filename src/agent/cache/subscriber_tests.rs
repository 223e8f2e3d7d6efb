//! Subscriptions shared per caller set, freed at once, and publishes that cost only the
//! caller sets they concern; the renewal index.

use super::*;
use crate::ca::CaManager;
use crate::clock::ManualClock;
use crate::selector::Selector;

fn sel(list: &[String]) -> SelectorSet {
    list.iter().map(|s| Selector::parse(s).unwrap()).collect()
}

fn entry(id: &str, spiffe_id: &str, selectors: &[String]) -> pb::Entry {
    pb::Entry {
        id: id.into(),
        spiffe_id: spiffe_id.into(),
        selectors: selectors.to_vec(),
        hint: format!("hint-{id}"),
        ..Default::default()
    }
}

fn ca() -> Arc<CaManager> {
    crate::ca::manager::test_ca(keycard_workload_api::TrustDomain::new("example.org").unwrap())
}

/// A cache holding `e1` (uid 1000) with an SVID.
fn one_entry_cache(ca: &CaManager) -> SvidCache {
    let cache = SvidCache::new(Arc::new(crate::clock::SystemClock));
    let uid = vec!["unix:uid:1000".to_string()];
    let entries =
        BTreeMap::from([("e1".to_string(), entry("e1", "spiffe://example.org/web", &uid))]);
    cache.set_entries(&entries, Some(&ca.bundle().unwrap()), &[]).unwrap();
    let svid = test_svid(ca, "e1", "spiffe://example.org/web", Duration::from_secs(600));
    cache.update_svids(vec![svid]).into_iter().for_each(|r| r.unwrap());
    cache
}

#[test]
fn callers_with_the_same_selectors_share_one_set_and_the_last_drop_frees_it() {
    let ca = ca();
    let cache = one_entry_cache(&ca);
    let me = sel(&["unix:uid:1000".into(), "unix:gid:5".into()]);
    let a = cache.subscribe(me.clone());
    let b = cache.subscribe(me.clone());
    let other = cache.subscribe(sel(&["unix:uid:1000".into()]));
    assert_eq!(cache.subscriptions(), 2, "one subscription per selector set");
    assert!(Arc::ptr_eq(&a.borrow().svids, &b.borrow().svids), "one shared SVID list");
    assert!(a.same_channel(&b));
    assert!(!a.same_channel(&other));
    assert_eq!(a.borrow().svids.len(), 1);

    drop(a);
    assert_eq!(cache.subscriptions(), 2, "b still follows the set");
    drop(b);
    assert_eq!(cache.subscriptions(), 1, "freed at once, with no publish in between");
    drop(other);
    assert_eq!(cache.subscriptions(), 0);
}

#[test]
fn two_thousand_subscriptions_opened_and_dropped_leave_nothing_behind() {
    let ca = ca();
    let cache = one_entry_cache(&ca);
    let me = sel(&["unix:uid:1000".into()]);
    let chain = || cache.svids_for(&me)[0].chain.clone();
    let key = cache.svid("e1").unwrap().key.clone();
    // Baseline: references held by the cache itself (and the two probes just made).
    let (chain_refs, key_refs) = (Arc::strong_count(&chain()), Arc::strong_count(&key));

    let subs: Vec<Subscription> = (0..2000).map(|_| cache.subscribe(me.clone())).collect();
    // 2,000 streams hold one list between them: one more reference to the SVID, not 2,000.
    assert_eq!(Arc::strong_count(&chain()), chain_refs + 1);
    assert_eq!(Arc::strong_count(&key), key_refs + 1);
    drop(subs);
    assert_eq!(cache.subscriptions(), 0);
    assert_eq!(Arc::strong_count(&chain()), chain_refs, "nothing kept after the streams");
    assert_eq!(Arc::strong_count(&key), key_refs);
}

/// 10,000 entries for 1,000 uids (ten each, told apart by a `gid` selector); one
/// subscriber set per uid holding its ten entries' selectors.
fn crowd(cache: &SvidCache, ca: &CaManager) -> (BTreeMap<String, pb::Entry>, Vec<Subscription>) {
    let entries: BTreeMap<String, pb::Entry> = (0..10_000)
        .map(|i| {
            let id = format!("e{i:05}");
            let selectors = vec![format!("unix:uid:{}", i % 1000), format!("unix:gid:{i}")];
            (id.clone(), entry(&id, &format!("spiffe://example.org/w{i}"), &selectors))
        })
        .collect();
    cache.set_entries(&entries, Some(&ca.bundle().unwrap()), &[]).unwrap();
    let subs = (0..1000)
        .map(|uid| {
            let mut selectors = vec![format!("unix:uid:{uid}")];
            selectors.extend((0..10).map(|k| format!("unix:gid:{}", uid + 1000 * k)));
            cache.subscribe(sel(&selectors))
        })
        .collect();
    (entries, subs)
}

#[test]
fn a_publish_re_evaluates_only_the_caller_sets_it_concerns() {
    let ca = ca();
    let cache = SvidCache::new(Arc::new(crate::clock::SystemClock));
    let (mut entries, mut subs) = crowd(&cache, &ca);
    assert_eq!(cache.subscriptions(), 1000);
    let before = cache.subscriber_evaluations();

    // One new SVID, for entry 4242 (uid 242): only uid 242's set is looked at and woken.
    let svid = test_svid(&ca, "e04242", "spiffe://example.org/w4242", Duration::from_secs(600));
    cache.update_svids(vec![svid]).into_iter().for_each(|r| r.unwrap());
    assert_eq!(cache.subscriber_evaluations() - before, 1);
    let woken: Vec<usize> = (0..1000).filter(|&i| subs[i].has_changed().unwrap()).collect();
    assert_eq!(woken, vec![242]);
    let view = subs[242].borrow_and_update().clone();
    assert_eq!(view.svids.len(), 1);
    assert_eq!(&*view.svids[0].entry_id, "e04242");

    // A sync that changes one entry's hint: again one set.
    let before = cache.subscriber_evaluations();
    entries.get_mut("e04242").unwrap().hint = "renamed".into();
    cache.set_entries(&entries, Some(&ca.bundle().unwrap()), &[]).unwrap();
    assert_eq!(cache.subscriber_evaluations() - before, 1);
    assert!(subs[242].has_changed().unwrap());
    assert_eq!(&*subs[242].borrow_and_update().svids[0].hint, "renamed");
    assert!(!subs[241].has_changed().unwrap());

    // The same sync again: nothing changed, nobody looked at.
    let before = cache.subscriber_evaluations();
    cache.set_entries(&entries, Some(&ca.bundle().unwrap()), &[]).unwrap();
    assert_eq!(cache.subscriber_evaluations() - before, 0);
    assert!(!subs[242].has_changed().unwrap());

    // The entry removed: its set loses the SVID.
    entries.remove("e04242");
    cache.set_entries(&entries, Some(&ca.bundle().unwrap()), &[]).unwrap();
    assert!(subs[242].borrow_and_update().svids.is_empty());
}

#[test]
fn renewal_rounds_read_only_what_is_due() {
    let ca = ca();
    let clock = Arc::new(ManualClock::starting_now());
    let cache = SvidCache::new(clock.clone());
    let uid = vec!["unix:uid:1".to_string()];
    let entries: BTreeMap<String, pb::Entry> = (0..3)
        .map(|i| {
            (format!("e{i}"), entry(&format!("e{i}"), &format!("spiffe://example.org/{i}"), &uid))
        })
        .collect();
    cache.set_entries(&entries, Some(&ca.bundle().unwrap()), &[]).unwrap();
    let ids =
        |due: Vec<DueEntry>| due.into_iter().map(|d| d.entry_id.to_string()).collect::<Vec<_>>();
    assert_eq!(ids(cache.due(clock.now())), ["e0", "e1", "e2"], "no SVID yet: all due");

    let mut svid = test_svid(&ca, "e1", "spiffe://example.org/1", Duration::from_secs(600));
    svid.renew_at = clock.now() + Duration::from_secs(100);
    let renew_at = svid.renew_at;
    cache.update_svids(vec![svid]).into_iter().for_each(|r| r.unwrap());
    assert_eq!(cache.current().indexed(), 3, "each entry indexed once");
    assert_eq!(ids(cache.due(clock.now())), ["e0", "e2"]);
    clock.advance(Duration::from_secs(100));
    let due = cache.due(clock.now());
    assert_eq!(ids(due.clone()), ["e0", "e1", "e2"]);
    assert_eq!(due[1].previous_due, Some(renew_at));

    // Its authority tainted by a sync: due at once, as a fresh issuance.
    let authority = cache.svid("e1").unwrap().authority_id.clone().unwrap();
    clock.set(renew_at - Duration::from_secs(50));
    cache.set_entries(&entries, Some(&ca.bundle().unwrap()), &[authority.to_string()]).unwrap();
    let due = cache.due(clock.now());
    assert_eq!(due[1].previous_due, None);
    assert_eq!(cache.current().indexed(), 3);
}

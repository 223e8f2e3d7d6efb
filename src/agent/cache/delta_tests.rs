//! Deltas: a sync that changes one entry of many touches that entry alone (the others'
//! `Arc`s, SVIDs and indexes stay), tells only the caller sets it concerns, and one that
//! changes nothing publishes nothing; entry IDs are shared, not copied.

use super::*;
use crate::ca::CaManager;
use crate::selector::Selector;

const N: usize = 2000;

fn entry(i: usize, uid: usize, revision: u64) -> pb::Entry {
    pb::Entry {
        id: format!("e{i:05}"),
        spiffe_id: format!("spiffe://example.org/w{i}"),
        selectors: vec![format!("unix:uid:{uid}"), format!("unix:gid:{i}")],
        hint: format!("hint-{i}"),
        revision,
        ..Default::default()
    }
}

fn sel(items: &[String]) -> SelectorSet {
    items.iter().map(|s| Selector::parse(s).unwrap()).collect()
}

/// The selectors of uid `uid`'s caller set: its uid and the gids of its entries.
fn caller(uid: usize) -> SelectorSet {
    let mut items = vec![format!("unix:uid:{uid}")];
    items.extend((uid..N).step_by(100).map(|i| format!("unix:gid:{i}")));
    sel(&items)
}

/// `N` entries over 100 uids, SVIDs for the first ten of uid 7, and a subscriber per uid.
fn filled(ca: &CaManager) -> (SvidCache, Vec<Subscription>) {
    let cache = SvidCache::new(Arc::new(crate::clock::SystemClock));
    let delta = CacheDelta {
        full: true,
        entries: (0..N).map(|i| entry(i, i % 100, 1)).collect(),
        bundle: Some(&ca.bundle().unwrap()),
        tainted: Some(Vec::new()),
        ..Default::default()
    };
    let changes = cache.apply(delta).unwrap();
    assert_eq!((changes.added, changes.removed, changes.updated), (N, 0, 0));
    let svids = (7..1000)
        .step_by(100)
        .map(|i| {
            let (id, spiffe_id) = (format!("e{i:05}"), format!("spiffe://example.org/w{i}"));
            test_svid(ca, &id, &spiffe_id, Duration::from_secs(600))
        })
        .collect();
    cache.update_svids(svids).into_iter().for_each(|r| r.unwrap());
    let subs = (0..100).map(|uid| cache.subscribe(caller(uid))).collect();
    (cache, subs)
}

fn ca() -> Arc<CaManager> {
    crate::ca::manager::test_ca(keycard_workload_api::TrustDomain::new("example.org").unwrap())
}

#[test]
fn a_one_entry_delta_touches_only_that_entry_and_the_caller_sets_it_concerns() {
    let ca = ca();
    let (cache, mut subs) = filled(&ca);
    subs.iter_mut().for_each(|s| {
        s.borrow_and_update();
    });
    let before = cache.current();
    let evaluations = cache.subscriber_evaluations();

    // Entry 107 (uid 7, with an SVID) gets a new hint.
    let mut changed = entry(107, 7, 2);
    changed.hint = "renamed".into();
    let changes = cache.apply(CacheDelta { entries: vec![changed], ..Default::default() }).unwrap();
    assert_eq!(changes, EntryChanges { updated: 1, ..Default::default() });
    let after = cache.current();
    for (id, old) in before.entries() {
        let new = after.entry(id).unwrap();
        assert_eq!(Arc::ptr_eq(old, new), &**id != "e00107", "{id}");
    }
    let moved = after.entry("e00107").unwrap();
    let svid = moved.svid.as_ref().unwrap();
    assert!(Arc::ptr_eq(svid, before.entry("e00107").unwrap().svid.as_ref().unwrap()));
    assert_eq!(after.indexed(), N);
    assert_eq!(after.selector_indexed(), 2 * N);
    assert_eq!(cache.subscriber_evaluations() - evaluations, 1, "uid 7's set alone");
    let woken: Vec<usize> = (0..100).filter(|&i| subs[i].has_changed().unwrap()).collect();
    assert_eq!(woken, [7]);
    let view = subs[7].borrow_and_update().clone();
    let served = view.svids.iter().find(|s| &*s.entry_id == "e00107").unwrap();
    assert_eq!(&*served.hint, "renamed");

    // One ID shared by the map, the SVID and every caller set's copy.
    let (key, _) = after.entries().get_key_value("e00107").unwrap();
    assert!(Arc::ptr_eq(key, &svid.entry_id) && Arc::ptr_eq(key, &served.entry_id));
    assert!(Arc::ptr_eq(&svid.serial, &served.serial));

    // The same entry again, and an empty delta: nothing is published at all.
    let same = CacheDelta { entries: vec![moved.to_pb("e00107")], ..Default::default() };
    assert_eq!(cache.apply(same).unwrap(), EntryChanges::default());
    assert_eq!(cache.apply(CacheDelta::default()).unwrap(), EntryChanges::default());
    assert!(Arc::ptr_eq(&after, &cache.current()), "no new state");
    assert!(subs.iter().all(|s| !s.has_changed().unwrap()));
}

#[test]
fn a_delta_moves_removes_and_adds_entries_through_both_indexes() {
    let ca = ca();
    let (cache, mut subs) = filled(&ca);
    subs.iter_mut().for_each(|s| {
        s.borrow_and_update();
    });
    let evaluations = cache.subscriber_evaluations();
    // Entry 207 moves from uid 7 to uid 8 (keeping its SVID), 307 goes, a new one comes.
    let mut moved = entry(207, 8, 2);
    moved.selectors = vec!["unix:uid:8".into(), "unix:gid:208".into()];
    let delta = CacheDelta {
        entries: vec![moved, entry(N, 9, 2)],
        removed: vec!["e00307".into(), "not-held".into()],
        ..Default::default()
    };
    let changes = cache.apply(delta).unwrap();
    assert_eq!((changes.added, changes.removed, changes.updated), (1, 1, 1));
    let state = cache.current();
    assert_eq!((state.entries().len(), state.indexed()), (N, N));
    assert_eq!(state.selector_indexed(), 2 * N);
    assert!(cache.svid("e00307").is_none());
    assert!(cache.svid("e00207").is_some(), "the SVID follows its entry");
    assert!(cache.due(SystemTime::now()).iter().any(|d| &*d.entry_id == "e02000"));
    let ids = |sub: &mut Subscription| -> Vec<String> {
        sub.borrow_and_update().svids.iter().map(|s| s.entry_id.to_string()).collect()
    };
    let seven = ids(&mut subs[7]);
    assert!(!seven.iter().any(|id| id == "e00207" || id == "e00307"), "{seven:?}");
    assert_eq!(seven.len(), 8);
    assert_eq!(ids(&mut subs[8]), ["e00207"]);
    assert_eq!(cache.subscriber_evaluations() - evaluations, 2, "uids 7 and 8");
    assert!(!subs[9].has_changed().unwrap(), "the new entry has no SVID to give yet");

    // A full delta without them drops everything else, and the index empties with it.
    let full = CacheDelta { full: true, entries: vec![entry(1, 1, 3)], ..Default::default() };
    let changes = cache.apply(full).unwrap();
    assert_eq!((changes.removed, changes.updated), (N - 1, 1));
    let state = cache.current();
    assert_eq!((state.entries().len(), state.indexed(), state.selector_indexed()), (1, 1, 2));
    assert!(ids(&mut subs[7]).is_empty());
}

#[test]
fn a_taint_in_a_delta_makes_the_svids_it_signed_due_and_the_index_follows() {
    let ca = ca();
    let (cache, _subs) = filled(&ca);
    let now = SystemTime::now();
    assert_eq!(cache.due(now).len(), N - 10, "every entry without an SVID");
    let authority = cache.svid("e00007").unwrap().authority_id.clone().unwrap();
    let taint = CacheDelta { tainted: Some(vec![authority.to_string()]), ..Default::default() };
    assert!(cache.apply(taint).unwrap().tainted);
    assert_eq!(cache.due(now).len(), N, "the ten SVIDs too");
    assert_eq!(cache.tainted(), [authority.to_string()]);
    assert_eq!(cache.current().indexed(), N);
    let untaint = CacheDelta { tainted: Some(Vec::new()), ..Default::default() };
    assert!(cache.apply(untaint).unwrap().tainted);
    assert_eq!(cache.due(now).len(), N - 10);
}

#[test]
fn an_entry_that_does_not_parse_replaces_the_one_held_by_nothing() {
    let ca = ca();
    let (cache, _subs) = filled(&ca);
    let mut bad = entry(7, 7, 2);
    bad.spiffe_id = "not a SPIFFE ID".into();
    let changes = cache.apply(CacheDelta { entries: vec![bad], ..Default::default() }).unwrap();
    assert_eq!((changes.skipped, changes.removed), (1, 1));
    assert!(cache.svid("e00007").is_none());
    assert_eq!(cache.len(), N - 1);
}

#[test]
fn the_image_gives_back_the_entries_as_the_server_sent_them() {
    let ca = ca();
    let (cache, _subs) = filled(&ca);
    let mut e = entry(N, 3, 9);
    e.dns_names = vec!["a.example.org".into()];
    e.x509_ttl_seconds = 600;
    e.jwt_svid_binding = "x509".into();
    e.federates_with = vec!["example.com".into()];
    cache.apply(CacheDelta { entries: vec![e.clone()], ..Default::default() }).unwrap();
    let image = cache.image();
    // The selectors come back as a set (sorted).
    let sorted = |mut e: pb::Entry| {
        e.selectors.sort();
        e
    };
    let entries: Vec<pb::Entry> = image.entries().into_iter().map(sorted).collect();
    assert_eq!(entries.len(), N + 1);
    assert_eq!(entries.iter().find(|x| x.id == e.id), Some(&sorted(e.clone())));
    assert_eq!(entries[0], sorted(entry(0, 0, 1)));
    assert_eq!(image.svids().count(), 10);
    assert_eq!(cache.revisions()[0], (Arc::from("e00000"), 1));
}

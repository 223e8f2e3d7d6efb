//! Entries: revisions, tombstones, duplicates, paging, filters, batches and the incremental
//! change feed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keycard_workload_api::SpiffeId;

use super::Backend;
use crate::selector::{Selector, SelectorSet};
use crate::server::datastore::{DataStore, DataStoreError, EntryFilter, PageRequest};
use crate::server::entry::{Entry, EntrySpec, JwtSvidBinding};

fn id(path: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://example.org{path}")).unwrap()
}

fn selectors(list: &[&str]) -> SelectorSet {
    list.iter().map(|s| Selector::parse(s).unwrap()).collect()
}

fn spec(path: &str, parent: &str, sels: &[&str]) -> EntrySpec {
    EntrySpec {
        spiffe_id: id(path),
        parent_id: id(parent),
        selectors: selectors(sels),
        x509_ttl: Some(Duration::from_secs(3600)),
        jwt_ttl: None,
        dns_names: vec!["web.example.org".into()],
        hint: "internal".into(),
        admin: false,
        jwt_svid_binding: JwtSvidBinding::None,
        federates_with: Vec::new(),
    }
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn all_entries(store: &dyn DataStore, filter: &EntryFilter, size: u32) -> Vec<Entry> {
    let mut page = PageRequest { token: None, size };
    let mut out = Vec::new();
    loop {
        let got = store.list_entries(filter, &page).unwrap();
        assert!(got.items.len() <= page.effective_size() as usize);
        out.extend(got.items);
        match got.next_token {
            Some(token) => page.token = Some(token),
            None => return out,
        }
    }
}

pub(super) fn entries_are_created_read_updated_and_deleted_with_revisions(backend: &dyn Backend) {
    let store = backend.open();
    let a = store.create_entry(&spec("/web", "/agent", &["unix:uid:1"]), at(10)).unwrap();
    let bound = EntrySpec {
        jwt_svid_binding: JwtSvidBinding::X509,
        federates_with: vec!["example.com".parse().unwrap(), "example.net".parse().unwrap()],
        ..spec("/db", "/agent", &["unix:uid:2"])
    };
    let b = store.create_entry(&bound, at(11)).unwrap();
    assert_eq!(
        store.get_entry(&b.id).unwrap().unwrap().spec,
        bound,
        "the binding and federated domains are stored"
    );
    assert_eq!((a.revision, b.revision), (1, 2));
    assert_eq!((a.created_at, a.updated_at), (at(10), at(10)));
    assert_eq!(store.get_entry(&a.id).unwrap(), Some(a.clone()));
    assert_eq!(store.count_entries().unwrap(), 2);
    assert!(store.entry_with_spiffe_id_exists(&id("/web")).unwrap());
    assert!(!store.entry_with_spiffe_id_exists(&id("/nothing")).unwrap());

    let mut changed = spec("/web", "/agent", &["unix:uid:1", "unix:gid:5"]);
    changed.jwt_ttl = Some(Duration::from_millis(1500));
    changed.admin = true;
    changed.jwt_svid_binding = JwtSvidBinding::X509;
    changed.federates_with = vec!["example.com".parse().unwrap()];
    let a2 = store.update_entry(&a.id, &changed, at(20)).unwrap();
    assert_eq!((a2.revision, a2.created_at, a2.updated_at), (3, at(10), at(20)));
    assert_eq!(a2.spec, changed);
    assert_eq!(store.get_entry(&a.id).unwrap(), Some(a2.clone()));

    let gone = store.delete_entry(&a.id).unwrap();
    assert_eq!(gone, a2);
    assert_eq!(store.get_entry(&a.id).unwrap(), None);
    assert_eq!(store.count_entries().unwrap(), 1);
    let changes = store.entry_changes_since(3, 0).unwrap();
    assert_eq!(
        (changes.changed, changes.deleted, changes.revision),
        (vec![], vec![a.id.clone()], 4)
    );

    let missing = |e: DataStoreError| matches!(e, DataStoreError::NotFound { kind: "entry", .. });
    assert!(missing(store.delete_entry(&a.id).unwrap_err()));
    assert!(missing(store.update_entry(&a.id, &changed, at(30)).unwrap_err()));
    // A failed call does not consume a revision.
    let c = store.create_entry(&spec("/c", "/agent", &["unix:uid:3"]), at(40)).unwrap();
    assert_eq!(c.revision, 5);
}

pub(super) fn duplicates_are_refused_whatever_the_selector_order(backend: &dyn Backend) {
    let store = backend.open();
    let first = store.create_entry(&spec("/web", "/agent", &["unix:uid:1", "k8s:ns:a"]), at(1));
    let first = first.unwrap();
    let same = spec("/web", "/agent", &["k8s:ns:a", "unix:uid:1"]);
    match store.create_entry(&same, at(2)) {
        Err(DataStoreError::DuplicateEntry(existing)) => assert_eq!(existing, first.id),
        other => panic!("expected a duplicate, got {other:?}"),
    }
    // A different parent, SPIFFE ID or selector set is not a duplicate.
    let other = store.create_entry(&spec("/web", "/agent2", &["unix:uid:1", "k8s:ns:a"]), at(3));
    let other = other.unwrap();
    store.create_entry(&spec("/web", "/agent", &["unix:uid:1"]), at(4)).unwrap();
    store.create_entry(&spec("/api", "/agent", &["unix:uid:1", "k8s:ns:a"]), at(5)).unwrap();

    // Updating an entry to itself is fine; updating it into another one is a duplicate.
    store.update_entry(&first.id, &same, at(6)).unwrap();
    match store.update_entry(&other.id, &same, at(7)) {
        Err(DataStoreError::DuplicateEntry(existing)) => assert_eq!(existing, first.id),
        other => panic!("expected a duplicate, got {other:?}"),
    }
    assert_eq!(store.count_entries().unwrap(), 4);
}

pub(super) fn paging_returns_every_entry_exactly_once(backend: &dyn Backend) {
    let store = backend.open();
    let mut made = BTreeSet::new();
    for n in 0..250 {
        let e = store.create_entry(&spec(&format!("/w{n}"), "/agent", &["unix:uid:1"]), at(n));
        made.insert(e.unwrap().id);
    }
    let mut pages = 0;
    let mut page = PageRequest { token: None, size: 100 };
    let mut seen = Vec::new();
    loop {
        let got = store.list_entries(&EntryFilter::default(), &page).unwrap();
        pages += 1;
        seen.extend(got.items.into_iter().map(|e| e.id));
        match got.next_token {
            Some(token) => page.token = Some(token),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 250);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "ordered by ID, no repeats");
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), made);

    for bad in ["%%%", "AP8", "-"] {
        let page = PageRequest { token: Some(bad.into()), size: 10 };
        let err = store.list_entries(&EntryFilter::default(), &page).unwrap_err();
        assert!(matches!(err, DataStoreError::BadPageToken(_)), "{bad}: {err:?}");
    }
}

pub(super) fn filters_narrow_the_listing(backend: &dyn Backend) {
    let store = backend.open();
    let web_a = store.create_entry(&spec("/web", "/a", &["unix:uid:1", "unix:gid:1"]), at(1));
    let web_a = web_a.unwrap();
    let web_b = store.create_entry(&spec("/web", "/b", &["unix:uid:1"]), at(2)).unwrap();
    let db_a = store.create_entry(&spec("/db", "/a", &["unix:uid:1"]), at(3)).unwrap();
    let ids = |filter: EntryFilter| {
        let got: BTreeSet<String> =
            all_entries(&*store, &filter, 1).into_iter().map(|e| e.id).collect();
        got
    };
    let set = |list: &[&Entry]| list.iter().map(|e| e.id.clone()).collect::<BTreeSet<_>>();
    assert_eq!(ids(EntryFilter::default()), set(&[&web_a, &web_b, &db_a]));
    assert_eq!(
        ids(EntryFilter { spiffe_id: Some(id("/web")), ..Default::default() }),
        set(&[&web_a, &web_b])
    );
    assert_eq!(
        ids(EntryFilter { parent_id: Some(id("/a")), ..Default::default() }),
        set(&[&web_a, &db_a])
    );
    let exact = EntryFilter {
        spiffe_id: Some(id("/web")),
        selectors: Some(selectors(&["unix:gid:1", "unix:uid:1"])),
        ..Default::default()
    };
    assert_eq!(ids(exact), set(&[&web_a]));
    let only_uid =
        EntryFilter { selectors: Some(selectors(&["unix:uid:1"])), ..Default::default() };
    assert_eq!(ids(only_uid), set(&[&web_b, &db_a]));
    assert_eq!(ids(EntryFilter { parent_id: Some(id("/none")), ..Default::default() }), set(&[]));
}

/// A tiny deterministic generator, so the change sequence is the same on every run.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

pub(super) fn an_incremental_cache_follows_the_store(backend: &dyn Backend) {
    let store = backend.open();
    let mut cache: BTreeMap<String, Entry> = BTreeMap::new();
    let mut revision = 0;
    let mut rng = Lcg(7);
    let mut live: Vec<String> = Vec::new();
    for round in 0..40u64 {
        for step in 0..rng.below(12) {
            let n = round * 100 + step;
            match (rng.below(3), live.is_empty()) {
                (0, false) => {
                    let victim = live.swap_remove(rng.below(live.len() as u64) as usize);
                    store.delete_entry(&victim).unwrap();
                }
                (1, false) => {
                    let target = &live[rng.below(live.len() as u64) as usize];
                    let s = spec(&format!("/u{n}"), "/agent", &["unix:uid:9"]);
                    store.update_entry(target, &s, at(n)).unwrap();
                }
                _ => {
                    let s = spec(&format!("/c{n}"), "/agent", &["unix:uid:9"]);
                    live.push(store.create_entry(&s, at(n)).unwrap().id);
                }
            }
        }
        // Catch up in small batches, as an agent would.
        loop {
            let changes = store.entry_changes_since(revision, 3).unwrap();
            assert!(changes.changed.windows(2).all(|w| w[0].revision < w[1].revision));
            let done = changes.changed.len() < 3;
            for e in changes.changed {
                cache.insert(e.id.clone(), e);
            }
            for gone in changes.deleted {
                cache.remove(&gone);
            }
            assert!(changes.revision >= revision);
            revision = changes.revision;
            if done {
                break;
            }
        }
        let listed: BTreeMap<String, Entry> = all_entries(&*store, &EntryFilter::default(), 7)
            .into_iter()
            .map(|e| (e.id.clone(), e))
            .collect();
        assert_eq!(cache, listed, "round {round}");
    }
    // From revision 0: every entry, no tombstones, at the current revision.
    let full = store.entry_changes_since(0, 0).unwrap();
    assert_eq!(full.changed.len(), cache.len());
    assert!(full.deleted.is_empty());
    assert_eq!(full.revision, revision);
}

pub(super) fn a_cut_feed_stops_at_the_last_entry_it_returns(backend: &dyn Backend) {
    let store = backend.open();
    let a = store.create_entry(&spec("/a", "/agent", &["unix:uid:1"]), at(1)).unwrap();
    let b = store.create_entry(&spec("/b", "/agent", &["unix:uid:1"]), at(1)).unwrap();
    store.delete_entry(&a.id).unwrap(); // revision 3
    let c = store.create_entry(&spec("/c", "/agent", &["unix:uid:1"]), at(1)).unwrap();
    store.delete_entry(&b.id).unwrap(); // revision 5

    let first = store.entry_changes_since(1, 1).unwrap();
    assert_eq!(first.changed, vec![c.clone()]);
    assert_eq!(first.revision, 4);
    assert_eq!(first.deleted, vec![a.id.clone()], "only tombstones up to revision 4");
    let second = store.entry_changes_since(first.revision, 1).unwrap();
    assert_eq!((second.changed, second.deleted, second.revision), (vec![], vec![b.id], 5));
}

pub(super) fn batches_are_stored_or_refused_whole(backend: &dyn Backend) {
    let store = backend.open();
    let existing = store.create_entry(&spec("/web", "/agent", &["unix:uid:1"]), at(1)).unwrap();
    let batch = [
        spec("/a", "/agent", &["unix:uid:2"]),
        spec("/web", "/agent", &["unix:uid:1"]),
        spec("/b", "/agent", &["unix:uid:3"]),
        spec("/a", "/agent", &["unix:uid:2"]),
    ];
    match store.create_entries(&batch, at(2)) {
        Err(DataStoreError::BatchRefused(refused)) => {
            let indexes: Vec<usize> = refused.iter().map(|r| r.index).collect();
            assert_eq!(indexes, vec![1, 3], "{refused:?}");
            let first = &refused[0].error;
            assert!(matches!(first, DataStoreError::DuplicateEntry(id) if *id == existing.id));
        }
        other => panic!("expected a refused batch, got {other:?}"),
    }
    assert_eq!(store.count_entries().unwrap(), 1, "nothing of a refused batch is stored");
    assert_eq!(store.entry_changes_since(0, 0).unwrap().revision, 1, "no revision consumed");

    let created = store.create_entries(&batch[2..3], at(3)).unwrap();
    let created = [created, store.create_entries(&batch[..1], at(3)).unwrap()].concat();
    assert_eq!(created.iter().map(|e| e.revision).collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(store.create_entries(&[], at(3)).unwrap(), vec![]);

    let ids = vec![created[0].id.clone(), "missing".to_owned(), created[0].id.clone()];
    match store.delete_entries(&ids) {
        Err(DataStoreError::BatchRefused(refused)) => {
            let indexes: Vec<usize> = refused.iter().map(|r| r.index).collect();
            assert_eq!(indexes, vec![1, 2], "a missing ID and one listed twice: {refused:?}");
        }
        other => panic!("expected a refused batch, got {other:?}"),
    }
    assert_eq!(store.count_entries().unwrap(), 3, "nothing of a refused batch is deleted");
    let ids = vec![created[0].id.clone(), existing.id.clone()];
    let deleted = store.delete_entries(&ids).unwrap();
    assert_eq!(deleted.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), ids);
    let changes = store.entry_changes_since(3, 0).unwrap();
    assert_eq!((changes.deleted, changes.revision), (ids, 5));
}

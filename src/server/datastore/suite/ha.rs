//! Several servers on one database: per-server journals, authority marks, announcements,
//! and writers racing each other through separate stores.

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keycard_workload_api::SpiffeId;

use super::Backend;
use crate::selector::Selector;
use crate::server::datastore::{AuthorityMark, DataStore, DataStoreError, ServerRecord};
use crate::server::entry::EntrySpec;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn spec(path: &str) -> EntrySpec {
    EntrySpec {
        spiffe_id: SpiffeId::parse(&format!("spiffe://example.org{path}")).unwrap(),
        parent_id: SpiffeId::parse("spiffe://example.org/agent").unwrap(),
        selectors: [Selector::parse("unix:uid:1").unwrap()].into_iter().collect(),
        x509_ttl: None,
        jwt_ttl: None,
        dns_names: vec![],
        hint: String::new(),
        admin: false,
        jwt_svid_binding: crate::server::entry::JwtSvidBinding::None,
        federates_with: Vec::new(),
    }
}

/// Runs `work(i, store)` on `n` threads at once, each with a store of its own.
fn race<T: Send>(
    backend: &dyn Backend,
    n: usize,
    work: impl Fn(usize, &dyn DataStore) -> T + Sync,
) -> Vec<T> {
    let stores: Vec<Arc<dyn DataStore>> = (0..n).map(|_| backend.open()).collect();
    let barrier = Barrier::new(n);
    std::thread::scope(|s| {
        let handles: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(i, store)| {
                let (barrier, work) = (&barrier, &work);
                s.spawn(move || {
                    barrier.wait();
                    work(i, &**store)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

pub(super) fn each_server_keeps_its_own_journal(backend: &dyn Backend) {
    let (one, two) = (backend.open(), backend.open());
    assert_eq!(one.load_journal("s1").unwrap(), None);
    one.save_journal("s1", b"one").unwrap();
    two.save_journal("s2", b"two").unwrap();
    assert_eq!(two.load_journal("s1").unwrap().as_deref(), Some(&b"one"[..]));
    assert_eq!(one.load_journal("s2").unwrap().as_deref(), Some(&b"two"[..]));
    one.save_journal("s1", b"one again").unwrap();
    assert_eq!(
        two.list_journals().unwrap(),
        vec![("s1".to_owned(), b"one again".to_vec()), ("s2".to_owned(), b"two".to_vec())]
    );
    assert_eq!(two.load_journal("s3").unwrap(), None, "no journal to claim");
    assert_eq!(two.list_journals().unwrap().len(), 2);
}

pub(super) fn a_revoked_mark_is_never_downgraded(backend: &dyn Backend) {
    let (one, two) = (backend.open(), backend.open());
    assert!(one.authority_marks().unwrap().is_empty());
    one.set_authority_mark("b", AuthorityMark::Tainted).unwrap();
    one.set_authority_mark("a", AuthorityMark::Revoked).unwrap();
    two.set_authority_mark("a", AuthorityMark::Tainted).unwrap();
    two.set_authority_mark("b", AuthorityMark::Revoked).unwrap();
    two.set_authority_mark("b", AuthorityMark::Tainted).unwrap();
    let marks = one.authority_marks().unwrap();
    assert_eq!(
        marks,
        vec![("a".to_owned(), AuthorityMark::Revoked), ("b".to_owned(), AuthorityMark::Revoked)]
    );
}

pub(super) fn servers_announce_themselves(backend: &dyn Backend) {
    let (one, two) = (backend.open(), backend.open());
    assert!(one.list_servers().unwrap().is_empty());
    let record = |id: &str, address: &str, seen| ServerRecord {
        id: id.into(),
        address: address.into(),
        last_seen: at(seen),
    };
    two.announce_server(&record("s2", "10.0.0.2:8081", 5)).unwrap();
    one.announce_server(&record("s1", "10.0.0.1:8081", 6)).unwrap();
    one.announce_server(&record("s1", "10.0.0.9:8081", 9)).unwrap();
    assert_eq!(
        two.list_servers().unwrap(),
        vec![record("s1", "10.0.0.9:8081", 9), record("s2", "10.0.0.2:8081", 5)]
    );
}

/// Writers on several stores commit in an order the database chooses; a reader following
/// `entry_changes_since` meanwhile must see every revision once, in order, none skipped.
pub(super) fn concurrent_writers_are_followed_revision_by_revision(backend: &dyn Backend) {
    const WRITERS: usize = 6;
    const ROUNDS: usize = 15;
    let reader = backend.open();
    let done = std::sync::atomic::AtomicBool::new(false);
    let (made, seen) = std::thread::scope(|s| {
        let follower = s.spawn(|| {
            let mut seen = Vec::new();
            let mut revision = 0;
            loop {
                // Read `done` before reading changes, so the last pass sees every write.
                let last_pass = done.load(std::sync::atomic::Ordering::SeqCst);
                loop {
                    let changes = reader.entry_changes_since(revision, 4).unwrap();
                    let got = changes.changed.len();
                    seen.extend(changes.changed.iter().map(|e| e.revision));
                    assert!(changes.revision >= revision);
                    revision = changes.revision;
                    if got < 4 {
                        break;
                    }
                }
                if last_pass {
                    return seen;
                }
            }
        });
        let made = race(backend, WRITERS, |w, store| {
            let mut revisions = Vec::new();
            for round in 0..ROUNDS {
                if round % 3 == 0 {
                    let batch =
                        [spec(&format!("/w{w}/r{round}/a")), spec(&format!("/w{w}/r{round}/b"))];
                    let created = store.create_entries(&batch, at(1)).unwrap();
                    revisions.extend(created.iter().map(|e| e.revision));
                } else {
                    let created = store.create_entry(&spec(&format!("/w{w}/r{round}")), at(1));
                    revisions.push(created.unwrap().revision);
                }
            }
            revisions
        });
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        (made, follower.join().unwrap())
    });
    let made: BTreeSet<u64> = made.into_iter().flatten().collect();
    let total = (WRITERS * (ROUNDS + ROUNDS.div_ceil(3))) as u64;
    assert_eq!(made, (1..=total).collect(), "every revision handed out once");
    assert_eq!(
        seen,
        (1..=total).collect::<Vec<_>>(),
        "the reader saw each revision once, in order"
    );
}

pub(super) fn racing_duplicates_store_exactly_one(backend: &dyn Backend) {
    let results = race(backend, 8, |_, store| store.create_entry(&spec("/same"), at(1)));
    let stored: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(stored.len(), 1, "{results:?}");
    for r in &results {
        match r {
            Ok(_) => {}
            Err(DataStoreError::DuplicateEntry(id)) => assert_eq!(*id, stored[0].id),
            Err(e) => panic!("expected a duplicate, got {e:?}"),
        }
    }
    assert_eq!(backend.open().count_entries().unwrap(), 1);
}

pub(super) fn servers_starting_at_once_all_open_the_store(backend: &dyn Backend) {
    let revisions = race(backend, 4, |i, store| {
        store.create_entry(&spec(&format!("/s{i}")), at(1)).unwrap().revision
    });
    let revisions: BTreeSet<u64> = revisions.into_iter().collect();
    assert_eq!(revisions, (1..=4).collect());
}

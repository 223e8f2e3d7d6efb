//! Federated bundles in the cache: each caller set gets the bundles of the trust domains
//! the entries of its SVIDs federate with, and is woken only when that share changes.

use keycard_workload_api::TrustDomain;

use super::*;
use crate::ca::CaManager;
use crate::selector::Selector;

fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

fn sel(s: &str) -> SelectorSet {
    [Selector::parse(s).unwrap()].into_iter().collect()
}

fn entry(id: &str, spiffe_id: &str, selector: &str, federates_with: &[&str]) -> pb::Entry {
    pb::Entry {
        id: id.into(),
        spiffe_id: spiffe_id.into(),
        selectors: vec![selector.into()],
        federates_with: federates_with.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// A foreign trust domain's bundle, from a CA of its own.
fn foreign(name: &str) -> Arc<TrustBundle> {
    let ca = crate::ca::manager::test_ca(td(name));
    Arc::new(TrustBundle::of(&ca.bundle().unwrap()).unwrap())
}

fn set(bundles: &[&Arc<TrustBundle>]) -> FederatedBundles {
    bundles.iter().map(|b| (b.x509.trust_domain().clone(), (*b).clone())).collect()
}

fn names(f: &FederatedBundles) -> Vec<&str> {
    f.keys().map(TrustDomain::name).collect()
}

struct Fixture {
    ca: Arc<CaManager>,
    cache: SvidCache,
    entries: BTreeMap<String, pb::Entry>,
}

impl Fixture {
    /// `web` (uid 1) federates with example.com, `db` (uid 2) with example.net and
    /// example.com; both hold SVIDs.
    fn new() -> Self {
        let ca = crate::ca::manager::test_ca(td("example.org"));
        let cache = SvidCache::new(Arc::new(crate::clock::SystemClock));
        let entries = BTreeMap::from([
            (
                "web".to_string(),
                entry("web", "spiffe://example.org/web", "unix:uid:1", &["example.com"]),
            ),
            (
                "db".to_string(),
                entry(
                    "db",
                    "spiffe://example.org/db",
                    "unix:uid:2",
                    &["example.net", "spiffe://example.com", "not a domain"],
                ),
            ),
        ]);
        let f = Self { ca, cache, entries };
        f.sync(None).unwrap();
        for (id, e) in &f.entries {
            let svid = test_svid(&f.ca, id, &e.spiffe_id, Duration::from_secs(600));
            f.cache.update_svids(vec![svid]).into_iter().for_each(|r| r.unwrap());
        }
        f
    }

    fn sync(&self, federated: Option<FederatedBundles>) -> Result<EntryChanges, CacheError> {
        let bundle = self.ca.bundle().unwrap();
        self.cache.set_synced(&self.entries, Some(&bundle), &[], federated)
    }
}

#[test]
fn a_caller_gets_the_bundles_its_entries_federate_with_among_those_held() {
    let f = Fixture::new();
    let (com, net, edu) = (foreign("example.com"), foreign("example.net"), foreign("example.edu"));
    f.sync(Some(set(&[&com, &edu]))).unwrap();
    assert_eq!(names(&f.cache.federated()), ["example.com", "example.edu"]);
    assert_eq!(names(&f.cache.federated_for(&sel("unix:uid:1"))), ["example.com"]);
    assert_eq!(
        names(&f.cache.federated_for(&sel("unix:uid:2"))),
        ["example.com"],
        "example.net is not held; a bad name is skipped, the rest of the entry kept"
    );
    assert!(f.cache.federated_for(&sel("unix:uid:3")).is_empty(), "no SVID, no bundles");

    let web = f.cache.subscribe(sel("unix:uid:1"));
    assert_eq!(names(&web.borrow().federated), ["example.com"]);
    f.sync(Some(set(&[&com, &net, &edu]))).unwrap();
    assert_eq!(names(&f.cache.federated_for(&sel("unix:uid:2"))), ["example.com", "example.net"]);
}

#[test]
fn a_change_of_the_set_wakes_only_the_callers_whose_share_changed() {
    let f = Fixture::new();
    let (com, net) = (foreign("example.com"), foreign("example.net"));
    f.sync(Some(set(&[&com]))).unwrap();
    let mut web = f.cache.subscribe(sel("unix:uid:1"));
    let mut db = f.cache.subscribe(sel("unix:uid:2"));
    let mut nobody = f.cache.subscribe(sel("unix:uid:9"));
    for rx in [&mut web, &mut db, &mut nobody] {
        rx.borrow_and_update();
    }

    // example.net arrives: only db federates with it.
    f.sync(Some(set(&[&com, &net]))).unwrap();
    assert!(!web.has_changed().unwrap(), "web's share is unchanged");
    assert!(!nobody.has_changed().unwrap());
    assert!(db.has_changed().unwrap());
    assert_eq!(names(&db.borrow_and_update().federated), ["example.com", "example.net"]);
    assert!(Arc::ptr_eq(&db.borrow().federated[&td("example.com")], &com), "shared, not copied");

    // The same set again (a resent set, equal bundles in new allocations) wakes nobody.
    let again = set(&[&foreign_copy(&com), &foreign_copy(&net)]);
    f.sync(Some(again)).unwrap();
    assert!(!db.has_changed().unwrap() && !web.has_changed().unwrap());
    // Nor does a sync that leaves the set as it is (None).
    f.sync(None).unwrap();
    assert_eq!(f.cache.federated().len(), 2);

    // The federation with example.com is deleted: it leaves both callers' streams.
    f.sync(Some(set(&[&net]))).unwrap();
    assert!(web.has_changed().unwrap() && db.has_changed().unwrap());
    assert!(web.borrow_and_update().federated.is_empty());
    assert_eq!(names(&db.borrow_and_update().federated), ["example.net"]);
    // "None any more".
    f.sync(Some(FederatedBundles::new())).unwrap();
    assert!(db.has_changed().unwrap());
    assert!(db.borrow_and_update().federated.is_empty());
    assert!(!web.has_changed().unwrap(), "web had nothing left to lose");
}

fn foreign_copy(b: &Arc<TrustBundle>) -> Arc<TrustBundle> {
    Arc::new(TrustBundle::clone(b))
}

#[test]
fn an_entry_that_changes_its_federates_with_wakes_its_callers() {
    let mut f = Fixture::new();
    let (com, net) = (foreign("example.com"), foreign("example.net"));
    f.sync(Some(set(&[&com, &net]))).unwrap();
    let mut web = f.cache.subscribe(sel("unix:uid:1"));
    let mut db = f.cache.subscribe(sel("unix:uid:2"));
    web.borrow_and_update();
    db.borrow_and_update();
    let svids_before = web.borrow().svids.clone();

    if let Some(e) = f.entries.get_mut("web") {
        e.federates_with = vec!["example.net".into()];
        e.revision += 1;
    }
    f.sync(None).unwrap();
    assert!(web.has_changed().unwrap());
    let now = web.borrow_and_update().clone();
    assert_eq!(names(&now.federated), ["example.net"]);
    assert!(Arc::ptr_eq(&now.svids, &svids_before), "the SVID list is shared as it was");
    assert!(!db.has_changed().unwrap(), "db's entry did not change");
    assert!(f.cache.due(SystemTime::now()).is_empty(), "no SVID is renewed for it");
}

//! The sync of a server from before cursors: every round the agent compares the server's
//! list of (entry ID, revision) with the revisions its cache holds, and hands the cache
//! only the difference (changed and new entries fetched, the others' IDs dropped).

use std::sync::Arc;
use std::time::SystemTime;

use super::harness::{Server, selectors, setup_on};
use super::*;

#[tokio::test]
async fn a_server_without_cursors_is_synced_by_revision_list_against_the_cache() {
    let mut s = setup_on(Server::start_without_cursors().await, ManagerOptions::default()).await;
    let keep = s.server.entry("spiffe://example.org/keep", &s.agent_id, &["unix:uid:1"]);
    let change = s.server.entry("spiffe://example.org/change", &s.agent_id, &["unix:uid:2"]);
    let delete = s.server.entry("spiffe://example.org/delete", &s.agent_id, &["unix:uid:3"]);
    let report = s.manager.tick().await.unwrap();
    assert_eq!((report.entries, report.issued, report.removed), (3, 3, 0));
    assert!(s.manager.synced().revision >= delete.revision);
    assert!(s.cache.bundle().is_some());

    let mut keep_sub = s.cache.subscribe(selectors(&["unix:uid:1"]));
    keep_sub.borrow_and_update();
    let kept = s.cache.svid(&keep.id).unwrap();
    // The entry moves to another uid, one goes, one comes.
    let mut spec = change.spec.clone();
    spec.selectors = selectors(&["unix:uid:4"]);
    s.server.store.update_entry(&change.id, &spec, SystemTime::now()).unwrap();
    s.server.store.delete_entry(&delete.id).unwrap();
    let added = s.server.entry("spiffe://example.org/added", &s.agent_id, &["unix:uid:5"]);

    let report = s.manager.tick().await.unwrap();
    assert_eq!((report.entries, report.issued, report.removed), (3, 1, 1), "{report:?}");
    let ids = |uid: &str| -> Vec<String> {
        s.cache.svids_for(&selectors(&[uid])).iter().map(|v| v.entry_id.to_string()).collect()
    };
    assert!(ids("unix:uid:2").is_empty() && ids("unix:uid:3").is_empty());
    assert_eq!(ids("unix:uid:4"), std::slice::from_ref(&change.id), "moved with its SVID");
    assert_eq!(ids("unix:uid:5"), std::slice::from_ref(&added.id));
    let now_kept = s.cache.svid(&keep.id).unwrap();
    assert!(Arc::ptr_eq(&kept, &now_kept), "the unchanged entry's SVID is the same one");
    assert!(!keep_sub.has_changed().unwrap(), "its caller set was not told anything");

    // An idle round changes nothing and issues nothing.
    let report = s.manager.tick().await.unwrap();
    assert_eq!((report.entries, report.issued, report.removed), (3, 0, 0));
    assert!(!keep_sub.has_changed().unwrap());
}

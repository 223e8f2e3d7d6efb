//! A failed renewal of the agent's own SVID, while that SVID is still valid, does not stop
//! the round: workload SVIDs are still synced and renewed with the current agent SVID (the
//! server's datastore refusing writes fails `RenewAgent` but not signing).

use std::time::Duration;

use super::harness::setup;

#[tokio::test]
async fn a_failed_agent_svid_renewal_does_not_stop_workload_renewals() {
    let mut s = setup().await;
    let e = s.server.entry("spiffe://example.org/web", &s.agent_id, &["unix:uid:1000"]);
    s.manager.tick().await.unwrap();
    let first = s.cache.svid(&e.id).unwrap();
    let agent = s.manager.client_mut().identity().unwrap().clone();

    // Both are due: the workload SVID, and the agent's own (past half its life).
    let agent_due = agent.expires_at - Duration::from_secs(20 * 60);
    let now = first.renew_at.max(agent_due);
    assert!(now < first.expires_at && now < agent.expires_at, "both still valid");
    s.clock.set(now);

    // Another process holds the datastore's write lock: RenewAgent (a write) fails after
    // the busy timeout; syncing and signing only read.
    let other = rusqlite::Connection::open(s.server.db_path()).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let report = s.manager.tick().await.expect("the round failed with the agent renewal");
    assert!(!report.agent_renewed, "{report:?}");
    assert!(report.renewed >= 1, "{report:?}");
    assert_ne!(s.cache.svid(&e.id).unwrap().serial, first.serial, "not renewed");
    assert_eq!(s.manager.client_mut().identity().unwrap().serial, agent.serial);

    // The lock gone, the next round renews the agent SVID.
    other.execute_batch("ROLLBACK").unwrap();
    let report = s.manager.tick().await.unwrap();
    assert!(report.agent_renewed, "{report:?}");
}

//! A forward jump of the wall clock while [`Manager::run`] sleeps between rounds: the loop
//! sleeps on tokio's monotonic timer for one `sync_interval` at most and reads the clock
//! afresh each round, so an SVID whose renewal time the jump passed is renewed within one
//! interval, not when some long sleep computed before the jump would have ended.

use std::time::{Duration, Instant};

use super::harness::{selectors, setup_with};
use crate::agent::manager::ManagerOptions;
use crate::shutdown::Shutdown;

/// Polls `done` every 10 ms for at most `limit`; returns how long it took.
async fn within(limit: Duration, done: impl Fn() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

#[tokio::test]
async fn a_forward_clock_jump_past_the_renewal_time_renews_within_one_sync_interval() {
    let interval = Duration::from_millis(300);
    let options = ManagerOptions { sync_interval: interval, ..ManagerOptions::default() };
    let s = setup_with(options).await;
    let e = s.server.entry("spiffe://example.org/web", &s.agent_id, &["unix:uid:1000"]);
    let shutdown = Shutdown::new();
    let running = tokio::spawn(s.manager.run(shutdown.wait()));

    let cache = s.cache.clone();
    within(Duration::from_secs(20), || cache.svid(&e.id).is_some())
        .await
        .expect("no SVID within 20 s");
    let first = s.cache.svid(&e.id).unwrap();
    let mut sub = s.cache.subscribe(selectors(&["unix:uid:1000"]));
    sub.borrow_and_update();

    // The clock stands still: several rounds pass and nothing is renewed.
    tokio::time::sleep(interval * 4).await;
    assert_eq!(s.cache.svid(&e.id).unwrap().serial, first.serial, "renewed before its time");

    // The wall clock jumps past the renewal time while the loop sleeps.
    s.clock.set(first.renew_at + Duration::from_secs(1));
    let cache = s.cache.clone();
    let took = within(Duration::from_secs(20), || {
        cache.svid(&e.id).is_some_and(|now| now.serial != first.serial)
    })
    .await
    .expect("the jump was not acted on within 20 s");
    println!("renewed {took:?} after a forward clock jump (sync interval {interval:?})");
    // One interval of sleep, plus the round itself (a CSR signed by the server).
    assert!(took < interval + Duration::from_secs(3), "renewal took {took:?} after the jump");
    assert!(sub.has_changed().unwrap(), "the subscribers were not told");

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(20), running).await.unwrap().unwrap();
}

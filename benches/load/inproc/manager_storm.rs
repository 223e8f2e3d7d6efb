//! Target 5 through the agent itself: a real `Manager` (with its `SvidCache`) against the
//! in-process agent API server, both on one manual clock. All entries are created at one
//! instant, the first round issues every SVID, then the clock moves a quarter of a bucket
//! per round and each round renews what its scheduler finds due. A renewal is recorded at
//! the round that replaced the SVID (its serial changed), as `renewal::simulate` records
//! them, so the two rows compare.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use keycard::agent::cache::SvidCache;
use keycard::agent::manager::{Manager, ManagerOptions};
use keycard::clock::{Clock, ManualClock};

use super::renewal::{BUCKETS_PER_HALF_LIFE, Storm, WAVES};
use super::server::Server;

/// Runs the storm for `n` entries whose SVIDs live `lifetime`.
pub fn storm(n: usize, lifetime: Duration) -> Storm {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(run(n, lifetime))
}

async fn run(n: usize, lifetime: Duration) -> Storm {
    let clock = ManualClock::starting_now();
    let start = clock.now();
    let shared: Arc<dyn Clock> = Arc::new(clock.clone());
    let server = Server::start(shared.clone()).await;
    let client = server.agent(start).await;
    let ids = server.entries(&client, n, Some(lifetime), start);
    // The server's entry cache refreshes every 50 ms: let it see the new entries.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let cache = Arc::new(SvidCache::new(shared.clone()));
    let mut manager = Manager::new(client, cache.clone(), shared, ManagerOptions::default());
    let report = manager.tick().await.expect("the first round");
    assert_eq!(report.issued, n, "the first round issues every SVID: {report:?}");

    let mut serials: HashMap<Arc<str>, (Arc<str>, usize)> =
        cache.svids().iter().map(|s| (s.entry_id.clone(), (s.serial.clone(), 0usize))).collect();
    assert_eq!(serials.len(), ids.len());
    let bucket = lifetime / 2 / BUCKETS_PER_HALF_LIFE;
    let tick = bucket / 4;
    let mut renewals = Vec::with_capacity(n * WAVES);
    let mut done = 0usize;
    // Four waves end before 2.5 lifetimes; a bound, not an expectation.
    let max_ticks = (lifetime.as_nanos() * 3 / tick.as_nanos()) as usize;
    let mut ticks = 0u64;
    for _ in 0..max_ticks {
        if done == n {
            break;
        }
        // Rounds in which nothing is due change nothing: go straight to the first tick at
        // or after the earliest renewal point.
        let next = cache.svids().iter().map(|s| s.renew_at).min().unwrap_or(clock.now());
        let ahead = next.duration_since(start).unwrap_or_default();
        let due_tick = (ahead.as_nanos().div_ceil(tick.as_nanos()) as u64).max(ticks + 1);
        ticks = due_tick;
        clock.set(start + tick * (ticks as u32));
        let report = manager.tick().await.expect("a round");
        if report.renewed == 0 {
            continue;
        }
        let at = clock.now().duration_since(start).unwrap_or_default();
        for svid in cache.svids() {
            let Some((serial, waves)) = serials.get_mut(&svid.entry_id) else { continue };
            if *serial == svid.serial {
                continue;
            }
            *serial = svid.serial.clone();
            if *waves < WAVES {
                *waves += 1;
                renewals.push(at);
                if *waves == WAVES {
                    done += 1;
                }
            }
        }
    }
    assert_eq!(done, n, "every SVID renewed {WAVES} times within the bound");
    drop(manager);
    drop(server);
    Storm { renewals, bucket }
}

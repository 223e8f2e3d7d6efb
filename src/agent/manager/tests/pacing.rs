//! Bulk issuance at the server's signing rate: the server signs what the agent's bucket
//! allows and answers the rest "retry after"; the agent keeps what it got, waits on its
//! injected clock (shared here with the server, so the buckets refill exactly as much as
//! the agent waited) and goes on in the same round.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use keycard_workload_api::SpiffeId;
use tokio::sync::Notify;
use tonic::Code;

use super::harness::{Server, Setup, selectors, setup_on_clock};
use crate::agent::ClientError;
use crate::agent::cache::DueEntry;
use crate::agent::manager::issue::issuance_order;
use crate::agent::manager::{ManagerOptions, Pacer};
use crate::clock::ManualClock;
use crate::server::agent_api::Rate;
use crate::server::entry::{Entry, EntrySpec};
use crate::wire::retry_after;

/// Waits by moving the manual clock (the server's too), and remembers every wait.
#[derive(Debug)]
struct ClockPacer {
    clock: ManualClock,
    waits: Mutex<Vec<Duration>>,
}

impl Pacer for ClockPacer {
    fn pause(&self, wait: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        self.waits.lock().unwrap().push(wait);
        self.clock.advance(wait);
        Box::pin(async {})
    }
}

/// Tells `waiting` when the round first waits, then never completes: only shutdown ends it.
#[derive(Debug)]
struct StallPacer {
    waiting: Arc<Notify>,
}

impl Pacer for StallPacer {
    fn pause(&self, _: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        self.waiting.notify_one();
        Box::pin(std::future::pending())
    }
}

fn csr() -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    rcgen::CertificateParams::default().serialize_request(&key).unwrap().der().to_vec()
}

fn entries(server: &Server, parent: &SpiffeId, name: &str, n: usize, ttl: Duration) -> Vec<Entry> {
    (0..n)
        .map(|i| {
            let id = SpiffeId::parse(&format!("spiffe://example.org/{name}/{i}")).unwrap();
            let mut spec = EntrySpec::new(id, parent.clone(), selectors(&["unix:uid:1000"]));
            spec.x509_ttl = Some(ttl);
            server.store.create_entry(&spec, SystemTime::now()).unwrap()
        })
        .collect()
}

async fn paced_setup(rate: Rate, pacer: impl FnOnce(&ManualClock) -> Arc<dyn Pacer>) -> Setup {
    let clock = ManualClock::starting_now();
    let server = Server::start_paced(rate, clock.clone()).await;
    let options = ManagerOptions { pacer: pacer(&clock), ..Default::default() };
    setup_on_clock(server, options, clock).await
}

#[tokio::test]
async fn the_server_signs_what_the_rate_allows_and_times_the_rest() {
    let clock = ManualClock::starting_now();
    let server = Server::start_paced(Rate { per_second: 10.0, burst: 50.0 }, clock.clone()).await;
    let mut agent = server.agent().await;
    let parent = agent.identity().unwrap().spiffe_id.clone();
    let hour = Duration::from_secs(3600);
    let items: Vec<(String, Vec<u8>)> =
        entries(&server, &parent, "w", 60, hour).into_iter().map(|e| (e.id, csr())).collect();

    // 60 items, 50 tokens: 50 signed, 10 paced, each told when its token will be there.
    let results = agent.batch_new_x509_svid(&items).await.unwrap();
    assert_eq!(results.len(), 60);
    assert!(results[..50].iter().all(Result::is_ok));
    for (k, result) in results[50..].iter().enumerate() {
        let status = result.as_ref().unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert_eq!(retry_after(status), Some(Duration::from_millis(100 * (k as u64 + 1))));
    }

    // No token left: the call fails as a whole, saying when all 5 can be signed.
    let err = agent.batch_new_x509_svid(&items[50..55]).await.unwrap_err();
    let ClientError::Rpc(status) = &err else { panic!("{err:?}") };
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(retry_after(status), Some(Duration::from_millis(500)));

    // After that time, they are.
    clock.advance(Duration::from_millis(500));
    let results = agent.batch_new_x509_svid(&items[50..55]).await.unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
}

#[tokio::test]
async fn one_round_serves_more_entries_than_the_rate_allows_at_once() {
    let recorder = Arc::new(Mutex::new(None::<Arc<ClockPacer>>));
    let keep = recorder.clone();
    let mut s = paced_setup(Rate { per_second: 10.0, burst: 20.0 }, move |clock| {
        let pacer = Arc::new(ClockPacer { clock: clock.clone(), waits: Mutex::new(Vec::new()) });
        *keep.lock().unwrap() = Some(pacer.clone());
        pacer
    })
    .await;
    let pacer = recorder.lock().unwrap().clone().unwrap();
    let all = entries(&s.server, &s.agent_id, "w", 50, Duration::from_secs(3600));

    let report = s.manager.tick().await.unwrap();
    // One call signs the 20 the bucket holds; the server says the bucket is full again
    // in 2 s (20 tokens at 10/s), the round waits that long and gets 20 more, then waits
    // 1 s for the last 10: nothing failed, no halving, one round.
    assert_eq!((report.issued, report.failed), (50, 0), "{report:?}");
    assert_eq!((report.batches, report.paced_waits, report.rate_limited), (3, 2, 40));
    let waits = pacer.waits.lock().unwrap().clone();
    assert_eq!(waits, [Duration::from_secs(2), Duration::from_secs(1)]);
    assert_eq!(s.manager.batch_size(), ManagerOptions::default().max_batch);
    assert!(all.iter().all(|e| s.cache.svid(&e.id).is_some()));
}

#[tokio::test]
async fn a_call_refused_as_a_whole_for_the_rate_is_waited_out_not_failed() {
    let recorder = Arc::new(Mutex::new(None::<Arc<ClockPacer>>));
    let keep = recorder.clone();
    let mut s = paced_setup(Rate { per_second: 10.0, burst: 5.0 }, move |clock| {
        let pacer = Arc::new(ClockPacer { clock: clock.clone(), waits: Mutex::new(Vec::new()) });
        *keep.lock().unwrap() = Some(pacer.clone());
        pacer
    })
    .await;
    let pacer = recorder.lock().unwrap().clone().unwrap();
    let hour = Duration::from_secs(3600);
    entries(&s.server, &s.agent_id, "first", 5, hour);
    assert_eq!(s.manager.tick().await.unwrap().issued, 5);

    // The bucket is empty: the first call is refused as a whole, retry after 0.5 s.
    let second = entries(&s.server, &s.agent_id, "second", 5, hour);
    let report = s.manager.tick().await.unwrap();
    assert_eq!((report.issued, report.failed, report.rate_limited), (5, 0, 5), "{report:?}");
    assert_eq!((report.batches, report.paced_waits), (2, 1));
    assert_eq!(*pacer.waits.lock().unwrap(), [Duration::from_millis(500)]);
    assert!(second.iter().all(|e| s.cache.svid(&e.id).is_some()));
    assert_eq!(s.manager.batch_size(), ManagerOptions::default().max_batch, "not halved");
}

#[tokio::test]
async fn an_interrupted_round_keeps_its_svids_and_serves_new_entries_first() {
    let waiting = Arc::new(Notify::new());
    let stall = waiting.clone();
    let clock = ManualClock::starting_now();
    let rate = Rate { per_second: 10.0, burst: 5.0 };
    let server = Server::start_paced(rate, clock.clone()).await;
    let options =
        ManagerOptions { pacer: Arc::new(StallPacer { waiting: stall }), ..Default::default() };
    let mut s = setup_on_clock(server, options, clock.clone()).await;

    // Five entries get SVIDs living 10 minutes, which are due for renewal 9 minutes later;
    // then five new entries appear. The bucket holds five tokens again by then.
    let old = entries(&s.server, &s.agent_id, "old", 5, Duration::from_secs(600));
    assert_eq!(s.manager.tick().await.unwrap().issued, 5);
    let serials: Vec<Arc<str>> =
        old.iter().map(|e| s.cache.svid(&e.id).unwrap().serial.clone()).collect();
    clock.advance(Duration::from_secs(9 * 60));
    let new = entries(&s.server, &s.agent_id, "new", 5, Duration::from_secs(600));

    // The round signs five, then waits for the rate; shutdown ends it there.
    let shutdown = async move { waiting.notified().await };
    tokio::time::timeout(Duration::from_secs(60), s.manager.run(shutdown)).await.unwrap();

    // What it got is in the cache: the entries that had nothing went first.
    assert!(new.iter().all(|e| s.cache.svid(&e.id).is_some()), "new entries served first");
    for (e, serial) in old.iter().zip(&serials) {
        assert_eq!(&s.cache.svid(&e.id).unwrap().serial, serial, "renewals wait their turn");
    }
}

#[test]
fn issuance_order_puts_entries_without_an_svid_first_then_by_renewal_time() {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let due = |id: &str, previous: Option<u64>| DueEntry {
        entry_id: id.into(),
        previous_due: previous.map(|s| t0 + Duration::from_secs(s)),
    };
    let held = |id: &str| match id {
        "a-renew-late" => Some(t0 + Duration::from_secs(20)),
        "b-renew-early" => Some(t0 + Duration::from_secs(10)),
        "c-replace" => Some(t0 + Duration::from_secs(99)),
        _ => None,
    };
    let order = issuance_order(
        vec![
            due("a-renew-late", Some(20)),
            due("b-renew-early", Some(10)),
            due("c-replace", None),
            due("z-new", None),
            due("d-new", None),
        ],
        held,
    );
    let ids: Vec<&str> = order.iter().map(|d| &*d.entry_id).collect();
    assert_eq!(ids, ["d-new", "z-new", "c-replace", "b-renew-early", "a-renew-late"]);
}

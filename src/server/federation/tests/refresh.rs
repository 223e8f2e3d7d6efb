//! The refresher against a real bundle endpoint: of two servers on one store that find a
//! bundle due at once, one fetches; the next fetch waits for the hint; a failed fetch
//! keeps the last good bundle, says why, and is retried at the shortest interval.

use std::time::SystemTime;

use super::*;
use crate::clock::{Clock, ManualClock};
use crate::server::datastore::{DataStore, FederationRecord, SqliteDataStore};
use crate::server::federation::fetch::{MIN_REFRESH_INTERVAL, refresh_interval};
use crate::server::federation::https::HttpsFetcher;
use crate::server::federation::refresh::{RefreshError, Refresher};
use crate::telemetry::metrics::FederationLabels;

struct Servers {
    _dir: tempfile::TempDir,
    stores: [Arc<dyn DataStore>; 2],
    refreshers: [Refresher; 2],
    metrics: Arc<ServerMetrics>,
    clock: ManualClock,
}

/// Two refreshers, as two servers of one deployment, over one SQLite file holding a
/// relationship with `running` (endpoint ID `endpoint_id`), bootstrapped with its bundle.
fn servers(running: &Running, endpoint_id: SpiffeId) -> Servers {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keycard.db");
    let stores: [Arc<dyn DataStore>; 2] = [
        Arc::new(SqliteDataStore::open(&path).unwrap()),
        Arc::new(SqliteDataStore::open(&path).unwrap()),
    ];
    let clock = ManualClock::starting_now();
    let metrics = Arc::new(ServerMetrics::new());
    let rel = FederationRecord::new(
        td(),
        running.url(),
        EndpointProfile::HttpsSpiffe { endpoint_id },
        clock.now(),
    );
    let bootstrap = running.ca.bundle().unwrap().to_json().unwrap();
    stores[0].create_federation(&rel, Some(bootstrap.as_bytes())).unwrap();
    let refresher = |store: &Arc<dyn DataStore>| {
        let fetcher = Arc::new(HttpsFetcher::default());
        Refresher::new(store.clone(), Arc::new(clock.clone()), fetcher, metrics.clone())
    };
    let refreshers = [refresher(&stores[0]), refresher(&stores[1])];
    Servers { _dir: dir, stores, refreshers, metrics, clock }
}

impl Servers {
    async fn tick_both(&self) -> usize {
        let (a, b) = tokio::join!(self.refreshers[0].tick(), self.refreshers[1].tick());
        a.unwrap() + b.unwrap()
    }

    fn outcomes(&self, outcome: &'static str) -> u64 {
        let labels = FederationLabels { trust_domain: td().name().to_owned(), outcome };
        self.metrics.federation_refreshes.get_or_create(&labels).get()
    }

    fn record(&self) -> FederationRecord {
        self.stores[1].get_federation(&td()).unwrap().unwrap()
    }
}

#[tokio::test]
async fn one_server_of_two_fetches_a_due_bundle_and_the_next_waits_for_the_hint() {
    let (running, _svid) = start_spiffe().await;
    let s = servers(&running, server_id());
    let now: SystemTime = s.clock.now();
    assert_eq!(s.tick_both().await, 1, "exactly one of the two servers fetches");
    assert_eq!(running.requests("200"), 1);
    let bundle = running.ca.bundle().unwrap();
    let stored = s.stores[1].get_bundle(&td()).unwrap().unwrap();
    assert_eq!(SpiffeBundle::parse(td(), &stored).unwrap(), bundle);
    let rec = s.record();
    assert_eq!((rec.last_success_at, rec.last_error.clone()), (Some(now), None));
    assert_eq!(rec.next_refresh_at, now + refresh_interval(bundle.refresh_hint));
    assert_eq!(s.outcomes("ok"), 1);

    // Not due again until the hint has passed.
    assert_eq!(s.tick_both().await, 0);
    s.clock.advance(refresh_interval(bundle.refresh_hint));
    assert_eq!(s.tick_both().await, 1);
    assert_eq!(running.requests("200"), 2);
    running.stop().await;
}

#[tokio::test]
async fn a_failed_fetch_keeps_the_last_good_bundle_and_says_why() {
    let (running, _svid) = start_spiffe().await;
    let impostor = SpiffeId::parse("spiffe://example.org/not-the-server").unwrap();
    let s = servers(&running, impostor.clone());
    let held = s.stores[0].get_bundle(&td()).unwrap();
    let now = s.clock.now();
    assert_eq!(s.tick_both().await, 1);
    let rec = s.record();
    let why = rec.last_error.clone().expect("the failure is recorded");
    assert!(why.contains(impostor.as_str()), "{why}");
    assert_eq!((rec.last_attempt_at, rec.last_success_at), (Some(now), None));
    assert_eq!(rec.next_refresh_at, now + MIN_REFRESH_INTERVAL, "retried at the shortest interval");
    assert_eq!(s.stores[0].get_bundle(&td()).unwrap(), held, "the last good bundle is kept");
    assert_eq!(s.outcomes("failed"), 1);

    // An operator's refresh fails the same way, with the reason.
    match s.refreshers[0].refresh_now(&td()).await {
        Err(RefreshError::Fetch { why, .. }) => assert!(why.contains(impostor.as_str()), "{why}"),
        other => panic!("a refresh from an impostor endpoint: {other:?}"),
    }
    let missing = TrustDomain::new("nowhere.test").unwrap();
    assert!(matches!(s.refreshers[0].refresh_now(&missing).await, Err(RefreshError::NotFound(_))));
    running.stop().await;
}

//! Keeps foreign bundles fresh: each relationship's bundle is fetched from its endpoint
//! when due (the bundle's `spiffe_refresh_hint`, bounded), by one server of the deployment
//! (the one whose claim on the due time wins), and a failed fetch keeps the last good
//! bundle, says why in the relationship and the log, and counts in the metrics.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use keycard_workload_api::TrustDomain;
use keycard_workload_api::bundle_json::SpiffeBundle;

use super::fetch::{MIN_REFRESH_INTERVAL, refresh_interval};
use crate::clock::Clock;
use crate::server::datastore::{DataStore, DataStoreError, FederationRecord, RefreshOutcome};
use crate::shutdown::Shutdown;
use crate::telemetry::ServerMetrics;
use crate::telemetry::metrics::FederationLabels;

/// How often the loop looks for due relationships.
pub const TICK: Duration = Duration::from_secs(5);
/// How long a claimed refresh is this server's: if it dies mid-fetch, another server
/// fetches once the claim runs out.
const CLAIM: Duration = Duration::from_secs(60);
/// After a failed fetch, the next try (the shortest interval the bounds allow).
const RETRY_AFTER_FAILURE: Duration = MIN_REFRESH_INTERVAL;

/// A boxed future, for the fetcher trait.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Fetches a foreign bundle from its endpoint (HTTPS; see [`super::fetch`]). A trait so
/// that the refresher can be driven by a test endpoint's fetcher as well.
pub trait BundleFetcher: Send + Sync + Debug {
    /// Fetches the bundle of `rel`'s trust domain, authenticating the endpoint with
    /// `held` (the bundle held for that domain) under `https_spiffe`.
    fn fetch<'a>(
        &'a self,
        rel: &'a FederationRecord,
        held: Option<&'a SpiffeBundle>,
    ) -> BoxFuture<'a, Result<SpiffeBundle, String>>;
}

/// Why a refresh asked for by an operator did not bring a bundle.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// No relationship with that trust domain.
    #[error("no federation relationship with {0}; create one with keycard federation create")]
    NotFound(TrustDomain),
    /// The fetch failed; the last good bundle is kept.
    #[error("fetching the bundle of {trust_domain} failed (the last good bundle is kept): {why}")]
    Fetch {
        /// The foreign trust domain.
        trust_domain: TrustDomain,
        /// Why.
        why: String,
    },
    /// The datastore failed.
    #[error(transparent)]
    DataStore(#[from] DataStoreError),
}

/// The refresh schedule after a fetch that brought `bundle` (see [`refresh_interval`]).
pub fn next_interval(bundle: Option<&SpiffeBundle>) -> Duration {
    refresh_interval(bundle.and_then(|b| b.refresh_hint))
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct Refresher {
    store: Arc<dyn DataStore>,
    clock: Arc<dyn Clock>,
    fetcher: Arc<dyn BundleFetcher>,
    metrics: Arc<ServerMetrics>,
}

impl Refresher {
    /// A refresher over these parts.
    pub fn new(
        store: Arc<dyn DataStore>,
        clock: Arc<dyn Clock>,
        fetcher: Arc<dyn BundleFetcher>,
        metrics: Arc<ServerMetrics>,
    ) -> Self {
        Self { store, clock, fetcher, metrics }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&dyn DataStore) -> Result<T, DataStoreError> + Send + 'static,
    ) -> Result<T, DataStoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || work(store.as_ref()))
            .await
            .map_err(|e| DataStoreError::Backend(format!("datastore task failed: {e}")))?
    }

    /// One pass: every relationship due now whose claim this server wins is fetched.
    /// Returns how many were fetched (successfully or not).
    pub async fn tick(&self) -> Result<usize, DataStoreError> {
        let now = self.clock.now();
        let due: Vec<FederationRecord> = self
            .blocking(|s| s.list_federations())
            .await?
            .into_iter()
            .filter(|r| r.next_refresh_at <= now)
            .collect();
        let mut fetched = 0;
        for rel in due {
            let (td, seen, until) = (rel.trust_domain.clone(), rel.next_refresh_at, now + CLAIM);
            if !self.blocking(move |s| s.claim_federation_refresh(&td, seen, until)).await? {
                continue; // another server fetches this one
            }
            // A failed fetch is recorded and logged inside; only the store's failures end
            // the pass.
            let _ = self.fetch_and_record(&rel).await?;
            fetched += 1;
        }
        Ok(fetched)
    }

    /// Fetches `td`'s bundle now, whatever its schedule (an operator's refresh).
    pub async fn refresh_now(&self, td: &TrustDomain) -> Result<FederationRecord, RefreshError> {
        let key = td.clone();
        let rel = self
            .blocking(move |s| s.get_federation(&key))
            .await?
            .ok_or_else(|| RefreshError::NotFound(td.clone()))?;
        self.fetch_and_record(&rel)
            .await?
            .map_err(|why| RefreshError::Fetch { trust_domain: td.clone(), why })?;
        let key = td.clone();
        self.blocking(move |s| s.get_federation(&key))
            .await?
            .ok_or_else(|| RefreshError::NotFound(td.clone()))
    }

    /// Fetches one bundle and records the outcome; the inner result is the fetch's.
    async fn fetch_and_record(
        &self,
        rel: &FederationRecord,
    ) -> Result<Result<(), String>, DataStoreError> {
        let td = rel.trust_domain.clone();
        let key = td.clone();
        let held = self.blocking(move |s| s.get_bundle(&key)).await?;
        let held = match held.as_deref().map(|json| SpiffeBundle::parse(td.clone(), json)) {
            Some(Ok(bundle)) => Some(bundle),
            Some(Err(e)) => {
                tracing::warn!(trust_domain = %td, error = %e, "the held foreign bundle does not parse; fetching without it");
                None
            }
            None => None,
        };
        let result = self.fetcher.fetch(rel, held.as_ref()).await;
        let at = self.clock.now();
        let labels = |outcome: &'static str| FederationLabels {
            trust_domain: td.name().to_owned(),
            outcome,
        };
        let (next, outcome) = match &result {
            Ok(bundle) => match bundle.to_json() {
                Ok(json) => (at + next_interval(Some(bundle)), Ok(json.into_bytes())),
                Err(e) => (
                    at + RETRY_AFTER_FAILURE,
                    Err(format!("the fetched bundle cannot be stored: {e}")),
                ),
            },
            Err(why) => (at + RETRY_AFTER_FAILURE, Err(why.clone())),
        };
        match &outcome {
            Ok(_) => {
                self.metrics.federation_refreshes.get_or_create(&labels("ok")).inc();
                tracing::info!(trust_domain = %td, endpoint = %rel.endpoint_url, "fetched foreign bundle");
            }
            Err(why) => {
                self.metrics.federation_refreshes.get_or_create(&labels("failed")).inc();
                tracing::warn!(trust_domain = %td, endpoint = %rel.endpoint_url, error = %why, "fetching the foreign bundle failed; keeping the last good one");
            }
        }
        let stored = outcome.clone();
        self.blocking(move |s| {
            let outcome = match &stored {
                Ok(json) => RefreshOutcome::Fetched(json),
                Err(why) => RefreshOutcome::Failed(why),
            };
            s.record_federation_refresh(&td, at, next, outcome)
        })
        .await?;
        Ok(outcome.map(drop))
    }

    /// Runs [`Refresher::tick`] every [`TICK`] until `shutdown`.
    pub async fn run(self, shutdown: Shutdown) {
        let mut stop = std::pin::pin!(shutdown.wait());
        loop {
            if let Err(e) = self.tick().await {
                tracing::warn!(error = %e, "federation refresh pass failed");
            }
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }
}

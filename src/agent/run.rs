//! `keycard agent run`: attests the node, then keeps the workload SVID cache synced and
//! serves the Workload API until shut down.
//!
//! Start-up order: data directory; the stored bundle and agent SVID (if an earlier run
//! left them); the on-disk workload cache (if enabled); the server client: with a valid
//! stored SVID it is used at once (the server may be down: the cache is served
//! meanwhile), otherwise the node attests (join token or x509pop) and the new SVID and
//! bundle are stored; the soft `RLIMIT_NOFILE` is raised to the hard limit (and the
//! Workload API's connection caps fitted to it); then the Workload API socket, the admin
//! socket, the health endpoints and the sync loop. If any part stops with an error, the
//! others are shut down too and the error is returned.
//!
//! Disk work (opening the data directory, restoring the workload cache, storing what a
//! round changed) runs on tokio's blocking pool, never on a runtime thread; after each
//! round the [`writer`] task stores the bundle and the workload cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::task::JoinSet;

use super::cache::SvidCache;
use super::client::ClientError;
use super::config::AgentConfig;
use super::jwt::JwtMinter;
use super::manager::{Manager, ManagerError, ManagerOptions, RoundObserver, TickReport};
use super::storage::{AgentStorage, StorageError, off_runtime};
use super::workload_api::limits;
use crate::clock::{Clock, SystemClock};
use crate::shutdown::Shutdown;
use crate::telemetry::AgentMetrics;
use crate::telemetry::health::{self, HealthEndpoints, Readiness};
use node::{Attestor, establish};

/// Longest wait between attempts to reach the server for the first attestation.
const MAX_ATTEST_RETRY: Duration = Duration::from_secs(30);

/// Why the agent could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The data directory or a stored file is unusable.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A configured PEM file is unusable.
    #[error(transparent)]
    PemFile(#[from] crate::pemfile::PemFileError),
    /// The configured trust bundle file holds no usable bundle.
    #[error("trust_bundle_path {path}: {reason}")]
    TrustBundle {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Nothing to authenticate the server with.
    #[error(
        "no trust bundle to authenticate the server: pass --trust-bundle FILE (the output of \
         `keycard bundle show --format pem` on the server), or --insecure-bootstrap for development"
    )]
    NoBootstrap,
    /// The agent has no usable SVID and no way to attest.
    #[error(
        "the agent has no valid SVID and no node attestor: pass --join-token TOKEN (from \
         `keycard token generate`) or --x509pop-cert/--x509pop-key"
    )]
    NoAttestation,
    /// Node attestation failed.
    #[error("node attestation failed: {0}")]
    Attestation(ClientError),
    /// A socket could not be set up.
    #[error(transparent)]
    Socket(#[from] crate::unixsock::SocketError),
    /// The Workload API stopped with an error.
    #[error("Workload API: {0}")]
    WorkloadApi(#[from] tonic::transport::Error),
    /// The agent admin API stopped with an error.
    #[error("agent admin API: {0}")]
    Admin(String),
    /// The health endpoints could not be bound.
    #[error("health endpoints: {0}")]
    Health(#[from] health::HealthError),
    /// A background task panicked.
    #[error("internal task failed: {0}")]
    Task(String),
}

/// What `/ready` looks at: the agent SVID's expiry, seconds since the epoch (0: none).
#[derive(Debug, Default)]
struct AgentStatus {
    svid_expires_at: AtomicU64,
}

impl AgentStatus {
    fn set_expiry(&self, at: SystemTime) {
        let secs = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
        self.svid_expires_at.store(secs, Ordering::Relaxed);
    }

    fn expires_at(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(self.svid_expires_at.load(Ordering::Relaxed))
    }
}

/// Runs the agent until `shutdown` triggers or a part fails.
pub async fn run(config: AgentConfig, shutdown: Shutdown) -> Result<(), RunError> {
    trim::tune_allocator();
    let dir = config.data_dir.clone();
    let storage = off_runtime(move || AgentStorage::open(&dir)).await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let metrics = Arc::new(AgentMetrics::new());
    let status = Arc::new(AgentStatus::default());
    let cache = Arc::new(SvidCache::new(clock.clone()));
    let disk_cache = if config.disk_cache {
        Some(restore_disk_cache(&storage, &config, &clock, &cache).await?)
    } else {
        None
    };

    let attestor = Attestor::new(&config)?;
    let client = tokio::select! {
        client = establish(&config, &storage, &attestor, &metrics) => client?,
        () = shutdown.wait() => return Ok(()),
    };
    if let Some(id) = client.identity() {
        status.set_expiry(id.expires_at);
        tracing::info!(agent_id = %id.spiffe_id, expires_at = %crate::telemetry::logging::rfc3339(id.expires_at), "agent identity ready");
    }

    // Each held Workload API connection costs descriptors: take all the kernel allows,
    // and cap connections to what that can hold.
    let limits = config.workload_limits.fitted_to(limits::raise_fd_limit());
    let listener = crate::unixsock::bind_workload_socket(&config.socket_path)?;
    tracing::info!(
        socket = %config.socket_path.display(),
        workload_api = config.apis.workload_api,
        sds = config.apis.sds.is_some(),
        "Workload API listening"
    );
    let mut tasks: JoinSet<Result<(), RunError>> = JoinSet::new();
    let unix = config.unix.clone();
    let (minter, jwt_requests) = JwtMinter::new(clock.clone());
    tasks.spawn({
        let (cache, unix, metrics, stop) =
            (cache.clone(), unix.clone(), metrics.clone(), shutdown.wait());
        let jwt = Some(minter.clone());
        let apis = config.apis.clone();
        async move {
            let serve = super::workload_api::serve_apis;
            Ok(serve(listener, cache, unix, limits, metrics, jwt, apis, stop).await?)
        }
    });
    tasks.spawn({
        let (path, cache, stop) = (config.admin_socket.clone(), cache.clone(), shutdown.wait());
        async move {
            super::admin::serve_admin(&path, cache, unix, stop)
                .await
                .map_err(|e| RunError::Admin(e.to_string()))
        }
    });
    if let Some(addr) = config.health_address {
        let listener = health::bind(addr).await?;
        let bound = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(address = %bound, "health and metrics endpoints listening");
        let endpoints =
            health_endpoints(status.clone(), cache.clone(), metrics.clone(), clock.clone());
        let stop = shutdown.wait();
        tasks.spawn(async move {
            health::serve(listener, endpoints, stop).await;
            Ok(())
        });
    }

    let options = ManagerOptions {
        sync_interval: config.sync_interval,
        key_type: config.workload_key_type,
        ..Default::default()
    };
    let mut manager =
        Manager::new(client, cache.clone(), clock.clone(), options).with_jwt_requests(jwt_requests);
    if let Some(reattest) = attestor.reattest(&config, &storage, &metrics) {
        manager = manager.with_reattest(reattest);
    }
    let (held, td) = (storage.clone(), config.trust_domain.clone());
    match off_runtime(move || held.load_bundle(&td)).await {
        Ok(Some(bundle)) => manager = manager.with_held_bundle(bundle),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the stored bundle"),
    }
    let (to_store, wanted) = tokio::sync::watch::channel(ToStore::default());
    let keeps_disk_cache = disk_cache.is_some();
    let writer = Writer { storage: storage.clone(), disk_cache, cache: cache.clone() };
    tasks.spawn(writer.run(wanted));
    let observer = Observer {
        to_store,
        cache: cache.clone(),
        metrics: metrics.clone(),
        status: status.clone(),
        clock: clock.clone(),
        minter,
        unsaved: true,
        keeps_disk_cache,
    };
    let stop = shutdown.wait();
    tasks.spawn(async move {
        manager.run_with(observer, stop).await;
        Ok(())
    });

    // The first part to stop (with or without an error) stops all the others.
    let mut outcome = Ok(());
    while let Some(joined) = tasks.join_next().await {
        let result = joined.map_err(|e| RunError::Task(e.to_string())).and_then(|r| r);
        if let Err(e) = result {
            tracing::error!(error = %e, "agent part failed; shutting down");
            if outcome.is_ok() {
                outcome = Err(e);
            }
        }
        shutdown.trigger();
    }
    if let Err(e) = std::fs::remove_file(&config.socket_path) {
        tracing::debug!(error = %e, "could not remove the Workload API socket");
    }
    tracing::info!("agent stopped");
    outcome
}

/// Sets the allocator up for a long-running agent (large buffers returned when freed, one
/// arena; see the `trim` module). [`run`] does it too; calling it before the runtime's threads
/// start keeps them from taking arenas of their own first.
pub fn tune_allocator() {
    trim::tune_allocator();
}

/// After every round: tell the [`Writer`] what should be on disk, and update the metrics
/// and the readiness status. It never waits for the disk.
struct Observer {
    to_store: tokio::sync::watch::Sender<ToStore>,
    cache: Arc<SvidCache>,
    metrics: Arc<AgentMetrics>,
    status: Arc<AgentStatus>,
    clock: Arc<dyn Clock>,
    /// Cached JWT-SVIDs of entries a sync removed, or signed by a key a sync said is
    /// tainted, are dropped.
    minter: JwtMinter,
    /// Whether a round changed what the agent holds since the last good round stored it
    /// (true until the first good round).
    unsaved: bool,
    /// Whether the writer saves a disk cache: only then does it need what the last sync
    /// brought besides the entries (it takes the entries and SVIDs from the cache).
    keeps_disk_cache: bool,
}

impl RoundObserver for Observer {
    fn after_round(&mut self, manager: &Manager, outcome: &Result<TickReport, ManagerError>) {
        match outcome {
            Ok(report) => {
                self.metrics.sync_round("ok");
                if report.agent_renewed {
                    self.metrics.agent_renewals.inc();
                }
                if report.reattested {
                    self.metrics.node_attested("ok");
                }
                self.metrics.svids("issued", report.issued);
                self.metrics.svids("renewed", report.renewed);
                self.metrics.svids("failed", report.failed);
                // Asked again after a wait for the server's signing rate: not failures.
                self.metrics.svids("rate_limited", report.rate_limited);
            }
            Err(_) => self.metrics.sync_round("error"),
        }
        if let Some(identity) = manager.client().identity() {
            self.status.set_expiry(identity.expires_at);
        }
        // An idle round (nothing synced, issued, renewed or removed) has nothing to store
        // or count again: skipping it keeps an idle round's cost independent of the number
        // of entries. A failed round may have changed something before it failed.
        self.unsaved |= match outcome {
            Ok(r) => r.synced_changed || r.issued + r.renewed + r.removed > 0 || r.reattested,
            Err(_) => true,
        };
        let store_entries = outcome.is_ok() && self.unsaved && self.keeps_disk_cache;
        let synced = manager.synced();
        self.minter.set_tainted(&synced.tainted_authority_ids);
        self.to_store.send_if_modified(|want| {
            let new_bundle = synced.bundle.is_some() && want.bundle != synced.bundle;
            if new_bundle {
                want.bundle = synced.bundle.clone();
            }
            if store_entries {
                want.synced = Some(Arc::new(synced.clone()));
            }
            new_bundle || store_entries
        });
        if self.unsaved {
            let ids = self.cache.entry_ids();
            let live: std::collections::HashSet<&str> = ids.iter().map(|id| &**id).collect();
            self.minter.retain_entries(&|entry| live.contains(entry));
            self.metrics.cache_entries.set(ids.len() as i64);
            self.metrics.cache_svids.set(self.cache.svids().len() as i64);
        }
        if outcome.is_ok() {
            self.unsaved = false;
        }
        if let Ok(r) = outcome {
            let rebuilt = if r.synced_changed { r.entries } else { 0 };
            if r.issued + r.renewed + r.removed + rebuilt >= trim::TRIM_AFTER {
                trim::release_free_memory();
            }
        }
        let now = self.clock.now();
        let left = match self.status.expires_at().duration_since(now) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        };
        self.metrics.agent_svid_expiry_seconds.set(left);
    }
}

/// `/ready` is true while the agent SVID is valid and a bundle is loaded.
fn health_endpoints(
    status: Arc<AgentStatus>,
    cache: Arc<SvidCache>,
    metrics: Arc<AgentMetrics>,
    clock: Arc<dyn Clock>,
) -> HealthEndpoints {
    let readiness = Arc::new(move || {
        if status.expires_at() <= clock.now() {
            return Readiness::not_ready("the agent SVID is expired");
        }
        if cache.bundle().is_none() {
            return Readiness::not_ready("no trust bundle loaded yet");
        }
        Readiness::ready()
    });
    HealthEndpoints { readiness, metrics: Arc::new(move || metrics.render()) }
}

mod node;
mod trim;
mod writer;

use writer::{ToStore, Writer, restore_disk_cache};

//! `keycard server run`: opens the state, starts every listener, and runs until shut down.
//!
//! Start-up order: first what another process may hold, with nothing written to disk yet:
//! the agent API port, the health port and the bundle endpoint's port are bound (and its
//! `https_web` certificate read) and the admin socket is checked, so a second server (or
//! one started while `keycard dev` holds the ports) stops with a clear message and leaves
//! no state behind. Then the data directory, datastore, key directory, upstream authority,
//! CA (whose journal lives in the datastore), the server's own SVID, and the services:
//! agent API (mTLS), admin API (Unix socket), health endpoints, the federation bundle
//! endpoint (presenting that same SVID for `https_spiffe`) and the rotation ticker. If any of
//! them stops with an error, the others are shut down too and the error is returned, so a
//! supervisor restarts the server rather than leaving it half-alive.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::task::JoinSet;

use super::admin::{self, AdminOptions};
use super::agent_api::{self, AgentApiOptions};
use super::cluster::Cluster;
use super::config::{DatastoreConfig, ServerConfig};
use super::datastore::{
    DataStore, DataStoreJournal, MeteredDataStore, PostgresDataStore, SqliteDataStore,
};
use super::federation::refresh::Refresher;
use super::federation::{self, endpoint::PreparedEndpoint};
use crate::ca::{AuthorityKind, CaManager, DiskKeyManager, SlotState, UpstreamAuthority};
use crate::clock::{Clock, SystemClock};
use crate::shutdown::Shutdown;
use crate::telemetry::health::{self, HealthEndpoints, Readiness};
use crate::telemetry::metrics::AuthorityLabels;
use crate::telemetry::{AUDIT_TARGET, ServerMetrics};

/// How often the rotation schedule runs at most.
const MAX_ROTATION_TICK: Duration = Duration::from_secs(10);

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The server ID file could not be read or made.
    #[error("server ID file {path}: {source}")]
    ServerId {
        /// The file.
        path: String,
        /// What is wrong.
        source: std::io::Error,
    },
    /// The datastore could not be opened.
    #[error("cannot open the datastore: {0}")]
    DataStore(#[from] super::datastore::DataStoreError),
    /// The CA could not start (keys, journal, upstream authority).
    #[error("cannot start the CA: {0}")]
    Ca(#[from] crate::ca::CaError),
    /// The x509pop CA bundle file is unusable.
    #[error("x509pop_ca_bundle {path}: {reason}")]
    X509PopBundle {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A listener could not be bound.
    #[error(
        "cannot listen on {address}: {source} (is another keycard server, or `keycard dev`, \
         running? stop it or choose another --bind-address)"
    )]
    Bind {
        /// The address.
        address: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Another process serves the admin socket this server would use.
    #[error(
        "another process is listening on the admin socket {0} (another keycard server?): stop \
         it, or give this server its own --data-dir or --admin-socket"
    )]
    AdminSocketInUse(String),
    /// The agent API stopped with an error.
    #[error("agent API: {0}")]
    AgentApi(#[from] agent_api::AgentApiError),
    /// The admin API stopped with an error.
    #[error("admin API: {0}")]
    Admin(#[from] admin::ServeError),
    /// The health endpoints could not be bound.
    #[error("health endpoints: {0}")]
    Health(#[from] health::HealthError),
    /// The federation bundle endpoint could not start.
    #[error("{0}")]
    BundleEndpoint(#[from] federation::EndpointError),
    /// Federation relationships declared in the config could not be stored.
    #[error("{0}")]
    Federation(#[from] federation::declared::DeclareError),
    /// A background task panicked.
    #[error("internal task failed: {0}")]
    Task(String),
}

/// Runs the server until `shutdown` triggers or a part fails.
pub async fn run(config: ServerConfig, shutdown: Shutdown) -> Result<(), RunError> {
    // What another process may hold, before anything is created on disk.
    let listener = tokio::net::TcpListener::bind(config.bind_address)
        .await
        .map_err(|source| RunError::Bind { address: config.bind_address.to_string(), source })?;
    let address = listener
        .local_addr()
        .map_err(|source| RunError::Bind { address: config.bind_address.to_string(), source })?;
    let health_listener = match config.health_address {
        Some(addr) => Some(health::bind(addr).await?),
        None => None,
    };
    let bundle_endpoint = match &config.bundle_endpoint {
        Some(endpoint) => Some(PreparedEndpoint::prepare(endpoint).await?),
        None => None,
    };
    if let Ok(crate::unixsock::Existing::Live) =
        crate::unixsock::existing_socket(&config.admin_socket)
    {
        return Err(RunError::AdminSocketInUse(config.admin_socket.display().to_string()));
    }

    crate::fsutil::create_private_dir(&config.data_dir).map_err(|source| RunError::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    })?;
    let metrics = Arc::new(ServerMetrics::new());
    let store: Arc<dyn DataStore> =
        Arc::new(MeteredDataStore::new(open_datastore(&config.datastore).await?, metrics.clone()));
    let keys = Arc::new(DiskKeyManager::open(config.data_dir.join("keys"))?);
    let upstream = match &config.upstream_authority {
        Some(up) => Some(Arc::new(UpstreamAuthority::load(&up.cert_file, &up.key_file)?)),
        None => None,
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let server_id = server_id(&config.data_dir)?;
    let journal = Arc::new(DataStoreJournal::new(store.clone(), server_id.clone()));
    let ca_config = config.ca_config(upstream);
    let ca = {
        let (keys, clock) = (keys.clone(), clock.clone());
        tokio::task::spawn_blocking(move || CaManager::open(ca_config, keys, clock, journal))
            .await
            .map_err(|e| RunError::Task(e.to_string()))??
    };
    let ca = Arc::new(ca);
    let cluster = Arc::new(Cluster::new(
        store.clone(),
        ca.clone(),
        clock.clone(),
        server_id.clone(),
        address.to_string(),
    ));
    {
        // The peers' authorities before the first agent connects, so that agents whose SVID
        // another server signed are accepted from the start.
        let cluster = cluster.clone();
        tokio::task::spawn_blocking(move || cluster.refresh())
            .await
            .map_err(|e| RunError::Task(e.to_string()))??;
    }
    {
        let (store, declared, now) = (store.clone(), config.federates_with.clone(), clock.now());
        tokio::task::spawn_blocking(move || {
            federation::declared::apply(store.as_ref(), &declared, now)
        })
        .await
        .map_err(|e| RunError::Task(e.to_string()))??;
    }
    metrics.entries.set(store.count_entries()? as i64);
    metrics.agents.set(store.count_agents()? as i64);

    tracing::info!(%address, trust_domain = %config.trust_domain, server_id = %server_id,
        datastore = store.kind(), peers = cluster.peers().len(), "agent API listening");

    let mut tasks: JoinSet<Result<(), RunError>> = JoinSet::new();
    let mut options = agent_api_options(&config)?;
    // One server identity, presented by the agent API and the bundle endpoint alike.
    let server_svid = Arc::new(agent_api::server_svid::ServerSvid::mint(
        ca.clone(),
        options.server_id(),
        options.server_svid_ttl,
        clock.clone(),
    )?);
    options.server_svid = Some(server_svid.clone());
    let stop = shutdown.wait();
    tasks.spawn({
        let (ca, store, metrics, clock) = (ca.clone(), store.clone(), metrics.clone(), clock.clone());
        async move { Ok(agent_api::serve(listener, options, ca, store, metrics, clock, stop).await?) }
    });
    let admin_options = AdminOptions {
        trust_domain: config.trust_domain.clone(),
        socket_path: config.admin_socket.clone(),
        allowed_uids: Vec::new(),
    };
    let stop = shutdown.wait();
    tasks.spawn({
        let (cluster, store, metrics, clock) =
            (cluster.clone(), store.clone(), metrics.clone(), clock.clone());
        async move { Ok(admin::serve(admin_options, store, cluster, metrics, clock, stop).await?) }
    });
    if let Some(listener) = health_listener {
        let bound = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(address = %bound, "health and metrics endpoints listening");
        let endpoints = health_endpoints(cluster.clone(), store.clone(), metrics.clone());
        let stop = shutdown.wait();
        tasks.spawn(async move {
            health::serve(listener, endpoints, stop).await;
            Ok(())
        });
    }
    if let Some(endpoint) = bundle_endpoint {
        let serving = endpoint.start(server_svid, ca.clone(), metrics.clone(), shutdown.wait())?;
        tasks.spawn(async move {
            serving.await;
            Ok(())
        });
    }
    let fetcher = Arc::new(federation::https::HttpsFetcher::default());
    let refresher = Refresher::new(store.clone(), clock.clone(), fetcher, metrics.clone());
    let stop = shutdown.clone();
    tasks.spawn(async move {
        refresher.run(stop).await;
        Ok(())
    });
    let tick = (config.ca_ttl / 100).clamp(Duration::from_millis(100), MAX_ROTATION_TICK);
    tasks.spawn(rotation_ticker(
        cluster.clone(),
        metrics.clone(),
        clock.clone(),
        tick,
        shutdown.clone(),
    ));

    // The first part to stop (with or without an error) stops all the others.
    let mut outcome = Ok(());
    while let Some(joined) = tasks.join_next().await {
        let result = joined.map_err(|e| RunError::Task(e.to_string())).and_then(|r| r);
        if let Err(e) = result {
            tracing::error!(error = %e, "server part failed; shutting down");
            if outcome.is_ok() {
                outcome = Err(e);
            }
        }
        shutdown.trigger();
    }
    tracing::info!("server stopped");
    outcome
}

/// Opens the configured datastore (on a blocking thread: it may connect and migrate).
async fn open_datastore(config: &DatastoreConfig) -> Result<Arc<dyn DataStore>, RunError> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || -> Result<Arc<dyn DataStore>, RunError> {
        Ok(match &config {
            DatastoreConfig::Sqlite { path } => Arc::new(SqliteDataStore::open(path)?),
            DatastoreConfig::Postgres { url } => Arc::new(PostgresDataStore::open(url.expose())?),
        })
    })
    .await
    .map_err(|e| RunError::Task(e.to_string()))?
}

/// File in the data directory that holds the server's ID.
pub const SERVER_ID_FILE: &str = "server_id";

/// This server's stable ID: read from `<data_dir>/server_id`, made (random, 16 hex digits)
/// on first start. Servers sharing a datastore tell their journals apart by it, so each
/// server needs its own data directory (its keys are there too).
fn server_id(data_dir: &std::path::Path) -> Result<String, RunError> {
    let path = data_dir.join(SERVER_ID_FILE);
    let error = |source| RunError::ServerId { path: path.display().to_string(), source };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(error(std::io::Error::other(
                    "it does not hold a server ID (letters, digits and '-'); delete it to \
                     make a new one",
                )));
            }
            Ok(id.to_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = hex::encode(rand::random::<[u8; 8]>());
            crate::fsutil::write_private_atomic(&path, format!("{id}\n").as_bytes())
                .map_err(error)?;
            Ok(id)
        }
        Err(e) => Err(error(e)),
    }
}

/// The agent API's options, from the configuration.
fn agent_api_options(config: &ServerConfig) -> Result<AgentApiOptions, RunError> {
    let mut options = AgentApiOptions::new(config.trust_domain.clone());
    options.agent_svid_ttl = config.agent_svid_ttl;
    options.default_x509_ttl = config.default_x509_svid_ttl;
    options.default_jwt_ttl = config.default_jwt_svid_ttl;
    options.server_svid_ttl = config.default_x509_svid_ttl;
    let rate = f64::from(config.svids_per_second_per_agent);
    options.sign_rate = agent_api::Rate { per_second: rate, burst: 2.0 * rate };
    if let Some(path) = &config.x509pop_ca_bundle {
        let certs = crate::pemfile::read_certificates(path)
            .map_err(|e| RunError::X509PopBundle { path: e.path, reason: e.reason })?;
        options.x509pop_ca_bundle = Some(certs);
    }
    Ok(options)
}

/// `/ready` is true with an active X.509 authority and a datastore that answers; its
/// body names the datastore kind and the peers this server sees.
fn health_endpoints(
    cluster: Arc<Cluster>,
    store: Arc<dyn DataStore>,
    metrics: Arc<ServerMetrics>,
) -> HealthEndpoints {
    let readiness = Arc::new(move || {
        let ca = cluster.ca();
        let active =
            ca.authorities(AuthorityKind::X509).iter().any(|a| a.state == SlotState::Active);
        if !active {
            return Readiness::not_ready("no active X.509 authority");
        }
        if let Err(e) = store.ping() {
            return Readiness::not_ready(format!("datastore ({}): {e}", store.kind()));
        }
        Readiness::ready_because(describe_cluster(&cluster))
    });
    HealthEndpoints { readiness, metrics: Arc::new(move || metrics.render()) }
}

/// What `/ready` says of the deployment: the server, its datastore and its peers.
pub fn describe_cluster(cluster: &Cluster) -> String {
    let peers: Vec<String> = cluster
        .peers()
        .iter()
        .map(|p| {
            format!("{} at {}{}", p.id, p.address, if p.live { "" } else { " (not seen lately)" })
        })
        .collect();
    let peers = if peers.is_empty() { "none".to_owned() } else { peers.join(", ") };
    format!(
        "ready: server {}, datastore {}, peers: {peers}",
        cluster.server_id,
        cluster.datastore_kind()
    )
}

/// Every `tick`: refreshes this server's view of its peers (HA), runs the CA's rotation
/// schedule, and keeps the authority metrics current.
async fn rotation_ticker(
    cluster: Arc<Cluster>,
    metrics: Arc<ServerMetrics>,
    clock: Arc<dyn Clock>,
    tick: Duration,
    shutdown: Shutdown,
) -> Result<(), RunError> {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = interval.tick() => {}
        }
        let refreshing = cluster.clone();
        match tokio::task::spawn_blocking(move || refreshing.refresh()).await {
            Ok(Ok(())) => {}
            // The peers' authorities stay as last read; the next tick tries again.
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the peers' authorities"),
            Err(e) => return Err(RunError::Task(e.to_string())),
        }
        let ca = cluster.ca().clone();
        let before = active_ids(&ca);
        let rotating = ca.clone();
        match tokio::task::spawn_blocking(move || rotating.rotate()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                // The current authority keeps signing; the next tick tries again.
                tracing::error!(target: AUDIT_TARGET, event = "rotation_failed", error = %e);
            }
            Err(e) => return Err(RunError::Task(e.to_string())),
        }
        let after = active_ids(&ca);
        for (kind, (old, new)) in ["x509", "jwt"].iter().zip(before.iter().zip(after.iter())) {
            let labels = AuthorityLabels { kind: (*kind).into() };
            if old != new {
                metrics.rotations.get_or_create(&labels).inc();
            }
        }
        update_expiry_gauges(&ca, &metrics, clock.now());
    }
}

/// IDs of the active X.509 and JWT authorities.
fn active_ids(ca: &CaManager) -> [Option<String>; 2] {
    [AuthorityKind::X509, AuthorityKind::Jwt].map(|kind| {
        ca.authorities(kind).into_iter().find(|a| a.state == SlotState::Active).map(|a| a.id)
    })
}

fn update_expiry_gauges(ca: &CaManager, metrics: &ServerMetrics, now: SystemTime) {
    for (kind, name) in [(AuthorityKind::X509, "x509"), (AuthorityKind::Jwt, "jwt")] {
        if let Some(active) =
            ca.authorities(kind).into_iter().find(|a| a.state == SlotState::Active)
        {
            let left = active.not_after.duration_since(now).unwrap_or_default().as_secs();
            let labels = AuthorityLabels { kind: name.into() };
            metrics.authority_expiry_seconds.get_or_create(&labels).set(left as i64);
        }
    }
}

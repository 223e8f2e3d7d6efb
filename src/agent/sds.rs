//! Envoy's Secret Discovery Service (SDS v3) on the agent's Workload API socket:
//! `StreamSecrets` and `FetchSecrets` serve the caller's X.509-SVIDs and trust bundles as
//! Envoy `Secret`s ([`render`] says which name gives what); `DeltaSecrets` answers
//! `Unimplemented`.
//!
//! The caller is attested exactly like a Workload API caller (peer credentials at its
//! connection's first request, re-checked on every request and before every response),
//! but SDS does not ask for the `workload.spiffe.io` header: Envoy never sends it.
//!
//! A stream follows the xDS state-of-the-world rules: the first request names the
//! resources (and carries the node, read for the validator choice); each response has the
//! stream's next version (`1`, `2`, ...) and a fresh random nonce; a request that echoes
//! the last nonce is an ACK, or a NACK when it carries `error_detail` (logged with its
//! message; the stream goes on serving); a request with any other nonce is stale and
//! ignored, except a stream's first (Envoy reconnecting echoes the nonce of its previous
//! stream). A changed name set, or a cache change that alters what the names give
//! (rotation, bundle change, entry removed), sends a new response at once. A name the
//! caller may not have ends the stream with `InvalidArgument` naming it.
//!
//! Streams read their caller set's shared [`Snapshot`](super::cache::Snapshot) (no copy of
//! the SVIDs per stream; a stream keeps only a digest of what it sent), and one caller
//! process may hold at most [`SdsConfig::max_streams_per_caller`] streams.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
pub use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use prost::Name as _;
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::attest::{AttestError, Attested};
use super::cache::{Snapshot, Subscription, SvidCache};
use super::workload_api::{
    CallerState, RECHECK_INTERVAL, attestation_status, attested_caller, attested_of, no_identity,
};
use crate::telemetry::AgentMetrics;

#[cfg(test)]
mod federation_tests;
pub mod render;
#[cfg(test)]
mod tests;

/// The type URL of an SDS resource.
pub fn secret_type_url() -> String {
    Secret::type_url()
}

/// Default resource name of the caller's first SVID.
pub const DEFAULT_SVID_NAME: &str = "default";
/// Default resource name of the agent's own trust bundle.
pub const DEFAULT_BUNDLE_NAME: &str = "ROOTCA";
/// Default resource name of all bundles in one SPIFFE validator config.
pub const DEFAULT_ALL_BUNDLES_NAME: &str = "ALL";
/// Default cap on the SDS streams one caller process holds open.
pub const DEFAULT_MAX_STREAMS_PER_CALLER: usize = 256;

/// SDS settings (the agent's `[sds]` configuration table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdsConfig {
    /// Resource name of the caller's first SVID (`default_svid_name`).
    pub default_svid_name: String,
    /// Resource name of the own trust bundle (`default_bundle_name`).
    pub default_bundle_name: String,
    /// Resource name of all bundles as one SPIFFE validator (`default_all_bundles_name`).
    pub default_all_bundles_name: String,
    /// Streams one caller process may hold open (`max_streams_per_caller`).
    pub max_streams_per_caller: usize,
}

impl Default for SdsConfig {
    fn default() -> Self {
        Self {
            default_svid_name: DEFAULT_SVID_NAME.into(),
            default_bundle_name: DEFAULT_BUNDLE_NAME.into(),
            default_all_bundles_name: DEFAULT_ALL_BUNDLES_NAME.into(),
            max_streams_per_caller: DEFAULT_MAX_STREAMS_PER_CALLER,
        }
    }
}

const STREAM: &str = "StreamSecrets";
const FETCH: &str = "FetchSecrets";
const DELTA: &str = "DeltaSecrets";

/// Open streams per caller process (pid and start time: a reused pid is another process).
#[derive(Debug, Default)]
struct StreamCounts(Mutex<HashMap<(i32, u64), usize>>);

/// One open stream, counted against its caller until dropped.
#[derive(Debug)]
struct StreamPermit {
    counts: Arc<StreamCounts>,
    key: (i32, u64),
}

impl StreamCounts {
    fn acquire(self: &Arc<Self>, a: &Attested, max: usize) -> Result<StreamPermit, Status> {
        let key = (a.caller.pid(), a.caller.start_time());
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(key).or_default();
        if *n >= max {
            tracing::warn!(pid = key.0, max, "SDS stream refused: the caller holds too many");
            return Err(Status::resource_exhausted(format!(
                "this process already holds {max} SDS streams (the agent's \
                 sds.max_streams_per_caller); close some or raise the cap"
            )));
        }
        *n += 1;
        Ok(StreamPermit { counts: self.clone(), key })
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// The gRPC service; see the module documentation.
#[derive(Debug, Clone)]
pub struct SdsService {
    cache: Arc<SvidCache>,
    config: Arc<SdsConfig>,
    metrics: Arc<AgentMetrics>,
    stop: watch::Receiver<bool>,
    streams: Arc<StreamCounts>,
}

impl SdsService {
    /// A service over `cache`; its streams end with `Unavailable` once `stop` turns true.
    pub fn new(
        cache: Arc<SvidCache>,
        config: SdsConfig,
        metrics: Arc<AgentMetrics>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let config = Arc::new(config);
        Self { cache, config, metrics, stop, streams: Arc::default() }
    }

    /// The attested caller (no security header asked) and its subscription, refused when it
    /// holds no SVID.
    async fn subscribe<T>(
        &self,
        request: &Request<T>,
    ) -> Result<(Arc<CallerState>, Subscription), Status> {
        let state = attested_caller(request).await?;
        let a = attested_of(&state)?;
        let rx = self.cache.subscribe(a.selectors.clone());
        if rx.borrow().svids.is_empty() {
            return Err(no_identity(a));
        }
        Ok((state, rx))
    }
}

fn check_type_url(type_url: &str) -> Result<(), Status> {
    if type_url.is_empty() || type_url == secret_type_url() {
        return Ok(());
    }
    Err(Status::invalid_argument(format!(
        "SDS serves {} resources, not {type_url:?}",
        secret_type_url()
    )))
}

fn nonce() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

fn digest(resources: &[envoy_types::pb::google::protobuf::Any]) -> [u8; 32] {
    let mut h = Sha256::new();
    for r in resources {
        h.update(r.type_url.as_bytes());
        h.update((r.value.len() as u64).to_be_bytes());
        h.update(&r.value);
    }
    h.finalize().into()
}

/// The state of one `StreamSecrets` stream.
struct StreamState {
    /// The names of the last request that set them; `None` before the first request.
    names: Option<Vec<String>>,
    spiffe: bool,
    version: u64,
    last_nonce: String,
    /// A digest of the resources last sent (never the keys themselves).
    last_sent: Option<[u8; 32]>,
}

/// What a request asks of the stream.
enum Asked {
    /// Send the resources now (first request, or new names).
    Send,
    /// Nothing to send (ACK, NACK, stale nonce).
    Nothing,
}

impl StreamState {
    fn on_request(
        &mut self,
        req: DiscoveryRequest,
        metrics: &AgentMetrics,
    ) -> Result<Asked, Status> {
        check_type_url(&req.type_url)?;
        if let Some(node) = &req.node {
            self.spiffe = render::spiffe_validation(Some(node));
        }
        let first = self.names.is_none();
        if !first && req.response_nonce != self.last_nonce {
            metrics.sds_request(STREAM, "stale_nonce");
            tracing::debug!(nonce = %req.response_nonce, "SDS request with a stale nonce ignored");
            return Ok(Asked::Nothing);
        }
        if !first && let Some(error) = &req.error_detail {
            metrics.sds_request(STREAM, "nack");
            tracing::warn!(
                version = %req.version_info,
                names = ?req.resource_names,
                code = error.code,
                error_message = %error.message,
                "Envoy rejected the secrets sent over SDS (NACK)"
            );
            return Ok(Asked::Nothing);
        }
        let mut asked = req.resource_names;
        asked.sort();
        asked.dedup();
        if !first && self.names.as_ref() == Some(&asked) {
            metrics.sds_request(STREAM, "ack");
            return Ok(Asked::Nothing);
        }
        metrics.sds_request(STREAM, "request");
        self.names = Some(asked);
        // New names: send even when the resources happen to be the same.
        self.last_sent = None;
        Ok(Asked::Send)
    }

    /// The next response for `snapshot`, or `None` when it would repeat the last one.
    fn response(
        &mut self,
        config: &SdsConfig,
        snapshot: &Snapshot,
    ) -> Result<Option<DiscoveryResponse>, Status> {
        let Some(names) = &self.names else { return Ok(None) };
        let resources = render::resources(render::secrets(config, snapshot, names, self.spiffe)?);
        let sum = digest(&resources);
        if self.last_sent == Some(sum) {
            return Ok(None);
        }
        self.last_sent = Some(sum);
        self.version += 1;
        self.last_nonce = nonce();
        Ok(Some(DiscoveryResponse {
            version_info: self.version.to_string(),
            resources,
            type_url: secret_type_url(),
            nonce: self.last_nonce.clone(),
            ..Default::default()
        }))
    }
}

impl SdsService {
    /// Runs one stream: see the module documentation.
    async fn run_stream(
        self,
        state: Arc<CallerState>,
        mut updates: Subscription,
        mut requests: Streaming<DiscoveryRequest>,
        tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
        _permit: StreamPermit,
    ) {
        let Ok(attested) = attested_of(&state) else { return };
        let mut stream = StreamState {
            names: None,
            spiffe: true,
            version: 0,
            last_nonce: String::new(),
            last_sent: None,
        };
        let mut stop = self.stop.clone();
        let start = tokio::time::Instant::now() + RECHECK_INTERVAL;
        let mut recheck = tokio::time::interval_at(start, RECHECK_INTERVAL);
        loop {
            let ended: Option<Status> = tokio::select! {
                req = requests.message() => match req {
                    Ok(Some(req)) => match stream.on_request(req, &self.metrics) {
                        Ok(Asked::Send) => self.send(&mut stream, &state, attested, &mut updates, &tx).await,
                        Ok(Asked::Nothing) => None,
                        Err(status) => Some(status),
                    },
                    Ok(None) | Err(_) => return,
                },
                changed = updates.changed() => match changed {
                    Ok(()) => self.send(&mut stream, &state, attested, &mut updates, &tx).await,
                    Err(_) => return,
                },
                () = tx.closed() => return,
                () = attested.caller.exited() => {
                    Some(attestation_status(&AttestError::ProcessGone { pid: attested.caller.pid() }))
                }
                _ = recheck.tick() => state.recheck().await.err(),
                _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => {
                    Some(Status::unavailable("the agent is shutting down"))
                }
            };
            if let Some(status) = ended {
                self.metrics.sds_request(STREAM, "error");
                let _ = tx.send(Err(status)).await;
                return;
            }
        }
    }

    /// Sends what the stream's names give now, if it differs from what was sent, after
    /// re-checking the caller; the status that ends the stream otherwise.
    async fn send(
        &self,
        stream: &mut StreamState,
        state: &Arc<CallerState>,
        attested: &Attested,
        updates: &mut Subscription,
        tx: &mpsc::Sender<Result<DiscoveryResponse, Status>>,
    ) -> Option<Status> {
        let snapshot = updates.borrow_and_update().clone();
        // Nothing is sent before the first request names the resources.
        stream.names.as_ref()?;
        if snapshot.svids.is_empty() {
            return Some(no_identity(attested));
        }
        let response = match stream.response(&self.config, &snapshot) {
            Ok(Some(r)) => r,
            Ok(None) => return None,
            Err(status) => return Some(status),
        };
        // Never send keys to a process that is no longer the attested one.
        if let Err(status) = state.recheck().await {
            return Some(status);
        }
        if tx.send(Ok(response)).await.is_ok() {
            self.metrics.sds_response(STREAM);
        }
        None
    }
}

type ResponseStream<T> = ReceiverStream<Result<T, Status>>;

#[tonic::async_trait]
impl SecretDiscoveryService for SdsService {
    type DeltaSecretsStream = ResponseStream<DeltaDiscoveryResponse>;
    type StreamSecretsStream = ResponseStream<DiscoveryResponse>;

    async fn delta_secrets(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        self.metrics.sds_request(DELTA, "error");
        Err(Status::unimplemented(
            "DeltaSecrets is not served: use StreamSecrets (Envoy's default state-of-the-world SDS)",
        ))
    }

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let started = async {
            let (state, updates) = self.subscribe(&request).await?;
            let permit =
                self.streams.acquire(attested_of(&state)?, self.config.max_streams_per_caller)?;
            Ok::<_, Status>((state, updates, permit))
        };
        let (state, updates, permit) = match started.await {
            Ok(s) => s,
            Err(status) => {
                self.metrics.sds_request(STREAM, "error");
                return Err(status);
            }
        };
        let (tx, rx) = mpsc::channel(4);
        let requests = request.into_inner();
        tokio::spawn(self.clone().run_stream(state, updates, requests, tx, permit));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let answered = async {
            check_type_url(&request.get_ref().type_url)?;
            let (_state, updates) = self.subscribe(&request).await?;
            let snapshot = updates.borrow().clone();
            let req = request.get_ref();
            let spiffe = render::spiffe_validation(req.node.as_ref());
            let secrets = render::secrets(&self.config, &snapshot, &req.resource_names, spiffe)?;
            let resources = render::resources(secrets);
            Ok::<_, Status>(DiscoveryResponse {
                version_info: hex::encode(&digest(&resources)[..8]),
                resources,
                type_url: secret_type_url(),
                nonce: nonce(),
                ..Default::default()
            })
        };
        match answered.await {
            Ok(response) => {
                self.metrics.sds_request(FETCH, "ok");
                self.metrics.sds_response(FETCH);
                Ok(Response::new(response))
            }
            Err(status) => {
                self.metrics.sds_request(FETCH, "error");
                Err(status)
            }
        }
    }
}

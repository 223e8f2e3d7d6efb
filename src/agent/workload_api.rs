//! The SPIFFE Workload API service of the agent: X.509-SVIDs and bundles from the
//! [`SvidCache`], over a Unix socket.
//!
//! Connections are accepted under per-uid and total caps ([`limits`]); each connection's
//! caller is attested at its first request (the kernel's peer credentials, see
//! [`attest`](super::attest)) and the result rides along with the connection as tonic's
//! connect info ([`connection`]). Every call then checks, in this order: the
//! `workload.spiffe.io: true` header (`InvalidArgument`); that the caller is still the
//! attested process, with the same uid, gid, groups and executable (`PermissionDenied`
//! when it exited or changed, `Unavailable` when attestation itself failed); and that it is
//! entitled to at least one SVID (`PermissionDenied`, logged with the caller's selectors).
//!
//! A caller's foreign trust bundles are those of the trust domains the entries of its SVIDs
//! federate with (`federates_with`), among the ones the agent holds: they come in
//! `federated_bundles` of FetchX509SVID, in FetchX509Bundles and FetchJWTBundles (keyed by
//! `spiffe://<trust domain>` like the own bundle), and ValidateJWTSVID accepts JWT-SVIDs of
//! those domains.
//!
//! Streams send the full state at once and again after every change the cache reports
//! for that caller, each time after the same re-check. A stream ends with
//! `PermissionDenied` when the caller loses its last SVID, exits (its pidfd polls
//! readable) or changes (re-checked before every update and every [`RECHECK_INTERVAL`]),
//! and with `Unavailable` on agent shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keycard_workload_api::proto::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, SECURITY_HEADER,
    SECURITY_HEADER_VALUE, SpiffeWorkloadApi, SpiffeWorkloadApiServer, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svidRequest,
    X509svidResponse,
};
use keycard_workload_api::{JwtBundleSet, validate_jwt_svid};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::attest::{AttestError, Attested, UnixAttestorOptions};
use super::cache::{Snapshot, Subscription, SvidCache};
use super::jwt::JwtMinter;
use super::sds::{SdsConfig, SdsService, SecretDiscoveryServiceServer};
use crate::telemetry::AgentMetrics;
use crate::wire::oversized::OversizedLayer;
pub use connection::{CallerState, WorkloadConnection, WorkloadPeer};
use follow::ResponseStream;
use limits::{ConnectionLimiter, ConnectionLimits, RegisteredUids};

pub mod connection;
mod convert;
mod follow;
mod jwt;
pub mod limits;

/// How often an open stream re-checks its caller even when nothing is sent: a caller that
/// changed uid or executable is told `PermissionDenied` within this time.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(5);

/// How long a stopping Workload API waits for its connections to close. A client that
/// never answers the HTTP/2 shutdown (a stopped process, or one holding its connection
/// without reading) would otherwise keep the agent from exiting for as long as it likes.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves the Workload API on `listener` from `cache` until `shutdown` completes, with the
/// default [`ConnectionLimits`]; see [`serve_with_limits`].
pub async fn serve(
    listener: UnixListener,
    cache: Arc<SvidCache>,
    options: UnixAttestorOptions,
    metrics: Arc<AgentMetrics>,
    jwt: Option<JwtMinter>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let limits = ConnectionLimits::default();
    serve_with_limits(listener, cache, options, limits, metrics, jwt, shutdown).await
}

/// Serves the Workload API on `listener` from `cache` until `shutdown` completes, holding
/// at most `limits` connections; open streams are then ended with `Unavailable` so the
/// graceful stop does not wait on them, and connections still open [`SHUTDOWN_GRACE`]
/// after it are closed.
pub async fn serve_with_limits(
    listener: UnixListener,
    cache: Arc<SvidCache>,
    options: UnixAttestorOptions,
    limits: ConnectionLimits,
    metrics: Arc<AgentMetrics>,
    jwt: Option<JwtMinter>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let apis = Apis::default();
    serve_apis(listener, cache, options, limits, metrics, jwt, apis, shutdown).await
}

/// Which APIs the socket serves: the Workload API and Envoy's SDS (both by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Apis {
    /// Serve the SPIFFE Workload API.
    pub workload_api: bool,
    /// Serve SDS with these settings; `None` turns it off.
    pub sds: Option<SdsConfig>,
}

impl Default for Apis {
    fn default() -> Self {
        Self { workload_api: true, sds: Some(SdsConfig::default()) }
    }
}

/// [`serve_with_limits`] with a choice of `apis`; a call to an API turned off is answered
/// `Unimplemented`.
#[allow(clippy::too_many_arguments)]
pub async fn serve_apis(
    listener: UnixListener,
    cache: Arc<SvidCache>,
    options: UnixAttestorOptions,
    limits: ConnectionLimits,
    metrics: Arc<AgentMetrics>,
    jwt: Option<JwtMinter>,
    apis: Apis,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let limiter = ConnectionLimiter::new(limits, RegisteredUids::of(cache.clone()));
    let mut stopping = stop_rx.clone();
    let sds = apis.sds.map(|config| {
        let sds = SdsService::new(cache.clone(), config, metrics.clone(), stop_rx.clone());
        SecretDiscoveryServiceServer::new(sds)
    });
    let workload = apis
        .workload_api
        .then(|| SpiffeWorkloadApiServer::new(WorkloadApiService { cache, jwt, stop: stop_rx }));
    let incoming = connection::Incoming::new(listener, Arc::new(options), limiter, metrics);
    let signal = async move {
        shutdown.await;
        stop_tx.send_replace(true);
    };
    let serving = tonic::transport::Server::builder()
        .layer(OversizedLayer)
        .add_optional_service(workload)
        .add_optional_service(sds)
        .serve_with_incoming_shutdown(incoming, signal);
    let grace_over = async move {
        // An error means the signal is gone, so the server has already returned.
        let _ = stopping.wait_for(|stopped| *stopped).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        served = serving => served,
        () = grace_over => {
            tracing::warn!(
                grace = ?SHUTDOWN_GRACE,
                "Workload API connections still open after the shutdown grace; closing them"
            );
            Ok(())
        }
    }
}

/// The one place attestation errors become gRPC statuses: a caller that exited or is no
/// longer the attested process is entitled to nothing (`PermissionDenied`); any other
/// failure is the agent's (`Unavailable`, retried by clients).
pub(crate) fn attestation_status(e: &AttestError) -> Status {
    match e {
        AttestError::ProcessGone { .. } | AttestError::ProcessChanged { .. } => {
            Status::permission_denied(format!("no identity issued: {e}"))
        }
        _ => Status::unavailable("workload attestation failed"),
    }
}

/// The gRPC service; see the module documentation.
#[derive(Debug, Clone)]
pub struct WorkloadApiService {
    cache: Arc<SvidCache>,
    /// Where JWT-SVIDs come from; `None` when the agent has no server to ask.
    jwt: Option<JwtMinter>,
    stop: watch::Receiver<bool>,
}

fn check_header<T>(request: &Request<T>) -> Result<(), Status> {
    match request.metadata().get(SECURITY_HEADER) {
        Some(v) if v.as_bytes() == SECURITY_HEADER_VALUE.as_bytes() => Ok(()),
        _ => Err(Status::invalid_argument("security header missing from request")),
    }
}

/// The header check, then the caller's attestation (made at the connection's first
/// request), re-checked as unchanged.
async fn caller_of<T>(request: &Request<T>) -> Result<Arc<CallerState>, Status> {
    check_header(request)?;
    attested_caller(request).await
}

/// The caller's attestation (made at the connection's first request), re-checked as
/// unchanged, without the header check: for SDS, whose clients (Envoy) never send it.
pub(crate) async fn attested_caller<T>(request: &Request<T>) -> Result<Arc<CallerState>, Status> {
    let peer = request
        .extensions()
        .get::<WorkloadPeer>()
        .ok_or_else(|| Status::unavailable("workload attestation failed"))?;
    let state = peer.0.clone();
    state.attested().await?;
    Ok(state)
}

/// The attested caller of a state [`caller_of`] returned.
pub(crate) fn attested_of(state: &CallerState) -> Result<&Attested, Status> {
    state.get().ok_or_else(|| Status::unavailable("workload attestation failed"))
}

pub(crate) fn no_identity(attested: &Attested) -> Status {
    tracing::warn!(
        pid = attested.caller.pid(),
        uid = attested.caller.uid(),
        selectors = %attested.selectors,
        "no identity issued to the Workload API caller"
    );
    Status::permission_denied("no identity issued")
}

impl WorkloadApiService {
    /// Subscribes an attested caller that holds at least one SVID.
    async fn subscribe<T>(&self, request: &Request<T>) -> Result<SubscribedCaller, Status> {
        let state = caller_of(request).await?;
        let a = attested_of(&state)?;
        let rx = self.cache.subscribe(a.selectors.clone());
        if rx.borrow().svids.is_empty() {
            return Err(no_identity(a));
        }
        Ok(SubscribedCaller { state, rx })
    }

    /// Streams `render(snapshot)` now and after every change that alters what it shows
    /// ([`follow::follow`]). The first message is rendered here, on the check the
    /// handler just made, so it goes out without a hand-off.
    fn stream<T, F>(
        &self,
        caller: SubscribedCaller,
        same: fn(&Snapshot, &Snapshot) -> bool,
        render: F,
    ) -> Result<ResponseStream<T>, Status>
    where
        T: Send + 'static,
        F: Fn(&Snapshot) -> Result<T, Status> + Send + 'static,
    {
        let SubscribedCaller { state, rx: mut updates } = caller;
        let snapshot = updates.borrow_and_update().clone();
        let first = render(&snapshot)?;
        Ok(follow::follow(first, state, updates, snapshot, same, render, self.stop.clone()))
    }
}

/// A caller entitled to at least one SVID, and its subscription to the cache.
struct SubscribedCaller {
    state: Arc<CallerState>,
    rx: Subscription,
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApiService {
    type FetchX509SVIDStream = ResponseStream<X509svidResponse>;
    type FetchX509BundlesStream = ResponseStream<X509BundlesResponse>;
    type FetchJWTBundlesStream = ResponseStream<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let caller = self.subscribe(&request).await?;
        Ok(Response::new(self.stream(caller, Snapshot::serves_as, convert::x509_svid_response)?))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let caller = self.subscribe(&request).await?;
        Ok(Response::new(self.stream(caller, convert::same_bundle, |s| {
            Ok(X509BundlesResponse { bundles: convert::x509_bundles(s)?, crl: Vec::new() })
        })?))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        let state = caller_of(&request).await?;
        let a = attested_of(&state)?;
        let (reply, waited) =
            jwt::fetch(&self.cache, self.jwt.as_ref(), a, request.into_inner()).await?;
        if waited {
            // Minting waited on the server: the caller must still be the one attested.
            state.recheck().await?;
        }
        Ok(Response::new(reply))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let caller = self.subscribe(&request).await?;
        Ok(Response::new(self.stream(caller, convert::same_bundle, |s| {
            Ok(JwtBundlesResponse { bundles: convert::jwt_bundles(s)? })
        })?))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        let state = caller_of(&request).await?;
        let a = attested_of(&state)?;
        let req = request.get_ref();
        if req.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if req.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        // The own trust domain's JWT authorities, and those of the foreign trust domains
        // this caller federates with (a token of any other domain finds no bundle).
        let mut set = JwtBundleSet::new();
        if let Some(bundle) = self.cache.bundle() {
            set.insert(bundle.jwt.clone());
        }
        for bundle in self.cache.federated_for(&a.selectors).into_values() {
            set.insert(bundle.jwt.clone());
        }
        let svid = validate_jwt_svid(&req.svid, &set, &[req.audience.as_str()], SystemTime::now())
            .map_err(|e| Status::invalid_argument(format!("invalid JWT-SVID: {e}")))?;
        Ok(Response::new(ValidateJwtsvidResponse {
            spiffe_id: svid.spiffe_id.to_string(),
            claims: Some(convert::claims_struct(&svid.claims)),
        }))
    }
}

#[cfg(test)]
mod caller_tests;
#[cfg(test)]
mod federation_tests;
#[cfg(test)]
mod limit_tests;
#[cfg(test)]
mod shutdown_tests;
#[cfg(test)]
mod stream_tests;
#[cfg(test)]
pub(crate) mod tests;

//! The SPIFFE Workload API service of the agent: X.509-SVIDs and bundles from the
//! [`SvidCache`], over a Unix socket.
//!
//! Each connection is attested once, when it is accepted (the kernel's peer credentials,
//! see [`attest`]); the result rides along with the connection as tonic's connect info.
//! Every call then checks, in this order: the `workload.spiffe.io: true` header
//! (`InvalidArgument`), that attestation worked and the caller is still the same process
//! (`Unavailable`), and that the caller is entitled to at least one SVID
//! (`PermissionDenied`, logged with the caller's selectors).
//!
//! Streams send the full state at once and again after every change the cache reports
//! for that caller; when the caller loses its last SVID the stream ends with
//! `PermissionDenied`, and on agent shutdown with `Unavailable`.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use keycard_workload_api::proto::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, SECURITY_HEADER,
    SECURITY_HEADER_VALUE, SpiffeWorkloadApi, SpiffeWorkloadApiServer, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svidRequest,
    X509svidResponse,
};
use keycard_workload_api::{JwtBundleSet, SpiffeBundle, validate_jwt_svid};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status};

use super::attest::{Attested, UnixAttestorOptions, attest};
use super::cache::{Snapshot, SvidCache};
use super::h2fix::{AuthorityFix, fix_authority};
use super::jwt::JwtMinter;
use crate::telemetry::AgentMetrics;

mod convert;
mod jwt;

/// How a connection's caller was attested: kept for the life of the connection.
#[derive(Debug, Clone)]
pub struct WorkloadPeer {
    /// The attested caller, or why attestation failed.
    pub attested: Arc<Result<Attested, String>>,
}

/// An accepted Workload API connection: the `:authority` fix layer over the socket, plus
/// the caller's attestation as connect info.
pub struct WorkloadConnection {
    inner: AuthorityFix<UnixStream>,
    peer: WorkloadPeer,
    _open: OpenConnection,
}

/// Counts a connection in `workload_api_connections_open` for as long as it lives.
struct OpenConnection(Arc<AgentMetrics>);

impl OpenConnection {
    fn new(metrics: Arc<AgentMetrics>) -> Self {
        metrics.workload_connections.inc();
        metrics.workload_connections_open.inc();
        Self(metrics)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.workload_connections_open.dec();
    }
}

impl std::fmt::Debug for WorkloadConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadConnection").field("peer", &self.peer).finish_non_exhaustive()
    }
}

impl AsyncRead for WorkloadConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for WorkloadConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connected for WorkloadConnection {
    type ConnectInfo = WorkloadPeer;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

/// Serves the Workload API on `listener` from `cache` until `shutdown` completes; open
/// streams are then ended with `Unavailable` so the graceful stop does not wait on them.
pub async fn serve(
    listener: UnixListener,
    cache: Arc<SvidCache>,
    options: UnixAttestorOptions,
    metrics: Arc<AgentMetrics>,
    jwt: Option<JwtMinter>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let service = WorkloadApiService { cache, jwt, stop: stop_rx };
    let (conn_tx, conn_rx) = mpsc::channel::<Result<WorkloadConnection, io::Error>>(16);
    tokio::spawn(accept_loop(listener, Arc::new(options), metrics, conn_tx));
    let signal = async move {
        shutdown.await;
        stop_tx.send_replace(true);
    };
    tonic::transport::Server::builder()
        .add_service(SpiffeWorkloadApiServer::new(service))
        .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), signal)
        .await
}

/// Accepts connections and attests each on its own task; stops once the server is gone.
async fn accept_loop(
    listener: UnixListener,
    options: Arc<UnixAttestorOptions>,
    metrics: Arc<AgentMetrics>,
    conns: mpsc::Sender<Result<WorkloadConnection, io::Error>>,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a Workload API connection failed");
                    // Out of descriptors and the like: give the system a moment.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = conns.closed() => return,
        };
        let (options, conns, metrics) = (options.clone(), conns.clone(), metrics.clone());
        tokio::spawn(async move {
            let open = OpenConnection::new(metrics.clone());
            let started = Instant::now();
            let attested = attest(&stream, &options).await.map_err(|e| {
                tracing::warn!(error = %e, "workload attestation failed");
                e.to_string()
            });
            let result = if attested.is_ok() { "ok" } else { "error" };
            metrics.workload_attested(result, started.elapsed());
            let peer = WorkloadPeer { attested: Arc::new(attested) };
            let conn = WorkloadConnection { inner: fix_authority(stream), peer, _open: open };
            let _ = conns.send(Ok(conn)).await;
        });
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

type ResponseStream<T> = ReceiverStream<Result<T, Status>>;

fn check_header<T>(request: &Request<T>) -> Result<(), Status> {
    match request.metadata().get(SECURITY_HEADER) {
        Some(v) if v.as_bytes() == SECURITY_HEADER_VALUE.as_bytes() => Ok(()),
        _ => Err(Status::invalid_argument("security header missing from request")),
    }
}

/// The header check, then the caller's attestation, re-checked as still the same process.
async fn caller_of<T>(request: &Request<T>) -> Result<Arc<Result<Attested, String>>, Status> {
    check_header(request)?;
    let unavailable = || Status::unavailable("workload attestation failed");
    let peer = request.extensions().get::<WorkloadPeer>().ok_or_else(unavailable)?;
    let attested = peer.attested.clone();
    let check = attested.clone();
    let same = tokio::task::spawn_blocking(move || match &*check {
        Ok(a) => a.caller.ensure_same_process().map_err(|e| e.to_string()),
        Err(e) => Err(e.clone()),
    })
    .await;
    match same {
        Ok(Ok(())) => Ok(attested),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "refusing a Workload API call: caller not attested");
            Err(unavailable())
        }
        Err(_) => Err(unavailable()),
    }
}

fn no_identity(attested: &Attested) -> Status {
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
        let attested = caller_of(request).await?;
        let Ok(a) = &*attested else {
            return Err(Status::unavailable("workload attestation failed"));
        };
        let rx = self.cache.subscribe(a.selectors.clone());
        if rx.borrow().svids.is_empty() {
            return Err(no_identity(a));
        }
        Ok(SubscribedCaller { attested, rx })
    }

    /// Streams `render(snapshot)` now and after every change that alters it; ends after an
    /// error, when the caller loses its last SVID, or on shutdown.
    fn stream<T, F>(&self, caller: SubscribedCaller, render: F) -> ResponseStream<T>
    where
        T: PartialEq + Clone + Send + 'static,
        F: Fn(&Snapshot) -> Result<T, Status> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(4);
        let mut stop = self.stop.clone();
        let SubscribedCaller { attested, rx: mut updates } = caller;
        tokio::spawn(async move {
            let mut last: Option<T> = None;
            loop {
                let next = {
                    let snapshot = updates.borrow_and_update();
                    if snapshot.svids.is_empty() {
                        Err(match &*attested {
                            Ok(a) => no_identity(a),
                            Err(_) => Status::unavailable("workload attestation failed"),
                        })
                    } else {
                        render(&snapshot)
                    }
                };
                match next {
                    Ok(msg) if last.as_ref() == Some(&msg) => {}
                    Ok(msg) => {
                        if tx.send(Ok(msg.clone())).await.is_err() {
                            return;
                        }
                        last = Some(msg);
                    }
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
                tokio::select! {
                    changed = updates.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                    _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => {
                        let _ = tx.send(Err(Status::unavailable("the agent is shutting down"))).await;
                        return;
                    }
                }
            }
        });
        ReceiverStream::new(rx)
    }
}

/// A caller entitled to at least one SVID, and its subscription to the cache.
struct SubscribedCaller {
    attested: Arc<Result<Attested, String>>,
    rx: watch::Receiver<Snapshot>,
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
        Ok(Response::new(self.stream(caller, convert::x509_svid_response)))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let caller = self.subscribe(&request).await?;
        Ok(Response::new(self.stream(caller, |s| {
            let bundle = convert::bundle_of(s)?;
            let mut bundles = HashMap::new();
            bundles.insert(convert::td_key(bundle), bundle.x509.to_der());
            Ok(X509BundlesResponse { bundles, crl: Vec::new() })
        })))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        let attested = caller_of(&request).await?;
        let Ok(a) = &*attested else {
            return Err(Status::unavailable("workload attestation failed"));
        };
        let reply = jwt::fetch(&self.cache, self.jwt.as_ref(), a, request.into_inner()).await?;
        Ok(Response::new(reply))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let caller = self.subscribe(&request).await?;
        Ok(Response::new(self.stream(caller, |s| {
            let bundle = convert::bundle_of(s)?;
            let json = SpiffeBundle::from_jwt_bundle(&bundle.jwt).to_json().map_err(|e| {
                tracing::error!(error = %e, "cannot write the JWT bundle");
                Status::internal("cannot write the JWT bundle")
            })?;
            let mut bundles = HashMap::new();
            bundles.insert(convert::td_key(bundle), json.into_bytes());
            Ok(JwtBundlesResponse { bundles })
        })))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        caller_of(&request).await?;
        let req = request.get_ref();
        if req.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if req.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let mut set = JwtBundleSet::new();
        if let Some(bundle) = self.cache.bundle() {
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
mod tests;

//! The bundle endpoint: HTTPS `GET /` answers with the trust domain's SPIFFE bundle
//! (SPIFFE Federation §5), so that other trust domains can federate with this one.
//!
//! - `GET /` (or `HEAD /`): `200`, `Content-Type: application/json`, the bundle as the CA
//!   publishes it now (this server's authorities and its HA peers', `spiffe_sequence` and
//!   `spiffe_refresh_hint` set). The document is rebuilt only when the bundle changes.
//! - another path: `404`; another method on `/`: `405` with `Allow: GET, HEAD`.
//!
//! No client authentication of any kind (the standard forbids requiring it). Each
//! connection gets [`HANDSHAKE_TIMEOUT`] to finish TLS and lives at most
//! [`CONNECTION_LIFETIME`]; at most [`MAX_CONNECTIONS`] are served at once (more wait in
//! the kernel's accept queue). Every answer is counted in
//! `keycard_server_bundle_endpoint_requests_total{code}`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use keycard_workload_api::SpiffeBundle;
use rustls::ServerConfig;
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::config::{BundleEndpointConfig, ServingProfile};
use super::endpoint_tls;
use super::error::EndpointError;
use crate::ca::CaManager;
use crate::telemetry::ServerMetrics;

/// How long a client may take to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connection may stay open (a fetch needs one request).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// How many connections are served at once.
pub const MAX_CONNECTIONS: usize = 256;
/// The path the bundle is served at.
pub const BUNDLE_PATH: &str = "/";

/// What the endpoint serves: the CA's bundle, and the JSON of the last one served.
pub struct BundleEndpoint {
    ca: Arc<CaManager>,
    metrics: Arc<ServerMetrics>,
    /// The last bundle and its document: most requests find the bundle unchanged and are
    /// answered without encoding it again. Keyed by the whole bundle, not its sequence,
    /// since an authority that expires leaves the bundle without a new sequence number.
    last: Mutex<Option<(SpiffeBundle, Bytes)>>,
}

impl std::fmt::Debug for BundleEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleEndpoint").finish_non_exhaustive()
    }
}

impl BundleEndpoint {
    /// An endpoint serving `ca`'s bundle and counting requests in `metrics`.
    pub fn new(ca: Arc<CaManager>, metrics: Arc<ServerMetrics>) -> Self {
        Self { ca, metrics, last: Mutex::new(None) }
    }

    /// The bundle document as served now.
    pub fn document(&self) -> Result<Bytes, String> {
        let bundle = self.ca.bundle().map_err(|e| e.to_string())?;
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((served, json)) = last.as_ref()
            && *served == bundle
        {
            return Ok(json.clone());
        }
        let json = Bytes::from(bundle.to_json().map_err(|e| e.to_string())?);
        *last = Some((bundle, json.clone()));
        Ok(json)
    }

    /// The answer to one request.
    pub fn respond(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        let response = if path != BUNDLE_PATH {
            text(StatusCode::NOT_FOUND, "not found; the bundle is served at /\n")
        } else if method != Method::GET && method != Method::HEAD {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
            r.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            r
        } else {
            match self.document() {
                Ok(json) => {
                    let mut r = Response::new(Full::new(json));
                    let headers = r.headers_mut();
                    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    r
                }
                Err(e) => {
                    tracing::error!(error = %e, "the bundle endpoint cannot build the bundle");
                    text(StatusCode::INTERNAL_SERVER_ERROR, "the bundle is unavailable\n")
                }
            }
        };
        self.metrics.bundle_endpoint_request(response.status().as_u16());
        response
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// The endpoint before it serves: its port bound and its `https_web` certificate read, so
/// that a taken port or a bad file stops the server's start before anything is written.
pub struct PreparedEndpoint {
    listener: TcpListener,
    profile: &'static str,
    /// The `https_web` certificate and key; `None` for `https_spiffe`.
    web: Option<CertifiedKey>,
}

impl std::fmt::Debug for PreparedEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedEndpoint").field("profile", &self.profile).finish_non_exhaustive()
    }
}

impl PreparedEndpoint {
    /// Binds `config.address` and reads the `https_web` files.
    pub async fn prepare(config: &BundleEndpointConfig) -> Result<Self, EndpointError> {
        let listener = bind(config.address).await?;
        let web = match &config.profile {
            ServingProfile::HttpsSpiffe => None,
            ServingProfile::HttpsWeb { cert_file, key_file } => {
                Some(endpoint_tls::load_web_identity(cert_file, key_file)?)
            }
        };
        Ok(Self { listener, profile: config.profile.name(), web })
    }

    /// Logs the address and returns the endpoint serving `ca`'s bundle until `shutdown`;
    /// `https_spiffe` presents `svid`, the server's own SVID.
    pub fn start(
        self,
        svid: Arc<dyn ResolvesServerCert>,
        ca: Arc<CaManager>,
        metrics: Arc<ServerMetrics>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<impl Future<Output = ()> + Send, EndpointError> {
        let resolver = match self.web {
            Some(key) => endpoint_tls::web_resolver(key),
            None => svid,
        };
        let tls = endpoint_tls::with_resolver(resolver)?;
        let address = self.listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(%address, profile = self.profile, url = %format!("https://{address}/"),
            "federation bundle endpoint listening");
        let endpoint = Arc::new(BundleEndpoint::new(ca, metrics));
        Ok(serve(self.listener, tls, endpoint, shutdown))
    }
}

/// Binds the endpoint's address (port 0 picks a free port; ask the listener which).
pub async fn bind(address: std::net::SocketAddr) -> Result<TcpListener, EndpointError> {
    TcpListener::bind(address).await.map_err(|source| EndpointError::Bind { address, source })
}

/// Serves `endpoint` over TLS (`tls`, see [`super::endpoint_tls`]) on `listener` until
/// `shutdown` completes, then lets open connections finish their current request.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    endpoint: Arc<BundleEndpoint>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let acceptor = TlsAcceptor::from(tls);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => tokio::select! {
                    () = &mut shutdown => break,
                    accepted = listener.accept() => accepted.map(|a| (a, permit)),
                },
                Err(_) => break,
            },
        };
        let ((tcp, peer), permit) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "bundle endpoint cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let (acceptor, endpoint, mut stop) = (acceptor.clone(), endpoint.clone(), stop_rx.clone());
        connections.spawn(async move {
            let _permit = permit;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "bundle endpoint TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "bundle endpoint TLS handshake timed out");
                    return;
                }
            };
            let service = service_fn(move |req: Request<Incoming>| {
                let response = endpoint.respond(req.method(), req.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let lifetime = tokio::time::sleep(CONNECTION_LIFETIME);
            tokio::pin!(lifetime);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
                () = &mut lifetime => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "bundle endpoint connection ended with an error");
            }
        });
    }
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
}

//! `/live`, `/ready` and `/metrics` over plain HTTP/1.1 (hyper), for either daemon.
//!
//! - `/live`: `200` whenever the process can answer at all.
//! - `/ready`: `200` or `503` from a readiness callback, with its reason in the body (the
//!   server is ready only with an active authority and a reachable datastore).
//! - `/metrics`: the Prometheus registry rendered by a callback, in the OpenMetrics text
//!   format that `prometheus_client`'s encoder writes ([`METRICS_CONTENT_TYPE`]).
//! - anything else: `404`; a method other than GET or HEAD: `405`.
//!
//! The callbacks run on tokio's blocking pool, so a readiness check may touch the
//! datastore briefly. The listener is the caller's (bind it with [`bind`] to get an error
//! that names the address); [`serve`] stops accepting when the shutdown future completes,
//! lets in-flight requests finish, and closes idle keep-alive connections.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::shutdown::Shutdown;

/// Content type of `/metrics`: what `prometheus_client::encoding::text::encode` emits.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of `/live` and `/ready`.
const TEXT: &str = "text/plain; charset=utf-8";
/// How long a client may take to send its request headers (slow clients hold a task).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer of a readiness check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    ready: bool,
    reason: String,
}

impl Readiness {
    /// Ready to serve.
    pub fn ready() -> Self {
        Self { ready: true, reason: "ready".into() }
    }

    /// Ready to serve, with what the body should say (it starts with "ready").
    pub fn ready_because(reason: impl Into<String>) -> Self {
        Self { ready: true, reason: reason.into() }
    }

    /// Not ready, and why (for example "no active X.509 authority").
    pub fn not_ready(reason: impl Into<String>) -> Self {
        Self { ready: false, reason: reason.into() }
    }

    /// Whether the daemon is ready.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Why (or "ready").
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// Tells whether the daemon is ready; called on every `/ready` request.
pub type ReadinessFn = Arc<dyn Fn() -> Readiness + Send + Sync>;
/// Renders the metrics registry as OpenMetrics text; called on every `/metrics` request.
pub type RenderFn = Arc<dyn Fn() -> String + Send + Sync>;

/// What the endpoints report, provided by the daemon.
#[derive(Clone)]
pub struct HealthEndpoints {
    /// Answers `/ready`.
    pub readiness: ReadinessFn,
    /// Answers `/metrics`.
    pub metrics: RenderFn,
}

impl std::fmt::Debug for HealthEndpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthEndpoints").finish_non_exhaustive()
    }
}

/// Why the health endpoints could not start.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The address could not be bound (in use, not local, no permission).
    #[error("cannot listen for health and metrics on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Binds the health address (port 0 picks a free port; ask the listener for it).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, HealthError> {
    TcpListener::bind(addr).await.map_err(|source| HealthError::Bind { addr, source })
}

/// Serves the endpoints on `listener` until `shutdown` completes, then waits for open
/// connections to finish their current request.
pub async fn serve(
    listener: TcpListener,
    endpoints: HealthEndpoints,
    shutdown: impl Future<Output = ()> + Send,
) {
    let stop = Shutdown::new();
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "health endpoint cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Reap finished connection tasks so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
        let endpoints = endpoints.clone();
        let stopping = stop.wait();
        connections.spawn(async move {
            let service = service_fn(move |req| respond(req, endpoints.clone()));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = stopping => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "health connection ended with an error");
            }
        });
    }
    stop.trigger();
    while connections.join_next().await.is_some() {}
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn respond(
    req: Request<Incoming>,
    endpoints: HealthEndpoints,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let known = matches!(req.uri().path(), "/live" | "/ready" | "/metrics");
    if !known {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found; try /live, /ready or /metrics\n".into(),
        ));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "use GET\n".into());
        r.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    let response = match req.uri().path() {
        "/ready" => {
            let check = endpoints.readiness.clone();
            match tokio::task::spawn_blocking(move || check()).await {
                Ok(r) if r.is_ready() => reply(StatusCode::OK, TEXT, format!("{}\n", r.reason())),
                Ok(r) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    format!("not ready: {}\n", r.reason()),
                ),
                Err(_) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    "not ready: readiness check failed\n".into(),
                ),
            }
        }
        "/metrics" => {
            let render = endpoints.metrics.clone();
            match tokio::task::spawn_blocking(move || render()).await {
                Ok(text) => reply(StatusCode::OK, METRICS_CONTENT_TYPE, text),
                Err(_) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    TEXT,
                    "metrics rendering failed\n".into(),
                ),
            }
        }
        _ => reply(StatusCode::OK, TEXT, "live\n".into()),
    };
    Ok(response)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::telemetry::ServerMetrics;

    struct Running {
        addr: SocketAddr,
        ready: Arc<AtomicBool>,
        metrics: Arc<ServerMetrics>,
        shutdown: Shutdown,
        task: tokio::task::JoinHandle<()>,
    }

    async fn start() -> Running {
        start_on("127.0.0.1:0").await
    }

    /// The endpoints on `addr`.
    async fn start_on(addr: &str) -> Running {
        let listener = bind(addr.parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ready = Arc::new(AtomicBool::new(false));
        let metrics = Arc::new(ServerMetrics::new());
        let flag = ready.clone();
        let m = metrics.clone();
        let endpoints = HealthEndpoints {
            readiness: Arc::new(move || {
                if flag.load(Ordering::SeqCst) {
                    Readiness::ready()
                } else {
                    Readiness::not_ready("no active X.509 authority")
                }
            }),
            metrics: Arc::new(move || m.render()),
        };
        let shutdown = Shutdown::new();
        let task = tokio::spawn(serve(listener, endpoints, shutdown.wait()));
        Running { addr, ready, metrics, shutdown, task }
    }

    /// One HTTP/1.1 request on its own connection; returns (status, headers, body).
    async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, head.to_ascii_lowercase(), body.to_string())
    }

    #[tokio::test]
    async fn live_ready_metrics_and_not_found() {
        let r = start().await;
        let (status, _, body) = request(r.addr, "GET", "/live").await;
        assert_eq!((status, body.as_str()), (200, "live\n"));

        let (status, _, body) = request(r.addr, "GET", "/ready").await;
        assert_eq!(status, 503);
        assert_eq!(body, "not ready: no active X.509 authority\n");
        r.ready.store(true, Ordering::SeqCst);
        let (status, _, body) = request(r.addr, "GET", "/ready").await;
        assert_eq!((status, body.as_str()), (200, "ready\n"));
        r.ready.store(false, Ordering::SeqCst);
        assert_eq!(request(r.addr, "GET", "/ready").await.0, 503);

        r.metrics.entries.set(7);
        let (status, head, body) = request(r.addr, "GET", "/metrics").await;
        assert_eq!(status, 200);
        assert!(head.contains(&format!("content-type: {METRICS_CONTENT_TYPE}")), "{head}");
        assert!(body.contains("keycard_server_entries 7"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");

        assert_eq!(request(r.addr, "GET", "/").await.0, 404);
        assert_eq!(request(r.addr, "GET", "/metricsx").await.0, 404);
        let (status, head, _) = request(r.addr, "POST", "/live").await;
        assert_eq!(status, 405);
        assert!(head.contains("allow: get, head"));
        let (status, _, body) = request(r.addr, "HEAD", "/live").await;
        assert_eq!((status, body.as_str()), (200, ""));

        r.shutdown.trigger();
        r.task.await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_closes_idle_keep_alive_connections_and_stops_accepting() {
        // On 127.0.0.2, where no other test listens: once closed, the port cannot have been
        // taken by another test's listener (all on 127.0.0.1) before the check below.
        let r = start_on("127.0.0.2:0").await;
        let mut s = TcpStream::connect(r.addr).await.unwrap();
        s.write_all(b"GET /live HTTP/1.1\r\nHost: test\r\n\r\n").await.unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 512];
        while !raw.ends_with(b"live\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed early");
            raw.extend_from_slice(&buf[..n]);
        }
        // The connection is idle but open; serve must still return.
        r.shutdown.trigger();
        r.task.await.unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), 0, "server closes the idle connection");
        assert!(TcpStream::connect(r.addr).await.is_err(), "listener is closed");
    }

    #[tokio::test]
    async fn bind_error_names_the_address() {
        let taken = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = taken.local_addr().unwrap();
        let e = bind(addr).await.unwrap_err();
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
    }
}

//! Accepted Workload API connections: the stream of them tonic serves ([`Incoming`]), with
//! its per-uid and total caps, the first-request deadline, and each connection's caller,
//! attested at its first request and re-checked on every later one.
//!
//! At accept only system calls run: `SO_PEERCRED` (the uid counted against the caps) and
//! the caller's pidfd ([`Peer::of`]). The `/proc` reads of attestation run once, when the
//! first request arrives ([`CallerState::attested`]), so an idle connection costs no more
//! than its descriptors, and a caller that exits before then is refused.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::OnceCell;
use tokio::time::Sleep;
use tokio_stream::Stream;
use tonic::Status;
use tonic::transport::server::Connected;

use super::limits::{ConnectionLimiter, ConnectionPermit};
use crate::agent::attest::{
    AttestError, Attested, Peer, UnixAttestorOptions, attest_peer, attestation_waits,
};
use crate::agent::h2fix::{AuthorityFix, fix_authority};
use crate::telemetry::AgentMetrics;

/// The caller of one connection: its peer credentials until the first request, then its
/// attestation, kept for the life of the connection.
#[derive(Debug)]
pub struct CallerState {
    /// What accept read, taken by the first request.
    peer: std::sync::Mutex<Option<Result<Peer, AttestError>>>,
    attested: OnceCell<Result<Attested, AttestError>>,
    /// Set once a request got its caller attested: the connection is no longer idle.
    requested: AtomicBool,
    options: Arc<UnixAttestorOptions>,
    metrics: Arc<AgentMetrics>,
}

impl CallerState {
    /// The attested caller, attesting it first if this is the connection's first request
    /// (which ends with the same check); else re-checked as unchanged
    /// ([`Attested::ensure_unchanged`]).
    pub async fn attested(self: &Arc<Self>) -> Result<&Attested, Status> {
        // Attestation that finishes during this request ends with the same check as
        // `recheck` (`attest_peer` compares the fingerprint after collecting): it is not
        // made twice in a row.
        let fresh = self.attested.get().is_none();
        if fresh && attestation_waits(&self.options) {
            // In a task of its own: a request cancelled during attestation must not lose
            // the peer (it is taken once) for the requests that follow.
            let state = self.clone();
            let attesting = tokio::spawn(async move {
                state.attested.get_or_init(|| state.attest_once()).await;
            });
            if let Err(e) = attesting.await {
                tracing::error!(error = %e, "workload attestation task failed");
            }
        } else if fresh {
            // Attestation completes in its first poll here: it cannot be cancelled halfway.
            self.attested.get_or_init(|| self.attest_once()).await;
        }
        let Some(result) = self.attested.get() else {
            return Err(Status::unavailable("workload attestation failed"));
        };
        let attested = result.as_ref().map_err(super::attestation_status)?;
        // Attested: no longer idle. A connection whose caller could not be attested is
        // still closed at the first-request deadline.
        self.requested.store(true, Ordering::Relaxed);
        if !fresh {
            self.recheck().await?;
        }
        Ok(attested)
    }

    /// Attests the peer accept read (once: the peer is taken).
    async fn attest_once(&self) -> Result<Attested, AttestError> {
        let peer = self.peer.lock().unwrap_or_else(|p| p.into_inner()).take();
        let started = Instant::now();
        let result = match peer {
            Some(Ok(peer)) => attest_peer(peer, &self.options).await,
            Some(Err(e)) => Err(e),
            None => Err(AttestError::ProcessGone { pid: 0 }),
        };
        if let Err(e) = &result {
            tracing::warn!(error = %e, "workload attestation failed");
        }
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics.workload_attested(outcome, started.elapsed());
        result
    }

    /// Checks again that the attested caller is unchanged. Runs on the calling task: it
    /// is four small reads of `/proc` files the kernel answers from memory (`stat`,
    /// `status`, the `exe` link's inode) and a pidfd poll, cheaper than a hand-off to the
    /// blocking pool and back, which cost more than the reads themselves.
    pub async fn recheck(self: &Arc<Self>) -> Result<(), Status> {
        let checked = match self.attested.get() {
            Some(Ok(a)) => a.ensure_unchanged(),
            Some(Err(_)) | None => Err(AttestError::ProcessGone { pid: 0 }),
        };
        checked.map_err(|e| {
            tracing::warn!(error = %e, "refusing the Workload API caller: no longer the attested process");
            super::attestation_status(&e)
        })
    }

    /// The attested caller, once [`CallerState::attested`] succeeded.
    pub fn get(&self) -> Option<&Attested> {
        self.attested.get().and_then(|r| r.as_ref().ok())
    }
}

/// tonic's connect info of a Workload API connection: its caller.
#[derive(Debug, Clone)]
pub struct WorkloadPeer(pub Arc<CallerState>);

/// An accepted Workload API connection: the `:authority` fix layer over the socket, its
/// caller, its place under the caps, and the deadline for its first request.
pub struct WorkloadConnection {
    inner: AuthorityFix<UnixStream>,
    peer: WorkloadPeer,
    /// Runs out when the connection has made no request in time; dropped once it has.
    first_request: Option<Pin<Box<Sleep>>>,
    _permit: ConnectionPermit,
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
        if let Some(deadline) = &mut self.first_request
            && deadline.as_mut().poll(cx).is_ready()
        {
            if !self.peer.0.requested.load(Ordering::Relaxed) {
                self.peer.0.metrics.workload_refused("first_request_timeout");
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no Workload API request in time",
                )));
            }
            self.first_request = None;
        }
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

/// The Workload API's accepted connections, as the stream tonic serves: each is counted
/// against its uid's and the total cap (over either: closed at once) and handed over with
/// its caller. Accepting happens as tonic polls for the next connection, in its own task:
/// no task or channel between the listener and the server.
pub(super) struct Incoming {
    listener: UnixListener,
    options: Arc<UnixAttestorOptions>,
    limiter: Arc<ConnectionLimiter>,
    metrics: Arc<AgentMetrics>,
    /// After a failed accept (out of descriptors and the like): the pause before the next.
    pause: Option<Pin<Box<Sleep>>>,
}

impl Incoming {
    /// Connections accepted on `listener` under `limiter`'s caps.
    pub(super) fn new(
        listener: UnixListener,
        options: Arc<UnixAttestorOptions>,
        limiter: Arc<ConnectionLimiter>,
        metrics: Arc<AgentMetrics>,
    ) -> Self {
        Self { listener, options, limiter, metrics, pause: None }
    }

    /// The connection to serve for an accepted `stream`, or `None` when it is closed at
    /// once (no peer credentials, over a cap).
    fn admit(&self, stream: UnixStream) -> Option<WorkloadConnection> {
        let metrics = &self.metrics;
        let uid = match stream.peer_cred() {
            Ok(cred) => cred.uid(),
            Err(e) => {
                tracing::warn!(error = %e, "no peer credentials on a Workload API connection");
                metrics.workload_refused("no_peer_credentials");
                return None;
            }
        };
        let permit = match self.limiter.try_acquire(uid) {
            Ok(permit) => permit,
            Err(refused) => {
                tracing::debug!(uid, reason = refused.reason(), "Workload API connection refused");
                metrics.workload_refused(refused.reason());
                return None;
            }
        };
        let state = CallerState {
            peer: std::sync::Mutex::new(Some(Peer::of(&stream))),
            attested: OnceCell::new(),
            requested: AtomicBool::new(false),
            options: self.options.clone(),
            metrics: metrics.clone(),
        };
        let timeout = self.limiter.limits().first_request_timeout;
        Some(WorkloadConnection {
            inner: fix_authority(stream),
            peer: WorkloadPeer(Arc::new(state)),
            first_request: Some(Box::pin(tokio::time::sleep(timeout))),
            _permit: permit,
            _open: OpenConnection::new(metrics.clone()),
        })
    }
}

impl Stream for Incoming {
    type Item = Result<WorkloadConnection, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(pause) = &mut self.pause {
                ready!(pause.as_mut().poll(cx));
                self.pause = None;
            }
            match ready!(self.listener.poll_accept(cx)) {
                Ok((stream, _)) => {
                    if let Some(conn) = self.admit(stream) {
                        return Poll::Ready(Some(Ok(conn)));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a Workload API connection failed");
                    // Out of descriptors and the like: give the system a moment.
                    let pause = tokio::time::sleep(std::time::Duration::from_millis(50));
                    self.pause = Some(Box::pin(pause));
                }
            }
        }
    }
}

//! `X509Source`: a workload's current X.509-SVIDs and bundles, kept up to date from the
//! Workload API stream.
//!
//! [`X509Source::new`] waits for the first good update (retrying, with backoff, while the
//! agent is unavailable or has no identity for the caller yet; giving up at once on
//! `InvalidArgument`). A background task then follows FetchX509SVID, reconnecting with
//! backoff when the stream breaks. Every update is checked ([`parse_x509_response`]:
//! SVID rules, key match, chain to the bundle, not expired) before it replaces the
//! current one: a bad update is logged and dropped, so good credentials are never
//! replaced by bad ones. A `PermissionDenied` that ends the stream (the caller lost its
//! last entry) empties the SVID list, as the standard requires: handshakes then fail
//! instead of presenting a revoked identity. The rustls configs of [`crate::tls`] read the source at every
//! handshake, so a rotation takes effect without restarting anything.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::{
    ClientError, Retry, WorkloadApiClient, X509Context, parse_x509_response, resolve_endpoint,
    retry_decision,
};
use crate::{SpiffeId, X509BundleSet, X509Svid};

/// First delay after a failure.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest delay between attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// See the module documentation. Dropping it stops the background task.
#[derive(Debug)]
pub struct X509Source {
    current: watch::Receiver<Arc<X509Context>>,
    task: JoinHandle<()>,
}

/// Doubles `delay` up to [`BACKOFF_MAX`].
fn next_delay(delay: Duration) -> Duration {
    (delay * 2).min(BACKOFF_MAX)
}

/// Opens the stream and returns it with its first good context.
async fn first_context(
    path: &std::path::Path,
) -> Result<(X509Context, tonic::Streaming<crate::proto::X509svidResponse>), ClientError> {
    let mut client = WorkloadApiClient::connect_path(path).await?;
    let mut stream = client.watch_x509().await?;
    loop {
        let msg = stream.message().await?.ok_or(ClientError::StreamEnded)?;
        match parse_x509_response(&msg) {
            Ok(context) => return Ok((context, stream)),
            // A bad first message: wait for the next one on the same stream.
            Err(e) => note_ignored(&e),
        }
    }
}

/// The crate does not depend on a logging framework: problems go to stderr only when
/// `KEYCARD_WORKLOAD_API_DEBUG` is set.
fn note_ignored(e: &ClientError) {
    if std::env::var_os("KEYCARD_WORKLOAD_API_DEBUG").is_some() {
        eprintln!("keycard-workload-api: ignoring an update: {e}");
    }
}

impl X509Source {
    /// Connects to `address` (or `SPIFFE_ENDPOINT_SOCKET`) and waits for the first good
    /// X.509 context. Wrap it in a timeout to bound the wait.
    pub async fn new(address: Option<&str>) -> Result<Self, ClientError> {
        let path = resolve_endpoint(address)?;
        let mut delay = BACKOFF_MIN;
        let (context, stream) = loop {
            match first_context(&path).await {
                Ok(found) => break found,
                Err(e) => {
                    if e.code().is_some_and(|c| retry_decision(c) == Retry::Never) {
                        return Err(e);
                    }
                    note_ignored(&e);
                    tokio::time::sleep(delay).await;
                    delay = next_delay(delay);
                }
            }
        };
        let (tx, current) = watch::channel(Arc::new(context));
        let task = tokio::spawn(follow(path, stream, tx));
        Ok(Self { current, task })
    }

    /// The current context (all SVIDs and bundles).
    pub fn context(&self) -> Arc<X509Context> {
        self.current.borrow().clone()
    }

    /// The bundles to verify peers with.
    pub fn bundles(&self) -> X509BundleSet {
        self.context().bundles.clone()
    }

    /// A receiver that changes on every accepted update.
    pub fn updated(&self) -> watch::Receiver<Arc<X509Context>> {
        self.current.clone()
    }

    /// Stops following the agent; the last context stays readable.
    pub fn close(&self) {
        self.task.abort();
    }
}

impl Drop for X509Source {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Picks an SVID from a context: the one with `id`, or the first.
pub fn pick<'a>(context: &'a X509Context, id: Option<&SpiffeId>) -> Option<&'a X509Svid> {
    match id {
        None => context.svids.first(),
        Some(id) => context.svids.iter().find(|s| s.spiffe_id() == id),
    }
}

/// Follows the stream, reconnecting with backoff, publishing each good update.
async fn follow(
    path: std::path::PathBuf,
    mut stream: tonic::Streaming<crate::proto::X509svidResponse>,
    tx: watch::Sender<Arc<X509Context>>,
) {
    let mut delay = BACKOFF_MIN;
    loop {
        loop {
            match stream.message().await {
                Ok(Some(msg)) => match parse_x509_response(&msg) {
                    Ok(context) => {
                        delay = BACKOFF_MIN;
                        if tx.send(Arc::new(context)).is_err() {
                            return;
                        }
                    }
                    Err(e) => note_ignored(&e),
                },
                Ok(None) => break,
                Err(status) => {
                    // PermissionDenied mid-stream: the caller is no longer entitled to
                    // its SVIDs and must stop using them (the Workload API standard).
                    // The bundles stay, so peers can still be verified.
                    if status.code() == tonic::Code::PermissionDenied {
                        let bundles = tx.borrow().bundles.clone();
                        let revoked = X509Context { svids: Vec::new(), bundles };
                        if tx.send(Arc::new(revoked)).is_err() {
                            return;
                        }
                    }
                    note_ignored(&ClientError::from(status));
                    break;
                }
            }
        }
        // Reconnect: keep the last good context meanwhile.
        loop {
            tokio::time::sleep(delay).await;
            delay = next_delay(delay);
            match first_context(&path).await {
                Ok((context, next)) => {
                    if tx.send(Arc::new(context)).is_err() {
                        return;
                    }
                    stream = next;
                    break;
                }
                Err(e) => note_ignored(&e),
            }
        }
    }
}

//! `JwtSource`: JWT-SVIDs on demand and the JWT bundles, kept up to date, to validate
//! tokens locally.
//!
//! [`JwtSource::new`] waits for the first JWT bundles (retrying with backoff while the
//! agent is unavailable or has no identity for the caller; giving up at once on
//! `InvalidArgument`), then follows FetchJWTBundles on a task, reconnecting with backoff
//! and keeping the last good bundles meanwhile. [`JwtSource::fetch_jwt_svid`] retries the
//! same way, a bounded number of times. [`JwtSource::validate`] checks a token against
//! the current bundles without asking the agent.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::{
    ClientError, JwtSvidToken, Retry, WorkloadApiClient, parse_jwt_bundles, resolve_endpoint,
    retry_decision,
};
use crate::{JwtBundleSet, JwtSvid, JwtSvidError, SpiffeId, validate_jwt_svid};

/// First delay after a failure.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest delay between attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Attempts [`JwtSource::fetch_jwt_svid`] makes before it gives up.
const FETCH_ATTEMPTS: usize = 5;

/// See the module documentation. Dropping it stops the background task.
#[derive(Debug)]
pub struct JwtSource {
    path: PathBuf,
    bundles: watch::Receiver<Arc<JwtBundleSet>>,
    task: JoinHandle<()>,
}

fn retryable(e: &ClientError) -> bool {
    e.code().is_none_or(|c| retry_decision(c) == Retry::Backoff)
}

async fn first_bundles(
    path: &std::path::Path,
) -> Result<(JwtBundleSet, tonic::Streaming<crate::proto::JwtBundlesResponse>), ClientError> {
    let mut client = WorkloadApiClient::connect_path(path).await?;
    let mut stream = client.watch_jwt_bundles().await?;
    let msg = stream.message().await?.ok_or(ClientError::StreamEnded)?;
    Ok((parse_jwt_bundles(&msg)?, stream))
}

impl JwtSource {
    /// Connects to `address` (or `SPIFFE_ENDPOINT_SOCKET`) and waits for the JWT bundles.
    /// Wrap it in a timeout to bound the wait.
    pub async fn new(address: Option<&str>) -> Result<Self, ClientError> {
        let path = resolve_endpoint(address)?;
        let mut delay = BACKOFF_MIN;
        let (set, stream) = loop {
            match first_bundles(&path).await {
                Ok(found) => break found,
                Err(e) if !retryable(&e) => return Err(e),
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(BACKOFF_MAX);
                }
            }
        };
        let (tx, bundles) = watch::channel(Arc::new(set));
        let task = tokio::spawn(follow(path.clone(), stream, tx));
        Ok(Self { path, bundles, task })
    }

    /// A JWT-SVID for `audience` (the default identity, or `spiffe_id`'s).
    pub async fn fetch_jwt_svid(
        &self,
        audience: &[String],
        spiffe_id: Option<&SpiffeId>,
    ) -> Result<JwtSvidToken, ClientError> {
        let mut delay = BACKOFF_MIN;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = async {
                let mut client = WorkloadApiClient::connect_path(&self.path).await?;
                let mut svids = client.fetch_jwt_svids(audience, spiffe_id).await?;
                Ok(svids.remove(0))
            }
            .await;
            match result {
                Ok(token) => return Ok(token),
                Err(e) if attempt >= FETCH_ATTEMPTS || !retryable(&e) => return Err(e),
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// The current JWT bundles.
    pub fn bundles(&self) -> Arc<JwtBundleSet> {
        self.bundles.borrow().clone()
    }

    /// Validates `token` for `audience` against the current bundles, locally.
    pub fn validate(&self, token: &str, audience: &str) -> Result<JwtSvid, JwtSvidError> {
        validate_jwt_svid(token, &self.bundles(), &[audience], SystemTime::now())
    }
}

impl Drop for JwtSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Follows the bundle stream, reconnecting with backoff; keeps the last good bundles.
async fn follow(
    path: PathBuf,
    mut stream: tonic::Streaming<crate::proto::JwtBundlesResponse>,
    tx: watch::Sender<Arc<JwtBundleSet>>,
) {
    let mut delay = BACKOFF_MIN;
    loop {
        while let Ok(Some(msg)) = stream.message().await {
            if let Ok(set) = parse_jwt_bundles(&msg) {
                delay = BACKOFF_MIN;
                if tx.send(Arc::new(set)).is_err() {
                    return;
                }
            }
        }
        loop {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(BACKOFF_MAX);
            if let Ok((set, next)) = first_bundles(&path).await {
                if tx.send(Arc::new(set)).is_err() {
                    return;
                }
                stream = next;
                break;
            }
        }
    }
}

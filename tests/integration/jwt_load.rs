//! A workload that keeps fetching JWT-SVIDs from a real agent in the background and
//! validates each one twice: locally, against the JWT bundles its [`JwtSource`] follows,
//! and on the agent with ValidateJWTSVID. [`JwtLoad`] counts every token and every refusal,
//! and which signing keys (`kid`) it saw.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use keycard_workload_api::{JwtSource, SpiffeId, WorkloadApiClient};

/// The audience whose token the agent caches (asked for every other round).
pub const STEADY_AUDIENCE: &str = "steady";

/// What a [`JwtLoad`] saw, from its start until [`JwtLoad::stop`].
#[derive(Debug, Default, Clone)]
pub struct JwtReport {
    /// Tokens fetched.
    pub fetched: u64,
    /// Validations that accepted a token (each token is validated locally and by the agent
    /// when fetched, and again in the next round, so up to four per token).
    pub validated: u64,
    /// Every failed fetch and every refusal of a token that was valid, with its error.
    pub refusals: Vec<String>,
    /// The `kid` of every token fetched.
    pub kids: BTreeSet<String>,
}

/// The background workload; see the module documentation. Dropping it stops it.
pub struct JwtLoad {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<JwtReport>>,
    task: tokio::task::JoinHandle<()>,
}

impl JwtLoad {
    /// Starts fetching tokens for `id` on the agent socket `socket` every `pause`, on the
    /// current runtime; alternates between [`STEADY_AUDIENCE`] and a new audience each
    /// time (which the agent must have the server sign with its active key).
    pub async fn start(
        socket: &Path,
        id: SpiffeId,
        source: Arc<JwtSource>,
        pause: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(JwtReport::default()));
        let mut client = WorkloadApiClient::connect_path(socket).await.unwrap();
        let (flag, seen) = (stop.clone(), report.clone());
        let task = tokio::spawn(async move {
            let mut previous: Option<(String, String)> = None;
            let mut round = 0u64;
            while !flag.load(Ordering::Relaxed) {
                round += 1;
                let audience = if round.is_multiple_of(2) {
                    STEADY_AUDIENCE.to_owned()
                } else {
                    format!("aud-{round}")
                };
                match client.fetch_jwt_svids(std::slice::from_ref(&audience), Some(&id)).await {
                    Ok(mut tokens) => {
                        let token = tokens.remove(0).token;
                        {
                            let mut r = seen.lock().unwrap();
                            r.fetched += 1;
                            r.kids.insert(kid(&token));
                        }
                        check(&mut client, &source, &id, &token, &audience, &seen).await;
                        // A token signed by a key that has since been replaced is still
                        // valid: check the previous one again while it has time left.
                        if let Some((token, audience)) = previous.take()
                            && expiry(&token) > SystemTime::now() + Duration::from_secs(2)
                        {
                            check(&mut client, &source, &id, &token, &audience, &seen).await;
                        }
                        previous = Some((token, audience));
                    }
                    Err(e) => seen.lock().unwrap().refusals.push(format!("fetch: {e}")),
                }
                tokio::time::sleep(pause).await;
            }
        });
        JwtLoad { stop, report, task }
    }

    /// Refusals so far.
    pub fn refusals(&self) -> Vec<String> {
        self.report.lock().unwrap().refusals.clone()
    }

    /// Stops the loop (after its current round) and returns everything seen.
    pub async fn stop(mut self) -> JwtReport {
        self.stop.store(true, Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_secs(20), &mut self.task).await;
        self.report.lock().unwrap().clone()
    }
}

impl Drop for JwtLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.abort();
    }
}

/// Validates `token` for `audience` locally and on the agent; records the outcome.
async fn check(
    client: &mut WorkloadApiClient,
    source: &JwtSource,
    id: &SpiffeId,
    token: &str,
    audience: &str,
    report: &Mutex<JwtReport>,
) {
    let local = match source.validate(token, audience) {
        Ok(svid) if &svid.spiffe_id == id => Ok(()),
        Ok(svid) => Err(format!("local: subject {}", svid.spiffe_id)),
        Err(e) => Err(format!("local ({}): {e}", kid(token))),
    };
    let agent = match client.validate_jwt_svid(audience, token).await {
        Ok((subject, _)) if &subject == id => Ok(()),
        Ok((subject, _)) => Err(format!("agent: subject {subject}")),
        Err(e) => Err(format!("agent ({}): {e}", kid(token))),
    };
    let mut r = report.lock().unwrap();
    for outcome in [local, agent] {
        match outcome {
            Ok(()) => r.validated += 1,
            Err(e) => r.refusals.push(e),
        }
    }
}

/// The decoded JSON of part `index` (0: header, 1: claims) of a compact JWS.
fn part(token: &str, index: usize) -> serde_json::Value {
    let encoded = token.split('.').nth(index).unwrap_or_default();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded).unwrap();
    serde_json::from_slice(&json).unwrap()
}

/// The `kid` a token was signed with.
pub fn kid(token: &str) -> String {
    part(token, 0)["kid"].as_str().unwrap_or_default().to_owned()
}

/// The `exp` of a token.
fn expiry(token: &str) -> SystemTime {
    let exp = part(token, 1)["exp"].as_u64().unwrap_or_default();
    SystemTime::UNIX_EPOCH + Duration::from_secs(exp)
}

//! The agent's sync and renewal loop: keeps the [`SvidCache`] filled from the server.
//!
//! One round ([`Manager::tick`]) renews the agent's own SVID when half its life has
//! passed, syncs the authorized entries and the bundle, then makes a key and a CSR on the
//! agent for every entry that needs an SVID and asks the server to sign them in batches
//! (at most [`MAX_BATCH`]; the batch is halved after a failed call), entries without an
//! SVID first. When the server answers part of a batch (or all of it) "retry after" for
//! the agent's signing rate, the round keeps what it got, waits that long (through the
//! [`Pacer`], bounded) and goes on: pacing is not a failure. SVIDs issued together
//! get evenly spread first renewals ([`renewal::batch_first_renewal`]); renewals keep their
//! phase ([`renewal::steady_renewal`]). [`Manager::run`] repeats rounds every
//! `sync_interval`, backing off exponentially (with jitter) while the server is down, but
//! never sleeping more than a quarter of the time its soonest-expiring SVID has left; the
//! cache keeps serving meanwhile. Each round reads the clock afresh, so a forward clock
//! jump is acted on within one `sync_interval`. The bundle a sync brings is adopted only when it may
//! replace the one held ([`check_bundle_update`]: not empty, a higher `spiffe_sequence`);
//! otherwise the round goes on with the held one and reports it. The sync itself is by
//! cursor ([`sync`]): an idle round sends a few dozen bytes and leaves the cache alone.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::mpsc;

use keycard_workload_api::SpiffeBundle;

use super::cache::{CacheError, SvidCache, check_bundle_update};
use super::client::{ServerClient, SyncedEntries};
use super::jwt::{JwtError, JwtRequest};
use crate::clock::Clock;
use crate::shutdown::Shutdown;
use agent_svid::{agent_half_life, agent_svid_outdated};
use backoff::Backoff;
pub use types::{
    ManagerError, ManagerOptions, Pacer, Reattest, RoundObserver, SleepPacer, TickReport,
};

/// The most CSRs sent in one call (the server's own limit).
pub const MAX_BATCH: usize = crate::wire::MAX_BATCH;

/// The sync and renewal loop; see the module documentation.
pub struct Manager {
    client: ServerClient,
    cache: Arc<SvidCache>,
    clock: Arc<dyn Clock>,
    options: ManagerOptions,
    /// What the last good sync brought besides the entries (the cache holds those).
    synced: SyncedEntries,
    /// The server's cursor for `synced` (empty: sync everything next time).
    cursor: Vec<u8>,
    /// The current batch size: halved after a failed call, doubled after a good one.
    batch: usize,
    backoff: Backoff,
    /// How to attest again, if the agent can.
    reattest: Option<Reattest>,
    /// JWT-SVID requests from the Workload API, served between rounds.
    jwt_requests: Option<mpsc::Receiver<JwtRequest>>,
    /// Triggered when [`Manager::run_with`]'s shutdown comes during a round: the round
    /// stops waiting for the server's signing rate and ends with what it has.
    stop_pacing: Shutdown,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("client", &self.client)
            .field("options", &self.options)
            .field("revision", &self.synced.revision)
            .field("batch", &self.batch)
            .field("can_reattest", &self.reattest.is_some())
            .finish_non_exhaustive()
    }
}

/// The next JWT-SVID request; pending forever when there is no channel or it is closed.
async fn next_request(requests: &mut Option<mpsc::Receiver<JwtRequest>>) -> Option<JwtRequest> {
    match requests {
        Some(rx) => match rx.recv().await {
            Some(r) => Some(r),
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

impl Manager {
    /// A manager that fills `cache` through `client` (already attested).
    pub fn new(
        client: ServerClient,
        cache: Arc<SvidCache>,
        clock: Arc<dyn Clock>,
        options: ManagerOptions,
    ) -> Self {
        let batch = options.max_batch.clamp(1, MAX_BATCH);
        let backoff = Backoff::new(options.backoff_min, options.backoff_max);
        Self {
            client,
            cache,
            clock,
            options,
            synced: SyncedEntries::default(),
            cursor: Vec::new(),
            batch,
            backoff,
            reattest: None,
            jwt_requests: None,
            stop_pacing: Shutdown::new(),
        }
    }

    /// Serves JWT-SVID requests (from a [`super::jwt::JwtMinter`]) while it runs.
    pub fn with_jwt_requests(mut self, requests: mpsc::Receiver<JwtRequest>) -> Self {
        self.jwt_requests = Some(requests);
        self
    }

    /// Lets the manager attest again by itself when the agent SVID expired or the server
    /// stopped accepting it.
    pub fn with_reattest(mut self, reattest: Reattest) -> Self {
        self.reattest = Some(reattest);
        self
    }

    /// Starts from `bundle` (the one stored when the server last sent it): a bundle from
    /// the server replaces it only if it may ([`check_bundle_update`]), so a restart does
    /// not let an older bundle back in.
    pub fn with_held_bundle(mut self, bundle: SpiffeBundle) -> Self {
        self.synced.bundle = Some(bundle);
        self
    }

    /// The server client.
    pub fn client(&self) -> &ServerClient {
        &self.client
    }

    /// What the last good sync brought besides the entries (revision, bundle, tainted
    /// list, federated bundles); the entries are the cache's.
    pub fn synced(&self) -> &SyncedEntries {
        &self.synced
    }

    /// The server client (to reconnect it elsewhere, or to look at the agent identity).
    pub fn client_mut(&mut self) -> &mut ServerClient {
        &mut self.client
    }

    /// Replaces the server client, e.g. after the server moved; the cache is kept.
    pub fn set_client(&mut self, client: ServerClient) {
        self.client = client;
    }

    /// The current CSR batch size.
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    /// Runs rounds until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        self.run_with((), shutdown).await
    }

    /// Runs rounds until `shutdown` completes, telling `observer` after each.
    pub async fn run_with(
        mut self,
        mut observer: impl RoundObserver,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut jwt_requests = self.jwt_requests.take();
        loop {
            // A round may wait out the server's signing rate: a shutdown during the round
            // ends that wait, and the round ends with what it got so far.
            let mut stopping = false;
            let stop_pacing = self.stop_pacing.clone();
            let outcome = {
                let tick = self.tick();
                tokio::pin!(tick);
                tokio::select! {
                    outcome = &mut tick => outcome,
                    _ = &mut shutdown => {
                        stopping = true;
                        stop_pacing.trigger();
                        tick.await
                    }
                }
            };
            observer.after_round(&self, &outcome);
            if stopping {
                return;
            }
            let delay = match outcome {
                Ok(report) => {
                    tracing::debug!(?report, "agent sync round");
                    self.backoff.reset();
                    self.options.sync_interval
                }
                Err(e) => {
                    let delay = self.retry_delay();
                    tracing::warn!(error = %e, retry_in = ?delay, "agent sync round failed");
                    delay
                }
            };
            let wake = tokio::time::sleep(delay);
            tokio::pin!(wake);
            loop {
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = &mut wake => break,
                    Some(request) = next_request(&mut jwt_requests) => self.mint_jwt(request).await,
                }
            }
        }
    }

    /// The delay after a failed round: the backoff, capped so that the agent tries again
    /// several times before the soonest of its SVIDs (or its own) expires
    /// ([`backoff::cap_by_expiry`]).
    fn retry_delay(&mut self) -> std::time::Duration {
        let delay = self.backoff.next_delay();
        let svids = self.cache.svids();
        let agent = self.client.identity().map(|i| i.expires_at);
        let expiries = svids.iter().map(|s| s.expires_at).chain(agent);
        backoff::cap_by_expiry(delay, self.options.backoff_min, self.clock.now(), expiries)
    }

    /// Asks the server for a JWT-SVID and answers the Workload API's request.
    async fn mint_jwt(&mut self, request: JwtRequest) {
        let JwtRequest { entry_id, audiences, x509_svid, reply } = request;
        let result = self
            .client
            .new_bound_jwt_svid(&entry_id, &audiences, x509_svid)
            .await
            .map_err(|e| JwtError::Server(e.to_string()));
        // The caller may have given up waiting; nothing to do then.
        let _ = reply.send(result);
    }

    /// One round: agent SVID renewal, entry sync, workload SVID issuance and renewal.
    pub fn tick(&mut self) -> impl Future<Output = Result<TickReport, ManagerError>> + '_ {
        self.round()
    }

    async fn round(&mut self) -> Result<TickReport, ManagerError> {
        match self.round_once().await {
            Err(e) if e.needs_reattestation() && self.reattest.is_some() => {
                tracing::warn!(error = %e, "the agent SVID is no longer usable; attesting again");
                if let Some(reattest) = self.reattest.as_mut() {
                    self.client = reattest().await?;
                    // Maybe another server's: sync everything once.
                    self.cursor.clear();
                }
                let mut report = self.round_once().await?;
                report.reattested = true;
                Ok(report)
            }
            other => other,
        }
    }

    async fn round_once(&mut self) -> Result<TickReport, ManagerError> {
        let agent_renewed = match self.renew_agent_if_due().await {
            Ok(renewed) => renewed,
            // The current agent SVID is still valid (an expired one, or one the server no
            // longer accepts, needs attestation): a failed renewal must not stop the
            // workload SVIDs from being synced and renewed with it. The next round retries.
            Err(e) if !e.needs_reattestation() => {
                tracing::warn!(error = %e, "cannot renew the agent SVID now; the round goes on");
                false
            }
            Err(e) => return Err(e),
        };
        let mut report = TickReport { agent_renewed, ..Default::default() };
        self.sync_entries(&mut report).await?;
        // A taint covers the agent's own SVID too: renew it now, while the server still
        // accepts the old one (it will not once the authority is revoked). Only a sync
        // that changed something (the bundle or the tainted list among it) can make it
        // so: an idle round skips the chain check and its signature verifications.
        if !report.agent_renewed
            && report.synced_changed
            && let Some(identity) = self.client.identity()
            && agent_svid_outdated(identity, &self.synced, self.clock.now())
        {
            tracing::info!("the agent SVID's authority is tainted or gone; renewing it now");
            self.client.renew().await?;
            report.agent_renewed = true;
        }
        report.entries = self.cache.len();
        self.issue_due(&mut report).await?;
        Ok(report)
    }

    /// Whether the bundle the server `offered` may replace the one the agent holds
    /// ([`check_bundle_update`]: not empty, a higher `spiffe_sequence`).
    fn adopt_bundle(&self, offered: &SpiffeBundle) -> Result<(), CacheError> {
        check_bundle_update(self.held_bundle().as_ref(), offered)
    }

    async fn renew_agent_if_due(&mut self) -> Result<bool, ManagerError> {
        let Some(identity) = self.client.identity() else { return Ok(false) };
        let half = identity
            .chain
            .first()
            .and_then(|leaf| agent_half_life(leaf, identity.expires_at))
            .unwrap_or(identity.expires_at);
        let now = self.clock.now();
        if now >= identity.expires_at {
            return Err(ManagerError::AgentExpired);
        }
        if now < half {
            return Ok(false);
        }
        self.client.renew().await?;
        Ok(true)
    }
}

mod agent_svid;
mod backoff;
mod federated;
mod issue;
mod sync;
#[cfg(test)]
mod tests;
mod types;

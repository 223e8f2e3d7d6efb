//! The agent's sync and renewal loop: keeps the [`SvidCache`] filled from the server.
//!
//! One round ([`Manager::tick`]) renews the agent's own SVID when half its life has
//! passed, syncs the authorized entries and the bundle, then makes a key and a CSR on the
//! agent for every entry that needs an SVID and asks the server to sign them in batches
//! (at most [`MAX_BATCH`]; the batch is halved after a failed call). SVIDs issued together
//! get evenly spread first renewals ([`renewal::batch_first_renewal`]); renewals keep their
//! phase ([`renewal::steady_renewal`]). [`Manager::run`] repeats rounds every
//! `sync_interval`, backing off exponentially (with jitter) while the server is down; the
//! cache keeps serving meanwhile. The bundle a sync brings is adopted only when it may
//! replace the one held ([`check_bundle_update`]: not empty, a higher `spiffe_sequence`);
//! otherwise the round goes on with the held one and reports it. The sync itself is by
//! cursor ([`sync`]): an idle round sends a few dozen bytes and leaves the cache alone.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::Rng as _;
use tokio::sync::mpsc;

use keycard_workload_api::SpiffeBundle;

use super::cache::{CacheError, NewSvid, SvidCache, check_bundle_update};
use super::client::{ServerClient, SyncedEntries};
use super::jwt::{JwtError, JwtRequest};
use super::renewal::{self, Validity};
use crate::ca::SigningKey;
use crate::clock::Clock;
use crate::telemetry::AUDIT_TARGET;
use agent_svid::{agent_half_life, agent_svid_outdated};
use backoff::Backoff;
pub use types::{ManagerError, ManagerOptions, Reattest, RoundObserver, TickReport};

/// The most CSRs sent in one call (the server's own limit).
pub const MAX_BATCH: usize = crate::wire::MAX_BATCH;

/// The sync and renewal loop; see the module documentation.
pub struct Manager {
    client: ServerClient,
    cache: Arc<SvidCache>,
    clock: Arc<dyn Clock>,
    options: ManagerOptions,
    /// The entries as of the last good sync: the base of the next diff.
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

    /// The entries as of the last good sync.
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
            let outcome = self.tick().await;
            observer.after_round(&self, &outcome);
            let delay = match outcome {
                Ok(report) => {
                    tracing::debug!(?report, "agent sync round");
                    self.backoff.reset();
                    self.options.sync_interval
                }
                Err(e) => {
                    let delay = self.backoff.next_delay();
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

    /// Asks the server for a JWT-SVID and answers the Workload API's request.
    async fn mint_jwt(&mut self, request: JwtRequest) {
        let JwtRequest { entry_id, audiences, reply } = request;
        let result = self
            .client
            .new_jwt_svid(&entry_id, &audiences)
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
                }
                let mut report = self.round_once().await?;
                report.reattested = true;
                Ok(report)
            }
            other => other,
        }
    }

    async fn round_once(&mut self) -> Result<TickReport, ManagerError> {
        let mut report =
            TickReport { agent_renewed: self.renew_agent_if_due().await?, ..Default::default() };
        self.sync_entries(&mut report).await?;
        // A taint covers the agent's own SVID too: renew it now, while the server still
        // accepts the old one (it will not once the authority is revoked).
        if !report.agent_renewed
            && let Some(identity) = self.client.identity()
            && agent_svid_outdated(identity, &self.synced, self.clock.now())
        {
            tracing::info!("the agent SVID's authority is tainted or gone; renewing it now");
            self.client.renew().await?;
            report.agent_renewed = true;
        }
        report.entries = self.synced.entries.len();
        let due = self.cache.due(self.clock.now());
        let mut rest = due.as_slice();
        while !rest.is_empty() {
            let (now, later) = rest.split_at(self.batch.min(rest.len()));
            match self.sign_batch(now, &mut report).await {
                Ok(()) => {
                    self.batch = (self.batch * 2).min(self.options.max_batch.clamp(1, MAX_BATCH));
                    rest = later;
                }
                Err(e) => {
                    self.batch = (self.batch / 2).max(1);
                    return Err(e);
                }
            }
        }
        Ok(report)
    }

    /// Keeps the bundle the agent holds in `synced` unless the one the server sent may
    /// replace it ([`check_bundle_update`]: not empty, a higher `spiffe_sequence`).
    fn adopt_bundle(&self, synced: &mut SyncedEntries) -> Result<(), CacheError> {
        let Some(offered) = &synced.bundle else { return Ok(()) };
        let held = self.held_bundle();
        let verdict = check_bundle_update(held.as_ref(), offered);
        if verdict.is_err() {
            synced.bundle = held;
        }
        verdict
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

    /// Makes keys and CSRs for `due`, has them signed in one call, and puts the checked
    /// SVIDs in the cache.
    async fn sign_batch(
        &mut self,
        due: &[super::cache::DueEntry],
        report: &mut TickReport,
    ) -> Result<(), ManagerError> {
        let mut keys = Vec::with_capacity(due.len());
        let mut items = Vec::with_capacity(due.len());
        for d in due {
            let key = SigningKey::generate(self.options.key_type)
                .map_err(|e| ManagerError::Key(e.to_string()))?;
            let csr = rcgen::CertificateParams::default()
                .serialize_request(key.key_pair())
                .map_err(|e| ManagerError::Key(e.to_string()))?;
            items.push((d.entry_id.clone(), csr.der().to_vec()));
            keys.push(Arc::new(key));
        }
        report.batches += 1;
        let results = self.client.batch_new_x509_svid(&items).await?;
        let issued_at = self.clock.now();
        let fresh_total =
            due.iter().zip(&results).filter(|(d, r)| d.previous_due.is_none() && r.is_ok()).count();
        let phase: f64 = rand::rng().random_range(0.0..1.0);
        let mut fresh_index = 0;
        let mut new_svids = Vec::new();
        for ((d, key), result) in due.iter().zip(keys).zip(results) {
            let svid = match result {
                Ok(svid) => svid,
                Err(status) => {
                    tracing::warn!(entry_id = %d.entry_id, error = %status.message(), "server refused an SVID");
                    report.failed += 1;
                    continue;
                }
            };
            let not_after =
                SystemTime::UNIX_EPOCH + Duration::from_secs(svid.expires_at.max(0) as u64);
            let validity = Validity { issued_at, not_after };
            let renew_at = match d.previous_due {
                Some(previous) => renewal::steady_renewal(previous, validity),
                None if fresh_total > 1 => {
                    fresh_index += 1;
                    renewal::batch_first_renewal(validity, fresh_index - 1, fresh_total, phase)
                }
                None => {
                    renewal::single_first_renewal(validity, rand::rng().random_range(-1.0..=1.0))
                }
            };
            new_svids.push((
                d.previous_due.is_some(),
                NewSvid {
                    entry_id: d.entry_id.clone(),
                    chain: svid.chain,
                    key,
                    serial: svid.serial,
                    issued_at,
                    renew_at,
                },
            ));
        }
        let (kinds, svids): (Vec<bool>, Vec<NewSvid>) = new_svids.into_iter().unzip();
        let entry_ids: Vec<String> = svids.iter().map(|s| s.entry_id.clone()).collect();
        let outcomes = kinds.into_iter().zip(entry_ids).zip(self.cache.update_svids(svids));
        for ((renewal, entry_id), result) in outcomes {
            if result.is_ok()
                && let Some(svid) = self.cache.svid(&entry_id)
            {
                tracing::info!(
                    target: AUDIT_TARGET,
                    event = if renewal { "workload_svid_renewed" } else { "workload_svid_issued" },
                    entry_id = %entry_id,
                    spiffe_id = %svid.spiffe_id,
                    serial = %svid.serial,
                    renew_at = %crate::telemetry::logging::rfc3339(svid.renew_at),
                );
            }
            match result {
                Ok(()) if renewal => report.renewed += 1,
                Ok(()) => report.issued += 1,
                Err(e) => {
                    tracing::warn!(error = %e, "refused an SVID from the server");
                    report.failed += 1;
                }
            }
        }
        Ok(())
    }
}

mod agent_svid;
mod backoff;
mod sync;
#[cfg(test)]
mod tests;
mod types;

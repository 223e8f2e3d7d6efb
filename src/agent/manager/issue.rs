//! Issuance within a round: the due entries in the order they should get SVIDs, signed
//! in batches at the pace the server allows.
//!
//! The server signs what the agent's signing rate allows and answers the rest "retry
//! after" (per item, or for the whole call when it could sign none). That is not a
//! failure: the SVIDs already issued stay in the cache, the round waits (bounded by
//! [`MAX_PACE_WAIT`], through the [`super::Pacer`], ended early by shutdown) and sends
//! the paced entries again, first. Only a server that signs nothing [`MAX_IDLE_WAITS`] times in a row fails the
//! round; any other error fails it as before (and halves the batch).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::Rng as _;

use super::super::cache::{DueEntry, EntryId, NewSvid};
use super::super::client::ClientError;
use super::super::renewal::{self, Validity};
use super::{MAX_BATCH, Manager, ManagerError, TickReport};
use crate::ca::SigningKey;
use crate::telemetry::AUDIT_TARGET;
use crate::wire::retry_after;

/// The longest single wait for the server's signing rate; a longer retry-after is cut to
/// this (the server then answers again with what is left).
pub const MAX_PACE_WAIT: Duration = Duration::from_secs(10);
/// Waits in a row after which a server that signed nothing fails the round.
pub const MAX_IDLE_WAITS: usize = 10;

/// The entries of a call the server paced, and the longest retry-after it named.
#[derive(Debug, Default)]
struct Paced {
    entries: Vec<DueEntry>,
    retry_after: Duration,
}

/// The retry-after of a call refused as a whole for the signing rate.
fn call_retry_after(err: &ManagerError) -> Option<Duration> {
    match err {
        ManagerError::Server(ClientError::Rpc(status)) => retry_after(status),
        _ => None,
    }
}

/// `due` in issuance order: entries with no SVID at all first (a workload that has
/// nothing waits least), then SVIDs to replace at once (entry changed, authority tainted),
/// then scheduled renewals; each group by renewal time, then entry ID. `renew_at` is the
/// renewal time of the SVID an entry holds.
pub(super) fn issuance_order(
    mut due: Vec<DueEntry>,
    renew_at: impl Fn(&str) -> Option<SystemTime>,
) -> Vec<DueEntry> {
    due.sort_by_cached_key(|d| {
        let held = renew_at(&d.entry_id);
        (held.is_some(), d.previous_due.is_some(), held, d.entry_id.clone())
    });
    due
}

impl Manager {
    /// Gets SVIDs for every entry due now, pacing at the server's signing rate.
    pub(super) async fn issue_due(&mut self, report: &mut TickReport) -> Result<(), ManagerError> {
        let due = self.cache.due(self.clock.now());
        let cache = &self.cache;
        let mut queue: VecDeque<DueEntry> =
            issuance_order(due, |id| cache.svid(id).map(|s| s.renew_at)).into();
        let max_batch = self.options.max_batch.clamp(1, MAX_BATCH);
        let mut idle_waits = 0;
        while !queue.is_empty() {
            let batch: Vec<DueEntry> = queue.drain(..self.batch.min(queue.len())).collect();
            let (paced, wait, progress) = match self.sign_batch(&batch, report).await {
                Ok(paced) => {
                    self.batch = (self.batch * 2).min(max_batch);
                    if paced.entries.is_empty() {
                        idle_waits = 0;
                        continue;
                    }
                    let progress = paced.entries.len() < batch.len();
                    (paced.entries, paced.retry_after, progress)
                }
                Err(e) => match call_retry_after(&e) {
                    Some(after) if idle_waits < MAX_IDLE_WAITS => {
                        report.rate_limited += batch.len();
                        (batch, after, false)
                    }
                    _ => {
                        self.batch = (self.batch / 2).max(1);
                        return Err(e);
                    }
                },
            };
            idle_waits = if progress { 0 } else { idle_waits + 1 };
            for d in paced.into_iter().rev() {
                queue.push_front(d);
            }
            report.paced_waits += 1;
            let wait = wait.min(MAX_PACE_WAIT);
            tracing::debug!(?wait, left = queue.len(), "waiting for the server's signing rate");
            tokio::select! {
                biased;
                _ = self.stop_pacing.wait() => {
                    tracing::info!(left = queue.len(), "shutting down: the round ends while paced");
                    return Ok(());
                }
                _ = self.options.pacer.pause(wait) => {}
            }
        }
        Ok(())
    }

    /// Makes keys and CSRs for `due`, has them signed in one call, and puts the checked
    /// SVIDs in the cache; the items the server paced come back for a later call.
    async fn sign_batch(
        &mut self,
        due: &[DueEntry],
        report: &mut TickReport,
    ) -> Result<Paced, ManagerError> {
        let mut keys = Vec::with_capacity(due.len());
        let mut items = Vec::with_capacity(due.len());
        for d in due {
            let key = SigningKey::generate(self.options.key_type)
                .map_err(|e| ManagerError::Key(e.to_string()))?;
            let csr = rcgen::CertificateParams::default()
                .serialize_request(key.key_pair())
                .map_err(|e| ManagerError::Key(e.to_string()))?;
            items.push((d.entry_id.to_string(), csr.der().to_vec()));
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
        let mut paced = Paced::default();
        for ((d, key), result) in due.iter().zip(keys).zip(results) {
            let svid = match result {
                Ok(svid) => svid,
                Err(status) if let Some(after) = retry_after(&status) => {
                    report.rate_limited += 1;
                    paced.retry_after = paced.retry_after.max(after);
                    paced.entries.push(d.clone());
                    continue;
                }
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
        let entry_ids: Vec<EntryId> = svids.iter().map(|s| s.entry_id.clone()).collect();
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
        Ok(paced)
    }
}

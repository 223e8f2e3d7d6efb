//! The sync part of a round: by cursor, handing the cache only what changed (the federated
//! bundles included, when the server sent their set: see [`federated`]), or (with a server
//! that does not sync by cursor) by revision list, as before, without federation.

use keycard_workload_api::SpiffeBundle;

use super::{Manager, ManagerError, TickReport, federated};
use crate::agent::cache::same_federated;
use crate::agent::client::{FederatedUpdate, SyncedEntries};

impl Manager {
    /// Syncs by cursor and hands the cache the result only when something changed (a full
    /// answer, an entry, the tainted list or the bundle). If the cache refuses it, or the
    /// client moved to another server, the cursor is dropped so that the round syncs
    /// everything (the cache keeps the SVIDs of entries the full answer still holds).
    pub(super) async fn sync_entries(
        &mut self,
        report: &mut TickReport,
    ) -> Result<(), ManagerError> {
        // A cursor means something only to the server that handed it out.
        if self.client.take_switched() && !self.cursor.is_empty() {
            tracing::info!(
                server = self.client.servers().current(),
                "another server: syncing everything once"
            );
            self.cursor.clear();
        }
        let held = self.held_bundle();
        let held_sequence = held.as_ref().and_then(|b| b.sequence).unwrap_or(0);
        let digest = self.synced.federated_digest.clone();
        let mut delta = self
            .client
            .sync_federated(&self.cursor, held_sequence, self.synced.revision, &digest)
            .await?;
        if delta.cursor.is_empty() {
            return self.sync_by_revisions(report).await;
        }
        let first = self.cursor.is_empty();
        let bundle_adopted = delta.bundle.as_ref().is_some_and(|b| {
            let mut offered = SyncedEntries { bundle: Some(b.clone()), ..Default::default() };
            self.adopt_or_report(&mut offered, report)
        });
        if bundle_adopted {
            self.synced.bundle = delta.bundle.clone();
        } else if first {
            self.synced.bundle = held;
        }
        if (bundle_adopted || (first && delta.bundle.is_none()))
            && let Some(x509) = self.synced.bundle.as_ref().and_then(|b| b.x509_bundle().ok())
        {
            self.client.trust_server_bundle(x509);
        }
        let cursor = delta.cursor.clone();
        // An empty digest says "none held": a server that then sends no set holds none
        // either, so bundles the cache got elsewhere (the disk cache, after federations
        // were deleted while the agent was down) go.
        if delta.federated.is_none() && digest.is_empty() && !self.cache.federated().is_empty() {
            delta.federated = Some(FederatedUpdate::default());
        }
        let federated = delta.federated.take().map(|update| {
            let held = self.cache.federated();
            let set = federated::merge(self.client.trust_domain(), &held, &update);
            let changed = !same_federated(&held, &set);
            (set, update.digest, changed)
        });
        let federated_changed = federated.as_ref().is_some_and(|(_, _, changed)| *changed);
        let changed =
            delta.apply_to(&mut self.synced) || bundle_adopted || first || federated_changed;
        report.synced_changed = changed;
        if let Some((set, digest, _)) = &federated {
            self.synced.federated = federated::spiffe_forms(set);
            self.synced.federated_digest.clone_from(digest);
        }
        if changed {
            let synced = &self.synced;
            let installed = self.cache.set_synced(
                &synced.entries,
                synced.bundle.as_ref(),
                &synced.tainted_authority_ids,
                federated.map(|(set, _, _)| set),
            );
            match installed {
                Ok(changes) => report.removed = changes.removed,
                Err(e) => {
                    // Sync everything, the federated bundles too, next time.
                    self.cursor.clear();
                    self.synced.federated_digest.clear();
                    return Err(e.into());
                }
            }
        }
        self.cursor = cursor;
        Ok(())
    }

    /// Adopts the bundle `offered` holds if it may replace the one held; otherwise puts
    /// the held one back, logs why and reports it. Returns whether it was adopted.
    fn adopt_or_report(&self, offered: &mut SyncedEntries, report: &mut TickReport) -> bool {
        match self.adopt_bundle(offered) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "kept the current trust bundle");
                report.bundle_refused = true;
                false
            }
        }
    }

    /// The bundle the agent holds: the cache's, or the last one synced.
    pub(super) fn held_bundle(&self) -> Option<SpiffeBundle> {
        self.cache.bundle().map(|b| b.spiffe.clone()).or_else(|| self.synced.bundle.clone())
    }

    /// The sync of a server that does not sync by cursor: every authorized ID and revision
    /// each round, and the cache given the whole set.
    async fn sync_by_revisions(&mut self, report: &mut TickReport) -> Result<(), ManagerError> {
        let mut synced = self.client.sync(&self.synced).await?;
        if self.adopt_or_report(&mut synced, report)
            && let Some(x509) = synced.bundle.as_ref().and_then(|b| b.x509_bundle().ok())
        {
            self.client.trust_server_bundle(x509);
        }
        let changes = self.cache.set_entries(
            &synced.entries,
            synced.bundle.as_ref(),
            &synced.tainted_authority_ids,
        )?;
        self.synced = synced;
        report.removed = changes.removed;
        report.synced_changed = true;
        Ok(())
    }
}

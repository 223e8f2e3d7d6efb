//! The sync part of a round: by cursor, handing the cache only what changed (the federated
//! bundles included, when the server sent their set: see [`federated`]), or (with a server
//! that does not sync by cursor) by revision list against the revisions the cache holds,
//! without federation. Either way the cache gets a [`CacheDelta`]: it is the agent's only
//! copy of the entries.

use keycard_workload_api::SpiffeBundle;

use super::{Manager, ManagerError, TickReport, federated};
use crate::agent::cache::{CacheDelta, EntryChanges, same_federated};
use crate::agent::client::{FederatedUpdate, SyncDelta};

impl Manager {
    /// Syncs by cursor and hands the cache what changed (entries, the tainted list, an
    /// adopted bundle, the federated set); an idle round hands it nothing. If the cache
    /// refuses it, or the client moved to another server, the cursor is dropped so that
    /// the round syncs everything (the cache keeps the SVIDs of entries the full answer
    /// still holds).
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
        let bundle_adopted =
            delta.bundle.as_ref().is_some_and(|offered| self.may_adopt(offered, report));
        if bundle_adopted {
            self.synced.bundle = delta.bundle.take();
        } else if first {
            self.synced.bundle = held;
        }
        if (bundle_adopted || (first && delta.bundle.is_none()))
            && let Some(x509) = self.synced.bundle.as_ref().and_then(|b| b.x509_bundle().ok())
        {
            self.client.trust_server_bundle(x509);
        }
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
        let news = first
            || delta.full
            || bundle_adopted
            || federated.is_some()
            || !delta.entries.is_empty()
            || !delta.removed.is_empty()
            || delta.tainted_authority_ids.is_some();
        let mut changes = EntryChanges::default();
        if news {
            let digest = federated.as_ref().map(|(_, digest, _)| digest.clone());
            let forms = federated.as_ref().map(|(set, _, _)| federated::spiffe_forms(set));
            let tainted = delta.tainted_authority_ids.clone();
            let installed = self.cache.apply(CacheDelta {
                full: delta.full,
                entries: std::mem::take(&mut delta.entries),
                removed: std::mem::take(&mut delta.removed),
                bundle: if bundle_adopted || first { self.synced.bundle.as_ref() } else { None },
                tainted: delta.tainted_authority_ids.take(),
                federated: federated.map(|(set, _, _)| set),
            });
            changes = match installed {
                Ok(changes) => changes,
                Err(e) => {
                    // Sync everything, the federated bundles too, next time.
                    self.cursor.clear();
                    self.synced.federated_digest.clear();
                    return Err(e.into());
                }
            };
            if let Some(tainted) = tainted {
                self.synced.tainted_authority_ids = tainted;
            }
            if let (Some(forms), Some(digest)) = (forms, digest) {
                self.synced.federated = forms;
                self.synced.federated_digest = digest;
            }
        }
        report.removed = changes.removed;
        report.synced_changed =
            first || delta.full || changes.any() || bundle_adopted || federated_changed;
        self.synced.revision = delta.revision;
        self.cursor = delta.cursor;
        Ok(())
    }

    /// Whether the bundle `offered` may replace the one held ([`check_bundle_update`]: not
    /// empty, a higher `spiffe_sequence`); when not, logs why and reports it.
    ///
    /// [`check_bundle_update`]: crate::agent::cache::check_bundle_update
    fn may_adopt(&self, offered: &SpiffeBundle, report: &mut TickReport) -> bool {
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
    /// each round, compared with the revisions the cache holds; the cache gets what
    /// differs.
    async fn sync_by_revisions(&mut self, report: &mut TickReport) -> Result<(), ManagerError> {
        let held = self.cache.revisions();
        let mut delta: SyncDelta = self.client.sync(self.synced.revision, &held).await?;
        drop(held);
        let bundle = match delta.bundle.take() {
            Some(offered) if self.may_adopt(&offered, report) => {
                if let Ok(x509) = offered.x509_bundle() {
                    self.client.trust_server_bundle(x509);
                }
                Some(offered)
            }
            _ => self.held_bundle(),
        };
        let tainted = delta.tainted_authority_ids.take().unwrap_or_default();
        let changes = self.cache.apply(CacheDelta {
            full: false,
            entries: delta.entries,
            removed: delta.removed,
            bundle: bundle.as_ref(),
            tainted: Some(tainted.clone()),
            federated: None,
        })?;
        // This protocol carries no federated bundles: what the last by-cursor sync (if
        // any) brought is forgotten, and sent again by a server that syncs by cursor.
        self.synced = crate::agent::client::SyncedEntries {
            revision: delta.revision,
            bundle,
            tainted_authority_ids: tainted,
            ..Default::default()
        };
        report.removed = changes.removed;
        report.synced_changed = true;
        Ok(())
    }
}

//! What `agent run` keeps on disk while it runs, written off the runtime threads: the
//! bundle after it changes and the workload cache after a good round (`disk_cache =
//! true`), plus the cache's restore at start-up. (The agent SVID is stored by the server
//! client itself, before it uses a new one.)
//!
//! The round never waits for the disk: the [`Observer`](super::Observer) publishes what
//! should be stored ([`ToStore`]) on a watch channel, and one [`Writer`] task writes the
//! latest of it, in order (bundle before the cache that must match it), on tokio's
//! blocking pool. Rounds that come faster than the disk are folded into one write.

use std::sync::Arc;

use keycard_workload_api::SpiffeBundle;
use tokio::sync::watch;

use super::super::cache::SvidCache;
use super::super::client::SyncedEntries;
use super::super::config::AgentConfig;
use super::super::disk_cache::DiskCache;
use super::super::storage::{AgentStorage, StorageError, off_runtime};
use super::RunError;
use crate::clock::Clock;

/// What should be on disk as of the latest round.
#[derive(Debug, Clone, Default)]
pub(super) struct ToStore {
    /// The bundle the agent holds.
    pub(super) bundle: Option<SpiffeBundle>,
    /// The entries as of the last good round, for the disk cache.
    pub(super) synced: Option<Arc<SyncedEntries>>,
}

/// Writes what the observer asks for; see the module documentation.
pub(super) struct Writer {
    pub(super) storage: AgentStorage,
    pub(super) disk_cache: Option<DiskCache>,
    pub(super) cache: Arc<SvidCache>,
}

impl Writer {
    /// Writes until the observer is gone (the manager stopped), the last request included.
    pub(super) async fn run(
        mut self,
        mut wanted: watch::Receiver<ToStore>,
    ) -> Result<(), RunError> {
        let mut saved_bundle: Option<SpiffeBundle> = None;
        while wanted.changed().await.is_ok() {
            let want = wanted.borrow_and_update().clone();
            if let Some(bundle) = want.bundle
                && saved_bundle.as_ref() != Some(&bundle)
            {
                let (storage, copy) = (self.storage.clone(), bundle.clone());
                match off_runtime(move || storage.save_bundle(&copy)).await {
                    Ok(()) => saved_bundle = Some(bundle),
                    Err(e) => tracing::error!(error = %e, "cannot store the bundle"),
                }
            }
            if let (Some(disk), Some(synced)) = (&mut self.disk_cache, &want.synced)
                && let Err(e) = disk.save(synced, &self.cache).await
            {
                tracing::error!(error = %e, "cannot save the workload cache");
            }
        }
        Ok(())
    }
}

/// Opens the disk cache and fills `cache` from it (checked against the stored bundle), on
/// the blocking pool. A file that fails its checks is logged and ignored.
pub(super) async fn restore_disk_cache(
    storage: &AgentStorage,
    config: &AgentConfig,
    clock: &Arc<dyn Clock>,
    cache: &Arc<SvidCache>,
) -> Result<DiskCache, RunError> {
    let (storage, clock, cache) = (storage.clone(), clock.clone(), cache.clone());
    let td = config.trust_domain.clone();
    let disk = off_runtime(move || -> Result<DiskCache, StorageError> {
        let disk = DiskCache::open(&storage, clock)?;
        let stored = storage.load_bundle(&td).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the stored bundle");
            None
        });
        match disk.load(&td, stored.as_ref(), &cache) {
            Ok(restored) => tracing::info!(?restored, "workload cache restored from disk"),
            Err(e) => tracing::warn!(error = %e, "ignoring the on-disk workload cache"),
        }
        Ok(disk)
    })
    .await?;
    Ok(disk)
}

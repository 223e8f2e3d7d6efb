//! Entry sync from the agent's side: `SyncEntries` pages merged into the agent's copy,
//! fetching only what changed, within the client's deadline per call.

use std::collections::BTreeMap;

use keycard_workload_api::SpiffeBundle;

use super::{ClientError, ServerClient, bounded, parse_bundle};
use crate::wire::SYNC_PAGE_SIZE;
use crate::wire::proto as pb;

/// The agent's copy of its authorized entries, updated by [`ServerClient::sync`].
#[derive(Debug, Clone, Default)]
pub struct SyncedEntries {
    /// The store revision the copy reflects (0 before the first sync).
    pub revision: u64,
    /// The entries by ID.
    pub entries: BTreeMap<String, pb::Entry>,
    /// The bundle as of the last sync.
    pub bundle: Option<SpiffeBundle>,
    /// IDs of tainted X.509 authorities.
    pub tainted_authority_ids: Vec<String>,
}

impl ServerClient {
    /// One raw `SyncEntries` call: every page merged, in order.
    pub async fn sync_entries(
        &mut self,
        since_revision: u64,
        entry_ids: Vec<String>,
    ) -> Result<(Vec<pb::EntryRevision>, Vec<pb::Entry>, pb::SyncEntriesResponse), ClientError>
    {
        let request = self.request(pb::SyncEntriesRequest { since_revision, entry_ids });
        let grpc = &mut self.grpc;
        let call = async move {
            let mut stream = grpc.sync_entries(request).await?.into_inner();
            let (mut revisions, mut entries) = (Vec::new(), Vec::new());
            while let Some(page) = stream.message().await? {
                if page.complete {
                    return Ok((revisions, entries, page));
                }
                revisions.extend(page.revisions);
                entries.extend(page.entries);
            }
            Err(ClientError::BadResponse("sync ended without a complete message".into()))
        };
        let result = bounded(self.request_timeout, "SyncEntries", call).await;
        self.checked(result).await
    }

    /// Brings `previous` up to date: keeps unchanged entries, takes changed ones, drops
    /// those no longer authorized, and fetches any it lacks.
    pub async fn sync(&mut self, previous: &SyncedEntries) -> Result<SyncedEntries, ClientError> {
        let (revisions, changed, last) = self.sync_entries(previous.revision, Vec::new()).await?;
        let mut changed: BTreeMap<String, pb::Entry> =
            changed.into_iter().map(|e| (e.id.clone(), e)).collect();
        let mut entries = BTreeMap::new();
        let mut missing = Vec::new();
        for r in revisions {
            match changed.remove(&r.id) {
                Some(e) => {
                    entries.insert(r.id, e);
                }
                None => match previous.entries.get(&r.id) {
                    Some(e) if e.revision == r.revision => {
                        entries.insert(r.id, e.clone());
                    }
                    _ => missing.push(r.id),
                },
            }
        }
        for chunk in missing.chunks(SYNC_PAGE_SIZE) {
            let (_, fetched, _) = self.sync_entries(previous.revision, chunk.to_vec()).await?;
            for e in fetched.into_iter().filter(|e| chunk.contains(&e.id)) {
                entries.insert(e.id.clone(), e);
            }
        }
        // Not trusted for the server yet: the manager first checks it may replace the
        // bundle held ([`Self::trust_server_bundle`]).
        let bundle = parse_bundle(&self.trust_domain, &last.bundle)?;
        Ok(SyncedEntries {
            revision: last.revision,
            entries,
            bundle: Some(bundle),
            tainted_authority_ids: last.tainted_authority_ids,
        })
    }
}

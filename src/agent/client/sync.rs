//! Entry sync from the agent's side, within the client's deadline per call.
//!
//! [`ServerClient::sync_delta`] syncs by cursor: the agent sends the opaque cursor of its
//! last sync and the `spiffe_sequence` of the bundle it holds, and gets only what changed
//! ([`SyncDelta`]), which the manager hands to the SVID cache, the agent's only copy of its
//! entries. An idle round is a few dozen bytes each way and touches no entry. The federated
//! bundles come the same way: the agent sends the digest of the set it holds, and the
//! server sends the whole set ([`FederatedUpdate`]) only when its own digest differs.
//! [`ServerClient::sync`] is the older protocol (every authorized ID and revision on every
//! round), kept for servers that do not sync by cursor (their answer carries no cursor);
//! its answer is made into a [`SyncDelta`] too, against the revisions the agent holds.

use std::collections::{BTreeMap, HashSet};

use keycard_workload_api::{SpiffeBundle, TrustDomain};
use prost::Message as _;

use super::{ClientError, ServerClient, bounded, parse_bundle};
use crate::wire::SYNC_PAGE_SIZE;
use crate::wire::proto as pb;

/// What the agent keeps of its syncs besides the entries (the SVID cache holds those).
#[derive(Debug, Clone, Default)]
pub struct SyncedEntries {
    /// The store revision the last sync reflects (0 before the first sync).
    pub revision: u64,
    /// The bundle as of the last sync.
    pub bundle: Option<SpiffeBundle>,
    /// IDs of tainted authorities: X.509 ones by hex subject key ID, JWT ones by `kid`.
    pub tainted_authority_ids: Vec<String>,
    /// The bundles of foreign trust domains as of the last sync that sent them (the ones
    /// that parsed; see the manager's federation rules).
    pub federated: BTreeMap<TrustDomain, SpiffeBundle>,
    /// The server's digest of the federated set, sent back with the next by-cursor sync
    /// (empty: none held, send it).
    pub federated_digest: Vec<u8>,
}

/// The whole federated bundle set from a by-cursor sync, as the server sent it: not parsed
/// yet (the manager parses each bundle on its own, so that one bad bundle costs only its
/// trust domain).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FederatedUpdate {
    /// Trust domain name (no `spiffe://`) => SPIFFE bundle JSON; empty: none any more.
    pub bundles: BTreeMap<String, Vec<u8>>,
    /// The digest to send with the next sync.
    pub digest: Vec<u8>,
}

/// What one by-cursor sync brought; see [`ServerClient::sync_delta`].
#[derive(Debug, Clone, Default)]
pub struct SyncDelta {
    /// The entries below are the agent's whole set, replacing its copy.
    pub full: bool,
    /// Entries changed (or, when `full`, every authorized entry).
    pub entries: Vec<pb::Entry>,
    /// IDs to drop.
    pub removed: Vec<String>,
    /// The server's bundle, sent only when its sequence differs from the one the agent said
    /// it holds. Not
    /// trusted yet: the manager checks it may replace the one held.
    pub bundle: Option<SpiffeBundle>,
    /// The tainted authority IDs, sent only when they changed.
    pub tainted_authority_ids: Option<Vec<String>>,
    /// The federated bundle set, sent only when the server's digest differs from the one
    /// the agent sent.
    pub federated: Option<FederatedUpdate>,
    /// The store revision the server's cache reflects.
    pub revision: u64,
    /// The cursor for the next sync; empty when the server does not sync by cursor (an
    /// older server: use [`ServerClient::sync`]).
    pub cursor: Vec<u8>,
    /// Encoded size of the request and of every response message (protobuf bytes, before
    /// gRPC framing and TLS).
    pub wire_bytes: usize,
}

impl ServerClient {
    /// One raw `SyncEntries` call: every page merged, in order.
    pub async fn sync_entries(
        &mut self,
        since_revision: u64,
        entry_ids: Vec<String>,
    ) -> Result<(Vec<pb::EntryRevision>, Vec<pb::Entry>, pb::SyncEntriesResponse), ClientError>
    {
        let request = self.request(pb::SyncEntriesRequest {
            since_revision,
            entry_ids,
            ..Default::default()
        });
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

    /// [`ServerClient::sync_federated`] for an agent that holds no federated bundles.
    pub async fn sync_delta(
        &mut self,
        cursor: &[u8],
        bundle_sequence: u64,
        since_revision: u64,
    ) -> Result<SyncDelta, ClientError> {
        self.sync_federated(cursor, bundle_sequence, since_revision, &[]).await
    }

    /// One by-cursor `SyncEntries` call: what changed since `cursor` (empty: everything),
    /// the bundle only if the server's `spiffe_sequence` is not `bundle_sequence` (0: the
    /// agent holds none), the federated bundles only if the server's digest of them is not
    /// `federated_digest` (empty: the agent holds none). `since_revision` is sent too, for
    /// a server that ignores cursors.
    pub async fn sync_federated(
        &mut self,
        cursor: &[u8],
        bundle_sequence: u64,
        since_revision: u64,
        federated_digest: &[u8],
    ) -> Result<SyncDelta, ClientError> {
        let message = pb::SyncEntriesRequest {
            since_revision,
            entry_ids: Vec::new(),
            by_cursor: true,
            cursor: cursor.to_vec(),
            bundle_sequence,
            federated_digest: federated_digest.to_vec(),
        };
        let sent = message.encoded_len();
        let request = self.request(message);
        let grpc = &mut self.grpc;
        let call = async move {
            let mut stream = grpc.sync_entries(request).await?.into_inner();
            let mut delta = SyncDelta { wire_bytes: sent, ..Default::default() };
            while let Some(mut page) = stream.message().await? {
                delta.wire_bytes += page.encoded_len();
                delta.entries.append(&mut page.entries);
                delta.removed.append(&mut page.removed_ids);
                if page.complete {
                    return Ok((delta, page));
                }
            }
            Err(ClientError::BadResponse("sync ended without a complete message".into()))
        };
        let result = bounded(self.request_timeout, "SyncEntries", call).await;
        let (mut delta, last) = self.checked(result).await?;
        if !last.bundle.is_empty() {
            delta.bundle = Some(parse_bundle(&self.trust_domain, &last.bundle)?);
        }
        delta.tainted_authority_ids = last.tainted_included.then_some(last.tainted_authority_ids);
        delta.federated = last.federated_included.then(|| FederatedUpdate {
            bundles: last.federated_bundles.into_iter().collect(),
            digest: last.federated_digest,
        });
        (delta.full, delta.revision, delta.cursor) = (last.full, last.revision, last.cursor);
        Ok(delta)
    }

    /// The revision-list sync, as a [`SyncDelta`] against `held` (the entries the agent
    /// holds with their revisions, sorted by ID): the entries changed since
    /// `since_revision`, those listed with another revision than held (or not held),
    /// fetched by ID, and the held ones no longer listed as `removed`. The bundle and the
    /// tainted list are always sent; the cursor stays empty.
    pub async fn sync<I: AsRef<str>>(
        &mut self,
        since_revision: u64,
        held: &[(I, u64)],
    ) -> Result<SyncDelta, ClientError> {
        let (revisions, changed, last) = self.sync_entries(since_revision, Vec::new()).await?;
        let held_revision =
            |id: &str| held.binary_search_by(|(h, _)| h.as_ref().cmp(id)).ok().map(|at| held[at].1);
        let mut changed: BTreeMap<String, pb::Entry> =
            changed.into_iter().map(|e| (e.id.clone(), e)).collect();
        let mut delta = SyncDelta::default();
        let mut missing = Vec::new();
        let mut listed = HashSet::new();
        for r in revisions {
            match changed.remove(&r.id) {
                Some(e) => delta.entries.push(e),
                None if held_revision(&r.id) == Some(r.revision) => {}
                None => missing.push(r.id.clone()),
            }
            listed.insert(r.id);
        }
        for chunk in missing.chunks(SYNC_PAGE_SIZE) {
            let (_, fetched, _) = self.sync_entries(since_revision, chunk.to_vec()).await?;
            delta.entries.extend(fetched.into_iter().filter(|e| chunk.contains(&e.id)));
        }
        delta.removed = held
            .iter()
            .map(|(id, _)| id.as_ref())
            .filter(|id| !listed.contains(*id))
            .map(str::to_owned)
            .collect();
        // Not trusted yet: the manager first checks it may replace the bundle held (and
        // only then trusts it for the server, [`Self::trust_server_bundle`]).
        delta.bundle = Some(parse_bundle(&self.trust_domain, &last.bundle)?);
        delta.tainted_authority_ids = Some(last.tainted_authority_ids);
        delta.revision = last.revision;
        // This protocol carries no federated bundles.
        Ok(delta)
    }
}

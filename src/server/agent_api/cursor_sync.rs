//! `SyncEntries` by cursor: the answer holds only what changed for the calling agent since
//! its previous sync, so an idle agent costs a few dozen bytes and no work per entry.
//!
//! The cursor the server hands out is opaque to the agent: 32 bytes, the event log's epoch
//! and position ([`super::event_log`]), a fingerprint of the agent's ID and node selectors
//! it was served for, and a fingerprint of the tainted authority list sent. The answer is:
//! - the whole authorized set (`full`) when the cursor is missing, malformed, of another
//!   epoch (a restart, another server), older than the log, when the agent's ID or
//!   selectors changed (re-attestation), or when a node alias it matches changed;
//! - otherwise the entries changed for it and the IDs it must drop;
//! - the bundle only when the server's `spiffe_sequence` differs from the agent's: above
//!   it, the agent adopts it; below it (a server restored from a backup), the agent refuses
//!   it and reports the refusal every round, as it did when every sync carried the bundle;
//! - the tainted authority IDs only when their fingerprint differs (or the answer is full);
//! - the foreign bundles (all the server holds) only when their digest differs from the
//!   agent's.
//!
//! An agent that lies in its cursor gains nothing: what is sent is always taken from the
//! entries authorized for it now.

use std::hash::{DefaultHasher, Hash as _, Hasher as _};

use super::authorized::AgentSync;
use super::error::AgentApiError;
use super::proto as pb;
use super::service::entry_to_proto;
use super::state::Inner;
use crate::server::datastore::AgentRecord;
use crate::server::federation::foreign::ForeignSet;
use crate::wire::SYNC_PAGE_SIZE;

/// Removed IDs per message (an ID is a few dozen bytes).
const REMOVED_PER_PAGE: usize = 10 * SYNC_PAGE_SIZE;
/// Encoded cursor length.
const CURSOR_LEN: usize = 32;

/// What a cursor says; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The event log's epoch.
    pub epoch: u64,
    /// The position in the log.
    pub position: u64,
    /// Fingerprint of the agent ID and selectors it was served for.
    pub agent: u64,
    /// Fingerprint of the tainted authority IDs sent.
    pub tainted: u64,
}

impl Cursor {
    /// The bytes sent to the agent.
    pub fn encode(&self) -> Vec<u8> {
        [self.epoch, self.position, self.agent, self.tainted]
            .iter()
            .flat_map(|n| n.to_be_bytes())
            .collect()
    }

    /// Reads a cursor back; None for anything but one this module wrote.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != CURSOR_LEN {
            return None;
        }
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            u64::from_be_bytes(b)
        };
        Some(Self { epoch: word(0), position: word(1), agent: word(2), tainted: word(3) })
    }
}

/// Fingerprint of what decides an agent's authorized set besides the entries: its ID and
/// node selectors. (Stable within one server process, which is all a cursor lives for.)
pub fn agent_fingerprint(agent: &AgentRecord) -> u64 {
    let mut h = DefaultHasher::new();
    agent.id.to_string().hash(&mut h);
    for s in agent.selectors.iter() {
        s.to_string().hash(&mut h);
    }
    h.finish()
}

/// Fingerprint of a tainted authority list.
pub fn tainted_fingerprint(ids: &[String]) -> u64 {
    let mut h = DefaultHasher::new();
    ids.hash(&mut h);
    h.finish()
}

/// The pages of a by-cursor answer for `agent`.
pub fn answer(
    inner: &Inner,
    agent: &AgentRecord,
    req: &pb::SyncEntriesRequest,
    foreign: &ForeignSet,
) -> Result<Vec<pb::SyncEntriesResponse>, AgentApiError> {
    let fingerprint = agent_fingerprint(agent);
    let cursor = Cursor::decode(&req.cursor).filter(|c| c.agent == fingerprint);
    let sync =
        inner.cache.sync_for(&agent.id, &agent.selectors, cursor.map(|c| (c.epoch, c.position)));
    let tainted = inner.ca.tainted_authorities();
    let tainted_fp = tainted_fingerprint(&tainted);
    let tainted_included = sync.full || cursor.is_none_or(|c| c.tainted != tainted_fp);
    let bundle = inner.ca.bundle().map_err(AgentApiError::Ca)?;
    let bundle_differs = bundle.sequence.is_none_or(|seq| seq != req.bundle_sequence);
    let bundle = if bundle_differs {
        bundle.to_json().map_err(|e| AgentApiError::Setup(e.to_string()))?.into_bytes()
    } else {
        Vec::new()
    };
    // Every foreign bundle held: the agent serves each caller those its entries name.
    let federated_included = req.federated_digest != foreign.digest;
    let federated_bundles = match federated_included {
        true => foreign.bundles.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        false => Default::default(),
    };
    let next = Cursor {
        epoch: sync.epoch,
        position: sync.position,
        agent: fingerprint,
        tainted: tainted_fp,
    };
    let AgentSync { revision, full, changed, removed, .. } = sync;
    let entries: Vec<_> = changed.values().collect();
    let mut pages: Vec<pb::SyncEntriesResponse> = entries
        .chunks(SYNC_PAGE_SIZE)
        .map(|chunk| pb::SyncEntriesResponse {
            entries: chunk.iter().map(|e| entry_to_proto(e)).collect(),
            ..Default::default()
        })
        .collect();
    pages.extend(removed.chunks(REMOVED_PER_PAGE).map(|chunk| pb::SyncEntriesResponse {
        removed_ids: chunk.to_vec(),
        ..Default::default()
    }));
    pages.push(pb::SyncEntriesResponse {
        complete: true,
        revision,
        bundle,
        tainted_authority_ids: if tainted_included { tainted } else { Vec::new() },
        full,
        cursor: next.encode(),
        tainted_included,
        federated_included,
        federated_bundles,
        federated_digest: foreign.digest.clone(),
        ..Default::default()
    });
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_and_nothing_else_does() {
        let c = Cursor { epoch: 1 << 63, position: 7, agent: 42, tainted: u64::MAX };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(c.encode().len(), CURSOR_LEN);
        assert_eq!(Cursor::decode(&c.encode()[..31]), None);
        assert_eq!(Cursor::decode(b""), None);
        assert_ne!(tainted_fingerprint(&[]), tainted_fingerprint(&["a".into()]));
    }
}

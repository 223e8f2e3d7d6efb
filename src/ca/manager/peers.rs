//! The authorities of the other servers sharing this server's datastore (HA).
//!
//! Each server signs with its own authorities (their keys are on its own disk) and keeps
//! its own journal. Every server publishes the authorities of all of them, so an agent
//! trusts an SVID whichever server signed it, and a server accepts an agent whose SVID
//! another server signed. The server reads its peers' journals and the operators' marks
//! from the datastore on a timer and hands them here ([`CaManager::set_peers`]); the
//! bundle, the X.509 roots and the tainted list are then the union of its own and theirs.
//!
//! An operator may taint or revoke a peer's authority through any server: the mark is kept
//! in the datastore, every server applies it to the peer's authorities at once, and the
//! owner applies it to its own journal on its next read ([`CaManager::apply_marks`]).

use std::collections::BTreeMap;
use std::time::SystemTime;

use super::{AuthorityKind, CaError, CaManager};
use crate::ca::journal::{AuthorityMark, AuthorityRecord, Journal, JournalError};

/// The peers' journals as last read, with operators' marks applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peers {
    /// Each other server's journal, by server ID.
    pub journals: BTreeMap<String, Journal>,
    /// How many marks exist (a tainted one counts 1, a revoked one 2), so that the bundle
    /// sequence rises when a mark changes what peers publish.
    pub mark_weight: u64,
}

impl Peers {
    /// Builds the peers' view from their journals and every mark: a tainted mark taints the
    /// authority, a revoked one removes it.
    pub fn new(journals: BTreeMap<String, Journal>, marks: &[(String, AuthorityMark)]) -> Self {
        let marks: BTreeMap<&str, AuthorityMark> =
            marks.iter().map(|(id, m)| (id.as_str(), *m)).collect();
        let mut journals = journals;
        for journal in journals.values_mut() {
            for kind in [AuthorityKind::X509, AuthorityKind::Jwt] {
                let set = journal.set_mut(kind);
                set.records.retain(|r| marks.get(r.id.as_str()) != Some(&AuthorityMark::Revoked));
                for r in &mut set.records {
                    if marks.contains_key(r.id.as_str()) {
                        r.tainted = true;
                    }
                }
            }
        }
        let mark_weight = marks
            .values()
            .map(|m| match m {
                AuthorityMark::Tainted => 1,
                AuthorityMark::Revoked => 2,
            })
            .sum();
        Self { journals, mark_weight }
    }

    /// Every unexpired authority of `kind` that the peers publish, with its server's ID.
    pub fn records(
        &self,
        kind: AuthorityKind,
        now: SystemTime,
    ) -> impl Iterator<Item = (&str, &AuthorityRecord)> {
        self.journals.iter().flat_map(move |(server, journal)| {
            journal
                .set(kind)
                .records
                .iter()
                .filter(move |r| r.not_after() > now)
                .map(move |r| (server.as_str(), r))
        })
    }

    /// The sum the bundle sequence adds for the peers.
    pub fn sequence(&self) -> u64 {
        self.journals.values().map(|j| j.bundle_sequence).sum::<u64>() + self.mark_weight
    }

    /// Which server owns authority `id` of `kind`, and whether `mark` may be set on it
    /// there (the journal's own rules: only an old authority is tainted, only a tainted
    /// one revoked).
    pub fn check_mark(
        &self,
        kind: AuthorityKind,
        id: &str,
        mark: AuthorityMark,
    ) -> Result<Option<String>, CaError> {
        for (server, journal) in &self.journals {
            if journal.set(kind).get(id).is_none() {
                continue;
            }
            let mut copy = journal.clone();
            let set = copy.set_mut(kind);
            match mark {
                AuthorityMark::Tainted => set.taint(kind, id)?,
                AuthorityMark::Revoked => set.revoke(kind, id).map(drop)?,
            }
            return Ok(Some(server.clone()));
        }
        Ok(None)
    }
}

impl CaManager {
    /// Replaces the peers' view (see the module documentation).
    pub fn set_peers(&self, peers: Peers) {
        *self.peers.write().unwrap_or_else(|p| p.into_inner()) = peers;
    }

    /// The peers' view as last set.
    pub fn peers(&self) -> Peers {
        self.read_peers().clone()
    }

    /// The peers' view, borrowed (bundle and tainted lists are built under it).
    pub(super) fn read_peers(&self) -> std::sync::RwLockReadGuard<'_, Peers> {
        self.peers.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies operators' marks to this server's own authorities that do not carry them
    /// yet: taint, then revoke, through the same commands an operator uses here. Returns
    /// how many it applied. A mark the journal's rules refuse (an authority that became
    /// active again cannot be, so this is only a stale mark) is logged and skipped.
    pub fn apply_marks(&self, marks: &[(String, AuthorityMark)]) -> usize {
        let mut applied = 0;
        for (id, mark) in marks {
            let journal = self.journal();
            for kind in [AuthorityKind::X509, AuthorityKind::Jwt] {
                let Some(record) = journal.set(kind).get(id) else { continue };
                let mut steps = Vec::new();
                if !record.tainted {
                    steps.push(AuthorityMark::Tainted);
                }
                if *mark == AuthorityMark::Revoked {
                    steps.push(AuthorityMark::Revoked);
                }
                for step in steps {
                    let result = match step {
                        AuthorityMark::Tainted => self.taint(kind, id),
                        AuthorityMark::Revoked => self.revoke(kind, id),
                    };
                    match result {
                        Ok(()) => applied += 1,
                        Err(e) => {
                            tracing::warn!(id = %id, mark = step.as_str(), error = %e,
                                "an operator's mark on this server's authority cannot be applied");
                            break;
                        }
                    }
                }
            }
        }
        applied
    }
}

/// Whether `e` says the authority is unknown (so another server may own it).
pub fn is_unknown(e: &CaError) -> bool {
    matches!(e, CaError::Journal(JournalError::Unknown { .. }))
}

//! Several servers on one datastore (HA): what each server shares with the others.
//!
//! Every server has its own ID (`<data_dir>/server_id`), signs with its own authorities and
//! saves its own journal in the shared datastore. On every [`Cluster::refresh`] (each
//! rotation tick) a server
//! - announces itself (ID, agent API address, time), so that `/ready` and `healthcheck`
//!   on any server list the peers it sees;
//! - reads the other servers' journals and the operators' authority marks, and hands them
//!   to its CA, which then publishes every server's authorities in its bundle and trusts
//!   agents whose SVID another server signed;
//! - applies marks set on its own authorities through another server.
//!
//! Entries, agents, join tokens and federated bundles need nothing here: they live in the
//! datastore, and every server reads them from it.
//!
//! A single server with SQLite runs the same code and simply sees no peers.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use super::datastore::{AuthorityMark, DataStore, DataStoreError, ServerRecord, parse_journal};
use crate::ca::manager::Peers;
use crate::ca::manager::peers::is_unknown;
use crate::ca::{AuthorityKind, CaError, CaManager};
use crate::clock::Clock;

/// A peer not announced for this long is reported as not seen.
pub const PEER_STALE_AFTER: Duration = Duration::from_secs(30);

/// This server's part in the deployment; see the module documentation.
#[derive(Debug)]
pub struct Cluster {
    store: Arc<dyn DataStore>,
    ca: Arc<CaManager>,
    clock: Arc<dyn Clock>,
    /// This server's ID.
    pub server_id: String,
    /// This server's agent API address, as announced.
    pub address: String,
    /// The servers as last read (this one included).
    servers: RwLock<Vec<ServerRecord>>,
}

/// A peer as `/ready` and `healthcheck` report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer's server ID.
    pub id: String,
    /// Its agent API address.
    pub address: String,
    /// Its last announcement.
    pub last_seen: SystemTime,
    /// Whether that was recent (within [`PEER_STALE_AFTER`]).
    pub live: bool,
}

/// Why an operator's command on an authority failed.
#[derive(Debug, thiserror::Error)]
pub enum MarkError {
    /// The CA refused (unknown authority, or the journal's rules).
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The datastore failed.
    #[error(transparent)]
    DataStore(#[from] DataStoreError),
}

impl Cluster {
    /// This server (`server_id`, agent API at `address`) on `store`.
    pub fn new(
        store: Arc<dyn DataStore>,
        ca: Arc<CaManager>,
        clock: Arc<dyn Clock>,
        server_id: String,
        address: String,
    ) -> Self {
        Self { store, ca, clock, server_id, address, servers: RwLock::new(Vec::new()) }
    }

    /// Announces this server, reads the peers' journals and the marks, applies marks on
    /// this server's authorities and hands the peers to the CA. Blocks on the datastore.
    /// On an error the CA keeps the peers it had.
    pub fn refresh(&self) -> Result<(), DataStoreError> {
        let now = self.clock.now();
        self.store.announce_server(&ServerRecord {
            id: self.server_id.clone(),
            address: self.address.clone(),
            last_seen: now,
        })?;
        let marks = self.store.authority_marks()?;
        if !marks.is_empty() {
            self.ca.apply_marks(&marks);
        }
        let mut journals = BTreeMap::new();
        for (id, bytes) in self.store.list_journals()? {
            if id == self.server_id {
                continue;
            }
            match parse_journal(&bytes) {
                Ok(journal) => {
                    journals.insert(id, journal);
                }
                Err(e) => {
                    tracing::error!(server = %id, error = %e, "a peer's authority journal cannot be read; its authorities are not published");
                }
            }
        }
        let peers = Peers::new(journals, &marks);
        if peers != self.ca.peers() {
            tracing::info!(
                peers = peers.journals.len(),
                sequence = peers.sequence(),
                "the peers' authorities changed"
            );
            self.ca.set_peers(peers);
        }
        let servers = self.store.list_servers()?;
        *self.servers.write().unwrap_or_else(|p| p.into_inner()) = servers;
        Ok(())
    }

    /// This server's CA.
    pub fn ca(&self) -> &Arc<CaManager> {
        &self.ca
    }

    /// The datastore's kind (`sqlite`, `postgres`).
    pub fn datastore_kind(&self) -> &'static str {
        self.store.kind()
    }

    /// The other servers as last read.
    pub fn peers(&self) -> Vec<PeerStatus> {
        let now = self.clock.now();
        let servers = self.servers.read().unwrap_or_else(|p| p.into_inner());
        servers
            .iter()
            .filter(|s| s.id != self.server_id)
            .map(|s| PeerStatus {
                id: s.id.clone(),
                address: s.address.clone(),
                last_seen: s.last_seen,
                live: now.duration_since(s.last_seen).unwrap_or_default() < PEER_STALE_AFTER,
            })
            .collect()
    }

    /// Taints authority `id` of `kind`, this server's or a peer's (then by a mark that
    /// every server applies, checked by the peer's journal rules first).
    pub fn taint(&self, kind: AuthorityKind, id: &str) -> Result<(), MarkError> {
        self.command(kind, id, AuthorityMark::Tainted)
    }

    /// Revokes authority `id` of `kind`, this server's or a peer's.
    pub fn revoke(&self, kind: AuthorityKind, id: &str) -> Result<(), MarkError> {
        self.command(kind, id, AuthorityMark::Revoked)
    }

    fn command(&self, kind: AuthorityKind, id: &str, mark: AuthorityMark) -> Result<(), MarkError> {
        let own = match mark {
            AuthorityMark::Tainted => self.ca.taint(kind, id),
            AuthorityMark::Revoked => self.ca.revoke(kind, id),
        };
        let unknown = match own {
            Err(e) if is_unknown(&e) => e,
            other => return Ok(other?),
        };
        // Not this server's: perhaps a peer's (read afresh, so a just-made one is found).
        self.refresh()?;
        match self.ca.peers().check_mark(kind, id, mark)? {
            None => Err(unknown.into()),
            Some(owner) => {
                self.store.set_authority_mark(id, mark)?;
                tracing::info!(target: crate::telemetry::AUDIT_TARGET, event = "authority_marked",
                    id, mark = mark.as_str(), owner = %owner);
                self.refresh()?;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests;

//! The server's durable state behind one trait, so that the embedded SQLite store (the
//! default) and a PostgreSQL store (for HA) are interchangeable.
//!
//! What it holds: registration entries (with a store-wide revision counter and tombstones
//! for deletions, so agents sync by difference), attested agents, join tokens (hashed,
//! expiring, single use), federated bundles and the CA's authority journal. Every method is
//! one transaction: a crash leaves the store as it was before the call or after it.
//!
//! The methods are synchronous; async callers run them with `tokio::task::spawn_blocking`.

use std::fmt;
use std::time::SystemTime;

use keycard_workload_api::{SpiffeId, TrustDomain};
use serde::{Deserialize, Serialize};

use super::entry::{Entry, EntrySpec};
use crate::selector::SelectorSet;

mod codec;
pub mod federation;
pub mod journal;
pub mod metered;
pub mod postgres;
pub mod sqlite;
#[cfg(test)]
mod suite;

pub use crate::ca::journal::AuthorityMark;
pub use federation::{EndpointProfile, FederationRecord, RefreshOutcome};
pub use journal::{DataStoreJournal, parse_journal};
pub use metered::MeteredDataStore;
pub use postgres::PostgresDataStore;
pub use sqlite::SqliteDataStore;

/// Largest page a list call returns, whatever the caller asks.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Page size when the caller gives none.
pub const DEFAULT_PAGE_SIZE: u32 = 100;

/// Why a datastore call failed.
#[derive(Debug, thiserror::Error)]
pub enum DataStoreError {
    /// No record with this key.
    #[error("{kind} {id} not found")]
    NotFound {
        /// What was looked for: "entry", "agent", ...
        kind: &'static str,
        /// The key.
        id: String,
    },
    /// An entry with the same SPIFFE ID, parent ID and selectors already exists.
    #[error("an entry with the same SPIFFE ID, parent ID and selectors already exists: {0}")]
    DuplicateEntry(String),
    /// A record with this key exists already (agent ID, token).
    #[error("{kind} {id} already exists")]
    AlreadyExists {
        /// What kind of record.
        kind: &'static str,
        /// The key.
        id: String,
    },
    /// A page token that this store did not hand out.
    #[error("invalid page token {0:?}; pass the next_page_token of the previous reply")]
    BadPageToken(String),
    /// Entries of a batch that the store refused; nothing of the batch was stored.
    #[error("{} entries of the batch refused{}", .0.len(), first_refusal(.0))]
    BatchRefused(Vec<BatchRefusal>),
    /// The database refused or failed (disk, corruption, lock timeout).
    #[error("datastore failure: {0}")]
    Backend(String),
    /// A stored row could not be decoded (the database was edited by hand or is corrupt).
    #[error("datastore holds a record it cannot read ({0}); restore from a backup")]
    Corrupt(String),
}

/// One entry of a batch that the store refused, by its position in the batch.
#[derive(Debug)]
pub struct BatchRefusal {
    /// Position in the batch, from 0.
    pub index: usize,
    /// Why (a duplicate, a missing entry).
    pub error: DataStoreError,
}

fn first_refusal(refused: &[BatchRefusal]) -> String {
    refused.first().map(|r| format!("; the first, #{}: {}", r.index, r.error)).unwrap_or_default()
}

/// One page of a list request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageRequest {
    /// Where to continue: the `next_token` of the previous page, or `None` for the first.
    pub token: Option<String>,
    /// How many items at most; 0 means the default, larger than the maximum is capped.
    pub size: u32,
}

impl PageRequest {
    /// The size to use: the default for 0, capped at [`MAX_PAGE_SIZE`].
    pub fn effective_size(&self) -> u32 {
        match self.size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        }
    }
}

/// One page of results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items, in a stable order.
    pub items: Vec<T>,
    /// The token for the next page; `None` when this is the last one.
    pub next_token: Option<String>,
}

/// Narrows an entry listing; every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryFilter {
    /// Only entries with this SPIFFE ID.
    pub spiffe_id: Option<SpiffeId>,
    /// Only entries with this parent ID.
    pub parent_id: Option<SpiffeId>,
    /// Only entries whose selectors are exactly these.
    pub selectors: Option<SelectorSet>,
}

/// What changed among entries after a revision: what an incremental cache needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryChanges {
    /// Entries created or updated after the revision asked for, by revision.
    pub changed: Vec<Entry>,
    /// IDs of entries deleted after that revision.
    pub deleted: Vec<String>,
    /// The store's revision when the changes were read: ask from here next time.
    pub revision: u64,
}

/// An agent that attested to the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// The agent's SPIFFE ID.
    pub id: SpiffeId,
    /// How it attested: `join_token` or `x509pop`.
    pub attestation_type: String,
    /// Selectors the node attestor found (entries match agents by them).
    pub selectors: SelectorSet,
    /// Serial number (hex) of the agent's newest SVID.
    pub svid_serial: String,
    /// Serial number (hex) of the SVID the agent renewed from, still accepted until the
    /// newest one is first presented: the agent may have lost the renewal's reply, or
    /// crashed before storing it, and a join-token agent cannot attest again.
    pub previous_svid_serial: Option<String>,
    /// Expiry of the agent's current SVID.
    pub svid_expires_at: SystemTime,
    /// A banned agent is refused everything until an operator evicts it.
    pub banned: bool,
    /// Whether the agent may attest again with the same ID (x509pop yes, join token no).
    pub can_reattest: bool,
    /// First attestation.
    pub created_at: SystemTime,
    /// Last attestation or renewal.
    pub updated_at: SystemTime,
}

/// A join token as stored: only a hash of the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinTokenRecord {
    /// SHA-256 of the token text.
    pub hash: [u8; 32],
    /// Short public name shown to operators and used in the default agent ID.
    pub token_id: String,
    /// The agent ID to assign, when the operator chose one.
    pub agent_id: Option<SpiffeId>,
    /// After this the token is refused.
    pub expires_at: SystemTime,
    /// When the token was used; a used token is refused.
    pub used_at: Option<SystemTime>,
}

impl fmt::Debug for JoinTokenRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinTokenRecord")
            .field("token_id", &self.token_id)
            .field("agent_id", &self.agent_id)
            .field("expires_at", &self.expires_at)
            .field("used_at", &self.used_at)
            .finish_non_exhaustive()
    }
}

/// The result of presenting a join token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenUse {
    /// The token was valid and is now used up.
    Accepted(JoinTokenRecord),
    /// No such token.
    Unknown,
    /// The token was used before.
    AlreadyUsed,
    /// The token expired.
    Expired,
}

/// A server of the deployment as it last announced itself: several servers (HA) share one
/// store, and each reports the others it sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRecord {
    /// The server's ID (stable across restarts: kept in its data directory).
    pub id: String,
    /// Where its agent API listens, as it sees itself.
    pub address: String,
    /// Its last announcement.
    pub last_seen: SystemTime,
}

/// The server's durable state; see the module documentation.
pub trait DataStore: Send + Sync + fmt::Debug {
    /// What kind of store this is, for `/ready` and `healthcheck`: `sqlite` or `postgres`.
    fn kind(&self) -> &'static str;

    /// Stores a new entry with a fresh ID and the next revision.
    fn create_entry(&self, spec: &EntrySpec, now: SystemTime) -> Result<Entry, DataStoreError>;
    /// Stores new entries in one transaction, each with a fresh ID and its own revision,
    /// in order: all of them, or none when any is refused (`BatchRefused` names each
    /// duplicate by its index).
    fn create_entries(
        &self,
        specs: &[EntrySpec],
        now: SystemTime,
    ) -> Result<Vec<Entry>, DataStoreError>;
    /// Deletes entries by ID in one transaction, each leaving a tombstone: all of them, or
    /// none when any is missing (`BatchRefused` names each by its index).
    fn delete_entries(&self, ids: &[String]) -> Result<Vec<Entry>, DataStoreError>;
    /// The entry with this ID.
    fn get_entry(&self, id: &str) -> Result<Option<Entry>, DataStoreError>;
    /// Replaces an entry's specification; bumps its revision.
    fn update_entry(
        &self,
        id: &str,
        spec: &EntrySpec,
        now: SystemTime,
    ) -> Result<Entry, DataStoreError>;
    /// Deletes an entry, leaving a tombstone at the next revision; returns what was deleted.
    fn delete_entry(&self, id: &str) -> Result<Entry, DataStoreError>;
    /// Entries matching `filter`, ordered by ID, one page at a time.
    fn list_entries(
        &self,
        filter: &EntryFilter,
        page: &PageRequest,
    ) -> Result<Page<Entry>, DataStoreError>;
    /// How many entries exist.
    fn count_entries(&self) -> Result<u64, DataStoreError>;
    /// Whether any entry has this SPIFFE ID (to check that a parent exists).
    fn entry_with_spiffe_id_exists(&self, id: &SpiffeId) -> Result<bool, DataStoreError>;
    /// A value that changes whenever anything is committed to the store, by this server or
    /// any other, read without waiting: `None` when the store cannot tell that cheaply (or
    /// is busy right now). Pollers read it before they read the store, and skip the next
    /// read while it is unchanged; so it must never block, and is called on async threads.
    fn change_mark(&self) -> Option<u64> {
        None
    }
    /// Changes after `revision` (0: everything), at most `limit` changed entries; when the
    /// limit cuts the list, the returned revision is that of the last entry returned.
    fn entry_changes_since(
        &self,
        revision: u64,
        limit: u32,
    ) -> Result<EntryChanges, DataStoreError>;

    /// Creates or replaces an agent record.
    fn upsert_agent(&self, agent: &AgentRecord) -> Result<(), DataStoreError>;
    /// The agent with this ID.
    fn get_agent(&self, id: &SpiffeId) -> Result<Option<AgentRecord>, DataStoreError>;
    /// Agents ordered by ID, one page at a time.
    fn list_agents(&self, page: &PageRequest) -> Result<Page<AgentRecord>, DataStoreError>;
    /// How many agents exist.
    fn count_agents(&self) -> Result<u64, DataStoreError>;
    /// Removes an agent (it must attest again); returns whether it existed.
    fn delete_agent(&self, id: &SpiffeId) -> Result<bool, DataStoreError>;
    /// Records a renewal of agent `id` atomically: if `presented` (the serial of the SVID
    /// that asked) is still one of its accepted serials, the newest becomes `new_serial`
    /// (expiring at `expires_at`) and `presented` stays accepted as the previous one;
    /// returns `false` (and changes nothing) when `presented` is no longer accepted.
    /// `NotFound` if there is no such agent.
    fn renew_agent_svid(
        &self,
        id: &SpiffeId,
        presented: &str,
        new_serial: &str,
        expires_at: SystemTime,
        now: SystemTime,
    ) -> Result<bool, DataStoreError>;
    /// The first call of agent `id` with its newest SVID `serial`: the previous serial is
    /// no longer accepted. Returns whether a previous serial was dropped.
    fn confirm_agent_svid(&self, id: &SpiffeId, serial: &str) -> Result<bool, DataStoreError>;
    /// Bans or unbans an agent; `NotFound` if there is no such agent.
    fn set_agent_banned(&self, id: &SpiffeId, banned: bool) -> Result<(), DataStoreError>;

    /// Stores a new join token.
    fn create_join_token(&self, token: &JoinTokenRecord) -> Result<(), DataStoreError>;
    /// Uses up the token with this hash, atomically: only one caller can ever get
    /// `Accepted` for a given token.
    fn use_join_token(&self, hash: &[u8; 32], now: SystemTime) -> Result<TokenUse, DataStoreError>;
    /// Whether an unexpired token, used or not, names this agent ID (so that the ID counts
    /// as an existing parent before the agent attests, and while it attests: the token is
    /// used before the agent record is written).
    fn join_token_reserves(
        &self,
        agent_id: &SpiffeId,
        now: SystemTime,
    ) -> Result<bool, DataStoreError>;
    /// Deletes tokens that expired before `before`; returns how many.
    fn prune_join_tokens(&self, before: SystemTime) -> Result<u64, DataStoreError>;

    /// The federated bundle (SPIFFE bundle JSON) of a foreign trust domain.
    fn get_bundle(&self, trust_domain: &TrustDomain) -> Result<Option<Vec<u8>>, DataStoreError>;
    /// Stores or replaces a federated bundle.
    fn set_bundle(&self, trust_domain: &TrustDomain, json: &[u8]) -> Result<(), DataStoreError>;
    /// Every federated bundle held, by trust domain name.
    fn list_bundles(&self) -> Result<Vec<(TrustDomain, Vec<u8>)>, DataStoreError>;
    /// Deletes a federated bundle; whether there was one.
    fn delete_bundle(&self, trust_domain: &TrustDomain) -> Result<bool, DataStoreError>;

    /// Stores a new federation relationship, with its bootstrap bundle if given, in one
    /// transaction. `AlreadyExists` when the trust domain has one.
    fn create_federation(
        &self,
        record: &FederationRecord,
        bootstrap: Option<&[u8]>,
    ) -> Result<(), DataStoreError>;
    /// Replaces a relationship's endpoint and profile (and its bundle, if `bootstrap` is
    /// given) and makes it due at once; `NotFound` when there is none. Refresh history
    /// and `created_at` are kept.
    fn update_federation(
        &self,
        record: &FederationRecord,
        bootstrap: Option<&[u8]>,
    ) -> Result<FederationRecord, DataStoreError>;
    /// One relationship.
    fn get_federation(
        &self,
        trust_domain: &TrustDomain,
    ) -> Result<Option<FederationRecord>, DataStoreError>;
    /// Every relationship, by trust domain name.
    fn list_federations(&self) -> Result<Vec<FederationRecord>, DataStoreError>;
    /// Deletes a relationship and the bundle held for it, in one transaction; the
    /// relationship as it was, `NotFound` when there is none.
    fn delete_federation(
        &self,
        trust_domain: &TrustDomain,
    ) -> Result<FederationRecord, DataStoreError>;
    /// Claims a due refresh: moves `next_refresh_at` from `seen` (what the caller read) to
    /// `until` only if nobody moved it since. Of several servers that saw the same due
    /// time, exactly one gets `true` and fetches.
    fn claim_federation_refresh(
        &self,
        trust_domain: &TrustDomain,
        seen: SystemTime,
        until: SystemTime,
    ) -> Result<bool, DataStoreError>;
    /// Records a fetch at `at` and the next due time, in one transaction; a fetched
    /// bundle replaces the one held. `false` when the relationship is gone (deleted
    /// meanwhile: the bundle is not stored).
    fn record_federation_refresh(
        &self,
        trust_domain: &TrustDomain,
        at: SystemTime,
        next_refresh_at: SystemTime,
        outcome: RefreshOutcome<'_>,
    ) -> Result<bool, DataStoreError>;

    /// The authority journal of server `server_id`, as last saved. Each server has its
    /// own (its keys are on its own disk). A store upgraded from before server IDs holds
    /// one journal without an ID: the first server that asks for a journal it does not
    /// have claims that one, atomically, so a single server keeps its authorities.
    fn load_journal(&self, server_id: &str) -> Result<Option<Vec<u8>>, DataStoreError>;
    /// Replaces the authority journal of server `server_id`.
    fn save_journal(&self, server_id: &str, bytes: &[u8]) -> Result<(), DataStoreError>;
    /// Every server's journal, by server ID: what the shared trust bundle is made of.
    fn list_journals(&self) -> Result<Vec<(String, Vec<u8>)>, DataStoreError>;
    /// Marks an authority (of any server); a revoked mark is never turned back into a
    /// tainted one.
    fn set_authority_mark(
        &self,
        authority_id: &str,
        mark: AuthorityMark,
    ) -> Result<(), DataStoreError>;
    /// Every authority mark, by authority ID.
    fn authority_marks(&self) -> Result<Vec<(String, AuthorityMark)>, DataStoreError>;
    /// Creates or refreshes a server's announcement.
    fn announce_server(&self, server: &ServerRecord) -> Result<(), DataStoreError>;
    /// Every server that ever announced itself, by ID.
    fn list_servers(&self) -> Result<Vec<ServerRecord>, DataStoreError>;

    /// Checks that the store answers (for `/ready`).
    fn ping(&self) -> Result<(), DataStoreError>;
}

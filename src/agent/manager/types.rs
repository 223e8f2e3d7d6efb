//! The manager's public vocabulary: its options, what a round reports, why a round
//! failed, and the hooks `agent run` plugs in (re-attestation, a round observer).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::super::cache::CacheError;
use super::super::client::{ClientError, ServerClient};
use super::{MAX_BATCH, Manager};
use crate::ca::KeyType;

/// Why a round failed.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// A call to the server failed; the cache keeps what it had.
    #[error(transparent)]
    Server(#[from] ClientError),
    /// The server's answer could not be taken into the cache.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// Making a workload key or its CSR failed.
    #[error("cannot make a workload key: {0}")]
    Key(String),
    /// The agent SVID expired before it could be renewed, and the agent cannot attest
    /// again by itself (a join token is single-use).
    #[error("the agent SVID expired; attest the agent again (a new join token, or x509pop)")]
    AgentExpired,
}

impl ManagerError {
    /// Whether attesting again could fix this: the agent SVID expired, or the server no
    /// longer accepts it (the agent was evicted, or its SVID was superseded).
    pub fn needs_reattestation(&self) -> bool {
        match self {
            Self::AgentExpired => true,
            Self::Server(ClientError::Rpc(status)) => matches!(
                status.code(),
                tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
            ),
            _ => false,
        }
    }
}

/// Makes a newly attested client, for when the agent SVID can no longer be renewed (x509pop
/// can attest again; a join token cannot).
pub type Reattest = Box<
    dyn FnMut() -> Pin<Box<dyn Future<Output = Result<ServerClient, ClientError>> + Send>> + Send,
>;

/// Told after every round of [`Manager::run_with`]: persists state, updates metrics.
pub trait RoundObserver: Send {
    /// `outcome` is the round's result; `manager` gives the client and synced entries.
    fn after_round(&mut self, manager: &Manager, outcome: &Result<TickReport, ManagerError>);
}

/// Observes nothing.
impl RoundObserver for () {
    fn after_round(&mut self, _: &Manager, _: &Result<TickReport, ManagerError>) {}
}

/// How the manager behaves.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    /// Time between rounds while the server answers.
    pub sync_interval: Duration,
    /// The most CSRs per call (capped at [`MAX_BATCH`]).
    pub max_batch: usize,
    /// First delay after a failed round.
    pub backoff_min: Duration,
    /// Longest delay between failed rounds.
    pub backoff_max: Duration,
    /// The type of the workload keys the agent makes.
    pub key_type: KeyType,
    /// How a round waits out the server's "retry after" (see [`Pacer`]).
    pub pacer: Arc<dyn Pacer>,
}

/// How a round waits before asking the server again after it answered "retry after" for
/// the agent's signing rate. The agent's clock cannot sleep, so the wait is injected with
/// it: [`SleepPacer`] waits for real, a test's pacer moves its manual clock (shared with
/// the server under test) instead. `agent run` stops a round that waits at shutdown.
pub trait Pacer: Send + Sync + std::fmt::Debug {
    /// Completes after `wait` (as the pacer's clock counts it).
    fn pause(&self, wait: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// Waits for real ([`tokio::time::sleep`]): the pacer of a manager on the system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SleepPacer;

impl Pacer for SleepPacer {
    fn pause(&self, wait: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(tokio::time::sleep(wait))
    }
}

impl Default for ManagerOptions {
    fn default() -> Self {
        Self {
            sync_interval: Duration::from_secs(5),
            max_batch: MAX_BATCH,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            key_type: KeyType::EcP256,
            pacer: Arc::new(SleepPacer),
        }
    }
}

/// What one round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Whether the agent SVID was renewed.
    pub agent_renewed: bool,
    /// Entries held after the sync.
    pub entries: usize,
    /// Entries dropped (with their SVIDs).
    pub removed: usize,
    /// Whether the sync changed what the agent holds (entries, bundle, tainted list or
    /// federated bundles):
    /// false on an idle round, so that nothing proportional to the entries is redone.
    pub synced_changed: bool,
    /// SVIDs issued for entries that had none (or had to be replaced at once).
    pub issued: usize,
    /// SVIDs renewed on schedule.
    pub renewed: usize,
    /// SVIDs the server refused or the cache rejected (an item the server paced is not
    /// counted here: see `rate_limited`).
    pub failed: usize,
    /// Items the server answered "retry after" for the agent's signing rate (asked again
    /// later in the round; an item paced twice counts twice).
    pub rate_limited: usize,
    /// Waits for the server's signing rate within the round.
    pub paced_waits: usize,
    /// Calls made to sign CSRs.
    pub batches: usize,
    /// Whether the agent had to attest again during the round.
    pub reattested: bool,
    /// Whether the bundle the server sent was refused (empty, or not a higher
    /// `spiffe_sequence`) and the held one kept.
    pub bundle_refused: bool,
}

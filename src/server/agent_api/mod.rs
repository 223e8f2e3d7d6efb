//! The agent API: gRPC over TLS between node agents and the server.
//!
//! The server presents its own SVID `spiffe://<td>/keycard/server` ([`server_svid`]),
//! re-minted from the CA before it expires. Agents attest once without a client
//! certificate ([`attest`]: `join_token` or `x509pop`), then call with their agent SVID,
//! which [`tls`] verifies against the CA's current bundle. The handlers ([`service`],
//! [`signing`]) take the agent's identity from the verified peer certificate, and
//! authorize entries from an in-memory view of the datastore ([`authorized`]) that keeps
//! serving its last good copy when the datastore fails. [`limits`] bounds attestations
//! per source address and signatures per agent; [`csr_check`] refuses CSRs that ask for
//! more than a public key; [`status`] is the one place errors become gRPC statuses.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use keycard_workload_api::{SpiffeId, TrustDomain};
use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;

use crate::ca::{CaError, CaManager};
use crate::clock::Clock;
use crate::server::datastore::{DataStore, DataStoreError};
use crate::telemetry::metrics::ServerMetrics;

pub mod attest;
pub mod authorized;
pub mod csr_check;
pub mod limits;
pub mod server_svid;
pub mod service;
pub mod signing;
pub mod status;
pub mod tls;

#[cfg(test)]
mod tests;

pub use limits::Rate;

/// Code generated from `proto/agent.proto`; lints are relaxed only here.
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::nursery)]
pub mod proto {
    tonic::include_proto!("keycard.agent.v1");
}

/// Largest gRPC message the server decodes (a bigger request gets `OutOfRange`).
pub const MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;
/// Most CSRs in one `BatchNewX509Svid` call.
pub const MAX_BATCH: usize = 500;
/// Most entries (revisions) in one `SyncEntries` message.
pub const SYNC_PAGE_SIZE: usize = 500;
/// Path prefix of the agent IDs keycard assigns itself (x509pop, default join-token IDs);
/// operators may choose other IDs for join tokens, so calls are authorized by agent record.
pub const AGENT_PATH_PREFIX: &str = "/keycard/agent/";

/// What the agent API needs from the server configuration.
#[derive(Debug, Clone)]
pub struct AgentApiOptions {
    /// The server's trust domain.
    pub trust_domain: TrustDomain,
    /// Lifetime of agent SVIDs.
    pub agent_svid_ttl: Duration,
    /// X.509-SVID lifetime for entries without their own.
    pub default_x509_ttl: Duration,
    /// JWT-SVID lifetime for entries without their own.
    pub default_jwt_ttl: Duration,
    /// Lifetime of the server's own TLS SVID (re-minted at half-life).
    pub server_svid_ttl: Duration,
    /// CAs that node certificates must chain to for `x509pop`; `None` disables x509pop.
    pub x509pop_ca_bundle: Option<Vec<CertificateDer<'static>>>,
    /// Attestations per source IP address.
    pub attest_rate: Rate,
    /// CSRs (and JWTs) signed per agent.
    pub sign_rate: Rate,
    /// Largest DER CSR accepted.
    pub max_csr_len: usize,
    /// How often the authorized-entry cache reads changes from the datastore.
    pub cache_refresh_interval: Duration,
}

impl AgentApiOptions {
    /// Defaults for `trust_domain`: agent SVIDs 1 h, X.509-SVIDs 1 h, JWT-SVIDs 5 min,
    /// server SVID 1 h, no x509pop, 1 attestation/s per address (burst 5), 500 CSRs/s per
    /// agent (burst 1000), CSRs up to 8 KiB, cache refresh every second.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            agent_svid_ttl: Duration::from_secs(3600),
            default_x509_ttl: Duration::from_secs(3600),
            default_jwt_ttl: Duration::from_secs(300),
            server_svid_ttl: Duration::from_secs(3600),
            x509pop_ca_bundle: None,
            attest_rate: Rate { per_second: 1.0, burst: 5.0 },
            sign_rate: Rate { per_second: 500.0, burst: 1000.0 },
            max_csr_len: crate::ca::DEFAULT_MAX_CSR_LEN,
            cache_refresh_interval: Duration::from_secs(1),
        }
    }

    /// The server's own SPIFFE ID.
    pub fn server_id(&self) -> SpiffeId {
        server_id(&self.trust_domain)
    }
}

/// `spiffe://<td>/keycard/server`.
pub fn server_id(trust_domain: &TrustDomain) -> SpiffeId {
    trust_domain.spiffe_id(crate::server::entry::SERVER_PATH).unwrap_or_else(|_| trust_domain.id())
}

/// Why an agent API request was refused or failed; [`status::to_status`] maps each variant
/// to its gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum AgentApiError {
    /// The call needs an agent SVID and the connection presented none.
    #[error("this call needs an agent SVID: attest first, then call over mTLS")]
    NoAgentSvid,
    /// The client certificate is not an agent ID.
    #[error("{0} is not an agent ID (agents have IDs under /keycard/agent/)")]
    NotAnAgent(String),
    /// No agent record for the presented SVID (evicted).
    #[error("agent {0} is not attested (evicted?); attest again")]
    UnknownAgent(String),
    /// The agent is banned.
    #[error("agent {0} is banned")]
    BannedAgent(String),
    /// The presented SVID is not the agent's current one.
    #[error("agent SVID serial {presented} is not the agent's current one; use the newest SVID")]
    StaleAgentSvid {
        /// Serial of the presented certificate.
        presented: String,
    },
    /// No join token with this secret.
    #[error("join token is unknown")]
    UnknownJoinToken,
    /// The join token was used before.
    #[error("join token was already used")]
    UsedJoinToken,
    /// The join token expired.
    #[error("join token has expired")]
    ExpiredJoinToken,
    /// An agent with this ID exists and may not attest again.
    #[error("agent {0} already attested and cannot attest again; evict it first")]
    CannotReattest(String),
    /// x509pop was asked for but no CA bundle is configured.
    #[error("x509pop attestation is not enabled on this server")]
    X509PopDisabled,
    /// The node certificate chain is unusable or untrusted.
    #[error("x509pop node certificate refused: {0}")]
    X509PopCertificate(String),
    /// The challenge signature does not verify with the node certificate's key.
    #[error("x509pop challenge signature does not verify with the node certificate's key")]
    X509PopSignature,
    /// The client broke the message protocol (missing or unexpected message).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The CSR is refused (size, encoding, signature, key).
    #[error("CSR refused: {0}")]
    Csr(CaError),
    /// The CSR asks to be a CA.
    #[error("CSR refused: it asks for a CA certificate (basicConstraints cA=true)")]
    CsrAsksForCa,
    /// The CSR carries more requested extensions than allowed.
    #[error("CSR refused: {0} requested extensions (at most {max})", max = csr_check::MAX_CSR_EXTENSIONS)]
    CsrTooManyExtensions(usize),
    /// The CSR asks for more than one URI SAN.
    #[error("CSR refused: it asks for {0} URI SANs; an SVID has exactly one")]
    CsrManyUriSans(usize),
    /// The CSR asks for an ID in another trust domain.
    #[error("CSR refused: it asks for {0}, outside this trust domain")]
    CsrForeignTrustDomain(String),
    /// The CSR asks for an ID other than the entry's.
    #[error("CSR refused: it asks for {asked} but the entry is {entry}")]
    CsrOtherId {
        /// The URI SAN in the CSR.
        asked: String,
        /// The entry's SPIFFE ID.
        entry: String,
    },
    /// Too many items in one call.
    #[error("{len} items in one call; at most {max}")]
    TooManyItems {
        /// Items received.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// No entry with this ID.
    #[error("entry {0} not found")]
    UnknownEntry(String),
    /// The entry exists but is not authorized for the calling agent.
    #[error("entry {0} is not authorized for this agent")]
    EntryNotAuthorized(String),
    /// Too many attestations from this address.
    #[error("too many attestations from {0}; retry later")]
    AttestRateLimited(String),
    /// The agent signs faster than its rate.
    #[error("signing rate limit exceeded for agent {0}; retry later")]
    SignRateLimited(String),
    /// The CA refused or failed.
    #[error("CA: {0}")]
    Ca(CaError),
    /// The datastore failed.
    #[error(transparent)]
    DataStore(#[from] DataStoreError),
    /// The server could not set up TLS or its listener.
    #[error("agent API setup failed: {0}")]
    Setup(String),
}

/// Runs the agent API on `listener` until `shutdown` completes.
///
/// Mints the server's TLS SVID from `ca` (and keeps re-minting it), loads the authorized
/// entry cache from `store` (and keeps it fresh), then serves TLS connections.
pub async fn serve(
    listener: TcpListener,
    options: AgentApiOptions,
    ca: Arc<CaManager>,
    store: Arc<dyn DataStore>,
    metrics: Arc<ServerMetrics>,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AgentApiError> {
    let server_svid = Arc::new(server_svid::ServerSvid::mint(
        ca.clone(),
        options.server_id(),
        options.server_svid_ttl,
        clock.clone(),
    )?);
    let cache = Arc::new(authorized::AuthorizedEntries::new(store.clone(), options.server_id()));
    cache.refresh().await;
    let tls_config = tls::server_config(ca.clone(), server_svid.clone(), &options.trust_domain)?;
    let svc = service::AgentService::new(options.clone(), ca, store, metrics, clock, cache.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let rotate = tokio::spawn(server_svid.clone().run(stop_rx.clone()));
    let refresh = tokio::spawn(cache.clone().run(options.cache_refresh_interval, stop_rx.clone()));
    let incoming = tls::incoming(listener, tls_config, stop_rx);
    let result = tonic::transport::Server::builder()
        .add_service(svc.into_server())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| AgentApiError::Setup(e.to_string()));
    let _ = stop_tx.send(true);
    let _ = rotate.await;
    let _ = refresh.await;
    result
}

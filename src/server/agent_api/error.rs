//! [`AgentApiError`]: every way an agent API request is refused or fails, one variant per
//! rule; [`super::status::to_status`] maps each to its gRPC code.

use crate::ca::CaError;
use crate::server::datastore::DataStoreError;

use super::csr_check;

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
    #[error(
        "join token was already used (a token works once): an agent whose SVID expired needs \
         `keycard agent evict --id <agent ID>` and a new token from `keycard token generate \
         --spiffe-id <agent ID>`"
    )]
    UsedJoinToken,
    /// The join token expired.
    #[error("join token has expired")]
    ExpiredJoinToken,
    /// An agent with this ID exists and may not attest again.
    #[error(
        "agent {0} already attested and cannot attest again with a join token: evict it with \
         `keycard agent evict --id {0}`, then give it a new token with `keycard token generate \
         --spiffe-id {0}` (its entries are kept)"
    )]
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
    /// The agent did not send the next attestation message in time.
    #[error("the agent sent no {step} within {after:?}")]
    AttestationTimeout {
        /// What was awaited.
        step: &'static str,
        /// How long the server waited.
        after: std::time::Duration,
    },
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
    /// A JWT-SVID of an entry bound to X.509 was asked for without a usable X.509-SVID.
    #[error(
        "entry {entry_id} binds its JWT-SVIDs to the caller's X.509-SVID, and {why}; the agent \
         must send the X.509-SVID its workload holds for the entry"
    )]
    BadBindingCertificate {
        /// The entry.
        entry_id: String,
        /// What is wrong with the certificate sent.
        why: String,
    },
    /// The entry exists but is not authorized for the calling agent.
    #[error("entry {0} is not authorized for this agent")]
    EntryNotAuthorized(String),
    /// Too many attestations from this address.
    #[error("too many attestations from {0}; retry later")]
    AttestRateLimited(String),
    /// The agent signs faster than its rate, and nothing of the call could be signed.
    #[error(
        "signing rate limit exceeded for agent {agent}; retry after {} ms",
        retry_after.as_nanos().div_ceil(1_000_000).max(1)
    )]
    SignRateLimited {
        /// The agent's ID.
        agent: String,
        /// When the bucket will hold the tokens the call asked for (up to its size); sent
        /// as [`crate::wire::RETRY_AFTER_METADATA`].
        retry_after: std::time::Duration,
    },
    /// The CA refused or failed.
    #[error("CA: {0}")]
    Ca(CaError),
    /// The datastore failed.
    #[error(transparent)]
    DataStore(#[from] DataStoreError),
    /// The server could not set up TLS or its listener.
    #[error("agent API setup failed: {0}")]
    Setup(String),
    /// The thread signing part of a batch failed (a bug); its items get this.
    #[error("signing failed on the server: {0}")]
    SigningTask(String),
}

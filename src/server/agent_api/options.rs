//! What the agent API takes from the server configuration, with SPIRE-like defaults.

use std::sync::Arc;
use std::time::Duration;

use keycard_workload_api::{SpiffeId, TrustDomain};
use rustls_pki_types::CertificateDer;

use super::limits::Rate;
use super::server_svid::ServerSvid;
use crate::wire::{ATTESTATION_STEP_TIMEOUT, REQUEST_TIMEOUT, server_id};

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
    /// The server's own TLS SVID, when the caller minted it to present it elsewhere too
    /// (the federation bundle endpoint): one identity for the server. `None`: the agent
    /// API mints its own. Either way the agent API keeps it renewed while it runs.
    pub server_svid: Option<Arc<ServerSvid>>,
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
    /// Longest a handler may run (an agent's own deadline, when shorter, applies).
    pub request_timeout: Duration,
    /// Longest the server waits for each message of an attestation (x509pop challenge).
    pub attestation_step_timeout: Duration,
    /// Whether `SyncEntries` answers by cursor when asked to. `false` answers every sync
    /// with the revision list, as a server from before cursors did (tests of the agent's
    /// fallback to that protocol).
    pub sync_by_cursor: bool,
}

impl AgentApiOptions {
    /// Defaults for `trust_domain`: agent SVIDs 1 h, X.509-SVIDs 1 h, JWT-SVIDs 5 min,
    /// server SVID 1 h, no x509pop, 1 attestation/s per address (burst 5), 500 CSRs/s per
    /// agent (burst 1000), CSRs up to 8 KiB, cache refresh every second, and the wire's
    /// request and attestation-step timeouts.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            agent_svid_ttl: Duration::from_secs(3600),
            default_x509_ttl: Duration::from_secs(3600),
            default_jwt_ttl: Duration::from_secs(300),
            server_svid_ttl: Duration::from_secs(3600),
            server_svid: None,
            x509pop_ca_bundle: None,
            attest_rate: Rate { per_second: 1.0, burst: 5.0 },
            sign_rate: Rate { per_second: 500.0, burst: 1000.0 },
            max_csr_len: crate::ca::DEFAULT_MAX_CSR_LEN,
            cache_refresh_interval: Duration::from_secs(1),
            request_timeout: REQUEST_TIMEOUT,
            attestation_step_timeout: ATTESTATION_STEP_TIMEOUT,
            sync_by_cursor: true,
        }
    }

    /// The server's own SPIFFE ID.
    pub fn server_id(&self) -> SpiffeId {
        server_id(&self.trust_domain)
    }
}

//! The contract between agent and server: the agent API protos and every constant or
//! message both sides must agree on. The agent and the server import this module and
//! never each other, so a change here is a change to the wire.

use std::sync::Arc;
use std::time::Duration;

use keycard_workload_api::{SpiffeId, TrustDomain};
use rustls::crypto::CryptoProvider;

/// Code generated from `proto/agent.proto`; lints are relaxed only here.
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::nursery)]
pub mod proto {
    tonic::include_proto!("keycard.agent.v1");
}

mod debug;
pub mod oversized;

/// Largest gRPC message either side decodes (a bigger one gets `ResourceExhausted`, see
/// [`oversized`]).
pub const MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;
/// Most CSRs in one `BatchNewX509Svid` call.
pub const MAX_BATCH: usize = 500;
/// Most entries (revisions) in one `SyncEntries` message.
pub const SYNC_PAGE_SIZE: usize = 500;
/// Most audiences in one JWT-SVID request. Each audience is echoed into the token, so an
/// unbounded list made megabyte tokens and log lines; 32 is far above any real use.
pub const MAX_JWT_AUDIENCES: usize = 32;
/// Longest JWT-SVID audience, in bytes (URLs and SPIFFE IDs fit easily).
pub const MAX_JWT_AUDIENCE_LEN: usize = 256;

/// Why a JWT-SVID audience list is refused (none, an empty one, too many, too long), or
/// `None` when it is acceptable. The Workload API and the server's mint path both ask.
pub fn audience_problem(audiences: &[String]) -> Option<String> {
    if audiences.is_empty() || audiences.iter().any(String::is_empty) {
        return Some("audience must be specified, and no audience may be empty".into());
    }
    if audiences.len() > MAX_JWT_AUDIENCES {
        return Some(format!(
            "{} audiences; a JWT-SVID may carry at most {MAX_JWT_AUDIENCES}",
            audiences.len()
        ));
    }
    audiences
        .iter()
        .find(|a| a.len() > MAX_JWT_AUDIENCE_LEN)
        .map(|a| format!("an audience is {} bytes; the limit is {MAX_JWT_AUDIENCE_LEN}", a.len()))
}

/// Path prefix of the agent IDs keycard assigns itself (x509pop, default join-token IDs);
/// operators may choose other IDs for join tokens, so calls are authorized by agent record.
pub const AGENT_PATH_PREFIX: &str = "/keycard/agent/";
/// Path of the server's own SVID, which agents pin when they connect.
pub const SERVER_PATH: &str = "/keycard/server";

/// What an x509pop agent signs before the nonce, so the signature means nothing elsewhere.
pub const CHALLENGE_CONTEXT: &[u8] = b"keycard x509pop challenge v1\0";
/// Length of the x509pop nonce.
pub const NONCE_LEN: usize = 32;

/// Longest an agent waits for one call to the server (a unary call, or a whole
/// `SyncEntries` or `AttestAgent` stream), and longest the server lets a handler run: a
/// server or a connection that stops answering fails the agent's round, it does not hang it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest the server waits for each message of an attestation (the params, the answer to
/// an x509pop challenge); an agent that says nothing more is dropped.
pub const ATTESTATION_STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often each side sends an HTTP/2 PING on an open connection to the other, so that a
/// half-open connection (peer gone without a FIN) is noticed.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a PING may go unanswered before the connection is closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// gRPC metadata key of a `ResourceExhausted` answer that says when to retry: whole
/// milliseconds, decimal. The server sets it when it could sign nothing of a call; a batch
/// item refused for the rate carries the same figure in its `retry_after_ms` field.
pub const RETRY_AFTER_METADATA: &str = "retry-after-ms";

/// `status` with a [`RETRY_AFTER_METADATA`] of `after` (whole milliseconds, rounded up).
pub fn with_retry_after(mut status: tonic::Status, after: Duration) -> tonic::Status {
    let millis = after.as_nanos().div_ceil(1_000_000).max(1);
    if let Ok(value) = millis.to_string().parse() {
        status.metadata_mut().insert(RETRY_AFTER_METADATA, value);
    }
    status
}

/// The retry-after a `ResourceExhausted` `status` carries, if any (other codes have none).
pub fn retry_after(status: &tonic::Status) -> Option<Duration> {
    if status.code() != tonic::Code::ResourceExhausted {
        return None;
    }
    let millis = status.metadata().get(RETRY_AFTER_METADATA)?.to_str().ok()?.parse().ok()?;
    Some(Duration::from_millis(millis))
}

/// The bytes an x509pop agent signs for `nonce`.
pub fn challenge_message(nonce: &[u8]) -> Vec<u8> {
    [CHALLENGE_CONTEXT, nonce].concat()
}

/// `spiffe://<td>/keycard/server`.
pub fn server_id(trust_domain: &TrustDomain) -> SpiffeId {
    trust_domain.spiffe_id(SERVER_PATH).unwrap_or_else(|_| trust_domain.id())
}

/// The ring provider every keycard TLS configuration uses.
pub fn tls_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

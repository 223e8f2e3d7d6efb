//! The agent's own identity (its SVID and key) and [`ClientError`], the ways a call to the
//! server fails; shared by the client ([`super::client`]) and its TLS set-up
//! ([`super::server_tls`]).

use std::sync::Arc;
use std::time::SystemTime;

use keycard_workload_api::SpiffeId;
use rustls::pki_types::CertificateDer;

use crate::ca::{CaError, SigningKey};

/// Why a call to the server failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached or the TLS handshake failed.
    #[error("cannot connect to the server at {addr}: {reason}")]
    Connect {
        /// The address dialled.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The server refused the call.
    #[error("server refused: {}: {}", .0.code(), .0.message())]
    Rpc(#[from] tonic::Status),
    /// The server answered with something unusable (bad SVID, bad bundle, protocol error).
    #[error("bad answer from the server: {0}")]
    BadResponse(String),
    /// The call needs an agent SVID and this client has none.
    #[error("not attested: attest first")]
    NotAttested,
    /// Making or using a key failed.
    #[error("key: {0}")]
    Key(#[from] CaError),
}

/// The agent's SVID and key.
#[derive(Debug, Clone)]
pub struct AgentIdentity {
    /// The agent ID.
    pub spiffe_id: SpiffeId,
    /// The SVID chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The SVID's private key.
    pub key: Arc<SigningKey>,
    /// The SVID's serial number, hex.
    pub serial: String,
    /// The SVID's `notAfter`.
    pub expires_at: SystemTime,
}

//! The agent's own identity (its SVID and key) and [`ClientError`], the ways a call to the
//! server fails; shared by the client ([`super::client`]) and its TLS set-up
//! ([`super::server_tls`]); and the checks a new agent SVID passes before it is used.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keycard_workload_api::{SpiffeId, X509Bundle, X509BundleSet};
use rustls::pki_types::{CertificateDer, UnixTime};

use crate::ca::{CaError, SigningKey};
use crate::wire::proto as pb;

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
    /// The server did not answer in time (it, or the connection, stopped answering).
    #[error("the server did not answer {call} within {after:?}")]
    Timeout {
        /// The call.
        call: &'static str,
        /// The deadline it had.
        after: Duration,
    },
    /// The call needs an agent SVID and this client has none.
    #[error("not attested: attest first")]
    NotAttested,
    /// Making or using a key failed.
    #[error("key: {0}")]
    Key(#[from] CaError),
    /// A new agent SVID could not be stored, so it is not used: the server keeps accepting
    /// the current one until the new one is first presented.
    #[error("cannot store the new agent SVID, keeping the current one: {0}")]
    Store(String),
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

/// A DER CSR for `key`: the server takes nothing from it but the public key.
pub(super) fn csr_for(key: &SigningKey) -> Result<Vec<u8>, ClientError> {
    let params = rcgen::CertificateParams::default();
    let csr = params
        .serialize_request(key.key_pair())
        .map_err(|e| ClientError::Key(CaError::Signing(e.to_string())))?;
    Ok(csr.der().to_vec())
}

/// The certificates of an SVID on the wire, leaf first.
pub(super) fn chain_of(svid: &pb::X509Svid) -> Vec<CertificateDer<'static>> {
    svid.cert_chain.iter().map(|c| CertificateDer::from(c.clone())).collect()
}

/// Checks a new agent SVID before adopting it: chain to `bundle`, the expected ID, our key.
pub(super) fn verify_agent_svid(
    svid: &pb::X509Svid,
    key: Arc<SigningKey>,
    expected: &SpiffeId,
    bundle: &X509Bundle,
) -> Result<AgentIdentity, ClientError> {
    use x509_parser::prelude::FromDer as _;
    let bad = |m: String| ClientError::BadResponse(format!("agent SVID: {m}"));
    let chain = chain_of(svid);
    let mut set = X509BundleSet::new();
    set.insert(bundle.clone());
    let id = keycard_workload_api::verify_chain(&chain, &set, UnixTime::now())
        .map_err(|e| bad(e.to_string()))?;
    if &id != expected {
        return Err(bad(format!("it names {id}, expected {expected}")));
    }
    let leaf = chain.first().ok_or_else(|| bad("empty chain".into()))?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf)
        .map_err(|e| bad(e.to_string()))?;
    if cert.public_key().raw != key.public_key_der().as_slice() {
        return Err(bad("it does not certify our key".into()));
    }
    let expires_at = SystemTime::UNIX_EPOCH + Duration::from_secs(svid.expires_at.max(0) as u64);
    Ok(AgentIdentity { spiffe_id: id, chain, key, serial: svid.serial.clone(), expires_at })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::KeyType;

    #[test]
    fn debug_of_the_agent_identity_shows_no_key_bytes() {
        let key = SigningKey::generate(KeyType::EcP256).unwrap();
        let der = key.pkcs8_der().secret_pkcs8_der().to_vec();
        let identity = AgentIdentity {
            spiffe_id: SpiffeId::parse("spiffe://example.org/node").unwrap(),
            chain: Vec::new(),
            key: Arc::new(key),
            serial: "01".into(),
            expires_at: SystemTime::UNIX_EPOCH,
        };
        let debug = format!("{identity:?}");
        // The private scalar (ECPrivateKey: INTEGER 1, OCTET STRING of 32 bytes), in hex and
        // as `Debug` of bytes would print any eight of it.
        let at = der.windows(5).position(|w| w == [2, 1, 1, 4, 32]).unwrap() + 5;
        let scalar = &der[at..at + 32];
        let run = |w: &[u8]| w.iter().map(u8::to_string).collect::<Vec<_>>().join(", ");
        for window in scalar.windows(8) {
            assert!(!debug.contains(&run(window)), "key bytes in {debug}");
        }
        assert!(!debug.contains(&hex::encode(scalar)), "{debug}");
        assert!(debug.contains("spiffe://example.org/node"), "{debug}");
    }
}

//! The server's own TLS identity: an X.509-SVID `spiffe://<td>/keycard/server` minted from
//! the CA manager with a fresh key, and re-minted at half its life. New handshakes pick up
//! the new certificate at once ([`ResolvesServerCert`]); established connections keep
//! theirs.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use keycard_workload_api::SpiffeId;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};

use super::error::AgentApiError;
use crate::ca::{CaManager, KeyType, SigningKey, SvidRequest};
use crate::clock::Clock;

/// How long to wait before retrying a failed re-mint.
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// The current server certificate and key, and how to make the next one.
#[derive(Debug)]
pub struct ServerSvid {
    ca: Arc<CaManager>,
    id: SpiffeId,
    ttl: Duration,
    clock: Arc<dyn Clock>,
    current: RwLock<Current>,
}

#[derive(Debug, Clone)]
struct Current {
    key: Arc<CertifiedKey>,
    not_after: std::time::SystemTime,
}

impl ServerSvid {
    /// Mints the first server SVID for `id`, valid for `ttl` (capped by the CA).
    pub fn mint(
        ca: Arc<CaManager>,
        id: SpiffeId,
        ttl: Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, AgentApiError> {
        let current = mint_one(&ca, &id, ttl)?;
        Ok(Self { ca, id, ttl, clock, current: RwLock::new(current) })
    }

    /// Replaces the certificate with a freshly minted one.
    pub fn renew(&self) -> Result<(), AgentApiError> {
        let next = mint_one(&self.ca, &self.id, self.ttl)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    /// The certificate chain presented now (leaf first).
    pub fn chain(&self) -> Vec<rustls_pki_types::CertificateDer<'static>> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).key.cert.clone()
    }

    fn time_to_renew(&self) -> Duration {
        let now = self.clock.now();
        let not_after = self.current.read().unwrap_or_else(|p| p.into_inner()).not_after;
        not_after.duration_since(now).unwrap_or_default() / 2
    }

    /// Re-mints at half the remaining life until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            let wait = self.time_to_renew().max(Duration::from_secs(1));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() { return; }
                    continue;
                }
            }
            if let Err(e) = self.renew() {
                tracing::warn!(error = %e, "cannot renew the server SVID; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_AFTER) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

impl ResolvesServerCert for ServerSvid {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|p| p.into_inner()).key.clone())
    }
}

fn mint_one(ca: &CaManager, id: &SpiffeId, ttl: Duration) -> Result<Current, AgentApiError> {
    let key = SigningKey::generate(KeyType::EcP256).map_err(AgentApiError::Ca)?;
    let request = SvidRequest {
        public_key: SubjectPublicKeyInfoDer::from(key.public_key_der()),
        spiffe_id: id.clone(),
        dns_names: Vec::new(),
        ttl,
    };
    let issued = ca.sign_x509_svid(&request).map_err(AgentApiError::Ca)?;
    let pkcs8 = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.key_pair().serialize_der()));
    let signer = rustls::crypto::ring::sign::any_supported_type(&pkcs8)
        .map_err(|e| AgentApiError::Setup(format!("server key: {e}")))?;
    tracing::info!(
        target: crate::telemetry::AUDIT_TARGET,
        event = "server_svid_issued",
        spiffe_id = %id,
        serial = %hex::encode(&issued.svid.serial),
        expiry = super::signing::unix_secs(issued.svid.not_after),
    );
    Ok(Current {
        key: Arc::new(CertifiedKey::new(issued.svid.chain_without_root, signer)),
        not_after: issued.svid.not_after,
    })
}

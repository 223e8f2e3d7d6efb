//! How `agent run` gets its first server client: the stored agent SVID when it is still
//! valid, otherwise node attestation (join token or x509pop) over a connection trusted by
//! the stored bundle, the configured bundle file, or an insecure bootstrap.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keycard_workload_api::{SpiffeBundle, X509Bundle};

use super::super::client::{Attestation, ClientError, ServerClient};
use super::super::config::{AgentConfig, Bootstrap, NodeAttestation};
use super::super::manager::Reattest;
use super::super::storage::{AgentStorage, StorageError, StoredIdentity};
use super::{MAX_ATTEST_RETRY, RunError};
use crate::telemetry::{AUDIT_TARGET, AgentMetrics};

/// The configured node attestor, with its files read once at start-up.
#[derive(Clone)]
pub(super) enum Attestor {
    JoinToken(String),
    X509Pop {
        chain: Vec<rustls_pki_types::CertificateDer<'static>>,
        key: Arc<crate::ca::SigningKey>,
    },
    None,
}

impl Attestor {
    pub(super) fn new(config: &AgentConfig) -> Result<Self, RunError> {
        Ok(match &config.attestation {
            NodeAttestation::JoinToken(t) => Self::JoinToken(t.clone()),
            NodeAttestation::X509Pop { cert_file, key_file } => Self::X509Pop {
                chain: crate::pemfile::read_certificates(cert_file)?,
                key: Arc::new(crate::pemfile::read_private_key(key_file)?),
            },
            NodeAttestation::None => Self::None,
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Self::JoinToken(_) => "join_token",
            Self::X509Pop { .. } => "x509pop",
            Self::None => "none",
        }
    }

    async fn attest(&self, client: &mut ServerClient) -> Result<Attestation, RunError> {
        match self {
            Self::JoinToken(token) => client.attest_join_token(token).await,
            Self::X509Pop { chain, key } => client.attest_x509pop(chain, key).await,
            Self::None => return Err(RunError::NoAttestation),
        }
        .map_err(RunError::Attestation)
    }

    /// With x509pop the manager may attest again by itself; a join token is single-use.
    pub(super) fn reattest(
        &self,
        config: &AgentConfig,
        storage: &AgentStorage,
        metrics: &Arc<AgentMetrics>,
    ) -> Option<Reattest> {
        if !matches!(self, Self::X509Pop { .. }) {
            return None;
        }
        let (attestor, storage, metrics) = (self.clone(), storage.clone(), metrics.clone());
        let (addr, td) = (config.server_address.clone(), config.trust_domain.clone());
        Some(Box::new(move || {
            let (attestor, storage, metrics) = (attestor.clone(), storage.clone(), metrics.clone());
            let (addr, td) = (addr.clone(), td.clone());
            Box::pin(async move {
                let bundle = match storage.load_bundle(&td) {
                    Ok(Some(b)) => {
                        b.x509_bundle().map_err(|e| ClientError::BadResponse(e.to_string()))?
                    }
                    _ => {
                        return Err(ClientError::BadResponse(
                            "no stored bundle to re-attest with".into(),
                        ));
                    }
                };
                let client = ServerClient::connect(&addr, td, bundle).await?;
                let mut client = client.with_storage(storage);
                let result = attestor.attest(&mut client).await;
                metrics.node_attested(if result.is_ok() { "ok" } else { "error" });
                let attestation = result.map_err(|e| ClientError::BadResponse(e.to_string()))?;
                audit(&attestation);
                Ok(client)
            })
        }))
    }
}

/// Records a fresh attestation (its SVID and bundle were stored by the client, before use).
fn audit(attestation: &Attestation) {
    tracing::info!(
        target: AUDIT_TARGET,
        event = "node_attested",
        agent_id = %attestation.identity.spiffe_id,
        serial = %attestation.identity.serial,
    );
}

/// A server client ready for the sync loop: from the stored SVID, or by attesting.
pub(super) async fn establish(
    config: &AgentConfig,
    storage: &AgentStorage,
    attestor: &Attestor,
    metrics: &AgentMetrics,
) -> Result<ServerClient, RunError> {
    let (addr, td) = (config.server_address.as_str(), &config.trust_domain);
    let stored = storage.load_bundle(td)?;
    if let Some(bundle) = &stored {
        let x509 = bundle.x509_bundle().map_err(|e| StorageError::Invalid {
            path: storage.dir().join(super::super::storage::BUNDLE_FILE).display().to_string(),
            reason: e.to_string(),
        })?;
        match storage.load_identity(bundle, SystemTime::now())? {
            Some(StoredIdentity::Valid(identity)) => {
                tracing::info!(agent_id = %identity.spiffe_id, "using the stored agent SVID");
                return ServerClient::connect_with_identity(addr, td.clone(), x509, identity)
                    .await
                    .map(|client| client.with_storage(storage.clone()))
                    .map_err(RunError::Attestation);
            }
            Some(StoredIdentity::Expired { spiffe_id, expired_at }) => {
                tracing::warn!(agent_id = %spiffe_id, expired_at = %crate::telemetry::logging::rfc3339(expired_at), attestor = attestor.name(),
                    "the stored agent SVID expired; attesting again");
            }
            None => {}
        }
    }
    if matches!(attestor, Attestor::None) {
        return Err(RunError::NoAttestation);
    }
    let bootstrap = match (&stored, &config.bootstrap) {
        (Some(bundle), _) => Some(x509_of(bundle)?),
        (None, Bootstrap::Bundle(path)) => {
            let certs = crate::pemfile::read_certificates(path)?;
            let bundle = X509Bundle::from_authorities(td.clone(), certs).map_err(|e| {
                RunError::TrustBundle { path: path.display().to_string(), reason: e.to_string() }
            })?;
            Some(bundle)
        }
        (None, Bootstrap::Insecure) => None,
        (None, Bootstrap::Stored) => return Err(RunError::NoBootstrap),
    };
    let mut delay = Duration::from_millis(250);
    loop {
        let connected = match &bootstrap {
            Some(bundle) => ServerClient::connect(addr, td.clone(), bundle.clone()).await,
            None => ServerClient::connect_insecure(addr, td.clone()).await,
        };
        let mut client = match connected {
            Ok(c) => c.with_storage(storage.clone()),
            Err(e @ ClientError::Connect { .. }) => {
                tracing::warn!(error = %e, retry_in = ?delay, "cannot reach the server to attest");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_ATTEST_RETRY);
                continue;
            }
            Err(e) => return Err(RunError::Attestation(e)),
        };
        let result = attestor.attest(&mut client).await;
        metrics.node_attested(if result.is_ok() { "ok" } else { "error" });
        audit(&result?);
        return Ok(client);
    }
}

fn x509_of(bundle: &SpiffeBundle) -> Result<X509Bundle, RunError> {
    bundle
        .x509_bundle()
        .map_err(|e| RunError::TrustBundle { path: "stored bundle".into(), reason: e.to_string() })
}

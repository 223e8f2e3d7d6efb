//! How `agent run` gets its first server client: the stored agent SVID when it is still
//! valid, otherwise node attestation (join token or x509pop) over a connection trusted by
//! the stored bundle, the configured bundle file, or an insecure bootstrap. With several
//! servers configured, attestation goes to the first that answers: one that refuses the
//! connection, never finishes the handshake, or does not answer the attestation within the
//! request deadline is left for the next, and only after a pass over all of them does the
//! agent back off.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keycard_workload_api::{SpiffeBundle, TrustDomain, X509Bundle};

use super::super::client::{
    Attestation, ClientError, ServerAddresses, ServerClient, failover_reason,
};
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
    /// It tries each server in turn, from the first, and keeps the first that attests it.
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
        let servers = servers_of(config);
        let (td, timeout) = (config.trust_domain.clone(), config.server_request_timeout);
        Some(Box::new(move || {
            let (attestor, storage, metrics) = (attestor.clone(), storage.clone(), metrics.clone());
            let (mut servers, td) = (servers.clone(), td.clone());
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
                let dial = Dial { td: &td, bootstrap: Some(&bundle), timeout, storage: &storage };
                match attest_each(&mut servers, &dial, &attestor, &metrics).await {
                    Ok(client) => Ok(client),
                    Err(Pass::NoneAnswered(e)) => Err(e),
                    Err(Pass::Failed(e)) => Err(ClientError::BadResponse(e.to_string())),
                }
            })
        }))
    }
}

/// The configured servers, the first in use.
fn servers_of(config: &AgentConfig) -> ServerAddresses {
    ServerAddresses::new(config.server_addresses.clone())
        .unwrap_or_else(|| ServerAddresses::one("")) // the config never holds an empty list
}

/// What dialling a server for attestation takes.
struct Dial<'a> {
    td: &'a TrustDomain,
    /// `None`: the insecure bootstrap.
    bootstrap: Option<&'a X509Bundle>,
    timeout: Duration,
    storage: &'a AgentStorage,
}

/// Why a pass over the servers attested nothing.
enum Pass {
    /// No server answered (the last one's error): try again later.
    NoneAnswered(ClientError),
    /// A server answered and refused, or the attestor cannot attest: final.
    Failed(RunError),
}

/// One pass over the servers, from the current one: dials each in turn and attests with
/// the first that answers. A server that does not answer, during the dial or the
/// attestation ([`failover_reason`]), is left for the next.
async fn attest_each(
    servers: &mut ServerAddresses,
    dial: &Dial<'_>,
    attestor: &Attestor,
    metrics: &Arc<AgentMetrics>,
) -> Result<ServerClient, Pass> {
    let mut last = None;
    for _ in 0..servers.len() {
        let bootstrap = dial.bootstrap.cloned();
        let connected =
            ServerClient::dial(servers.clone(), dial.td.clone(), bootstrap, dial.timeout).await;
        let error = match connected {
            Ok(client) => {
                let mut client = client.with_storage(dial.storage.clone());
                let result = attestor.attest(&mut client).await;
                metrics.node_attested(if result.is_ok() { "ok" } else { "error" });
                match result {
                    Ok(attestation) => {
                        audit(&attestation);
                        return Ok(client.with_metrics(metrics.clone()));
                    }
                    Err(RunError::Attestation(e)) if failover_reason(&e).is_some() => e,
                    Err(e) => return Err(Pass::Failed(e)),
                }
            }
            Err(e) if failover_reason(&e).is_some() => e,
            Err(e) => return Err(Pass::Failed(RunError::Attestation(e))),
        };
        if servers.len() > 1 {
            let from = servers.current().to_owned();
            let to = servers.advance();
            let reason = failover_reason(&error).unwrap_or_default();
            tracing::info!(from = %from, to = %to, reason, error = %error, "cannot attest with this server; switching to the next");
            metrics.server_failover(to);
        }
        last = Some(error);
    }
    Err(Pass::NoneAnswered(last.unwrap_or(ClientError::NotAttested)))
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

/// A server client ready for the sync loop: from the stored SVID, or by attesting with
/// the first server that answers (all of them in turn, then again after a backoff).
pub(super) async fn establish(
    config: &AgentConfig,
    storage: &AgentStorage,
    attestor: &Attestor,
    metrics: &Arc<AgentMetrics>,
) -> Result<ServerClient, RunError> {
    let td = &config.trust_domain;
    let mut servers = servers_of(config);
    let timeout = config.server_request_timeout;
    let stored = storage.load_bundle(td)?;
    if let Some(bundle) = &stored {
        let x509 = bundle.x509_bundle().map_err(|e| StorageError::Invalid {
            path: storage.dir().join(super::super::storage::BUNDLE_FILE).display().to_string(),
            reason: e.to_string(),
        })?;
        match storage.load_identity(bundle, SystemTime::now())? {
            Some(StoredIdentity::Valid(identity)) => {
                tracing::info!(agent_id = %identity.spiffe_id, server = servers.current(), "using the stored agent SVID");
                return ServerClient::with_identity_at(
                    servers,
                    td.clone(),
                    x509,
                    identity,
                    timeout,
                )
                .await
                .map(|client| client.with_storage(storage.clone()).with_metrics(metrics.clone()))
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
    let dial = Dial { td, bootstrap: bootstrap.as_ref(), timeout, storage };
    let mut delay = Duration::from_millis(250);
    loop {
        match attest_each(&mut servers, &dial, attestor, metrics).await {
            Ok(client) => {
                tracing::info!(server = client.servers().current(), "attested");
                return Ok(client);
            }
            Err(Pass::Failed(e)) => return Err(e),
            Err(Pass::NoneAnswered(e)) => {
                tracing::warn!(error = %e, retry_in = ?delay, servers = servers.len(), "cannot reach a server to attest");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_ATTEST_RETRY);
            }
        }
    }
}

fn x509_of(bundle: &SpiffeBundle) -> Result<X509Bundle, RunError> {
    bundle
        .x509_bundle()
        .map_err(|e| RunError::TrustBundle { path: "stored bundle".into(), reason: e.to_string() })
}

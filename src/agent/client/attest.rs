//! Node attestation from the agent's side: the params and a CSR, an x509pop challenge
//! answered with the node key, then the agent SVID checked, stored and adopted. The whole
//! exchange is bounded by the client's request timeout.

use std::sync::Arc;

use keycard_workload_api::SpiffeId;
use rustls::pki_types::CertificateDer;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;

use super::{Attestation, ClientError, ServerClient, bounded, parse_bundle};
use crate::agent::identity::{csr_for, verify_agent_svid};
use crate::ca::{KeyType, SigningKey};
use crate::wire::challenge_message;
use crate::wire::proto::{self as pb, attest_agent_request, attest_agent_response};

impl ServerClient {
    /// Attests with a join token.
    pub async fn attest_join_token(&mut self, token: &str) -> Result<Attestation, ClientError> {
        let data = pb::attestation_params::Data::JoinToken(pb::JoinTokenAttestation {
            token: token.to_owned(),
        });
        self.attest(data, None).await
    }

    /// Attests with x509pop: the node certificate chain (leaf first) and the node key.
    pub async fn attest_x509pop(
        &mut self,
        chain: &[CertificateDer<'_>],
        node_key: &SigningKey,
    ) -> Result<Attestation, ClientError> {
        let data = pb::attestation_params::Data::X509pop(pb::X509PopAttestation {
            cert_chain: chain.iter().map(|c| c.to_vec()).collect(),
        });
        self.attest(data, Some(node_key)).await
    }

    pub(super) async fn attest(
        &mut self,
        data: pb::attestation_params::Data,
        node_key: Option<&SigningKey>,
    ) -> Result<Attestation, ClientError> {
        let key = Arc::new(SigningKey::generate(KeyType::EcP256)?);
        let params = pb::AttestationParams { data: Some(data), csr: csr_for(&key)? };
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let first =
            pb::AttestAgentRequest { step: Some(attest_agent_request::Step::Params(params)) };
        tx.send(first)
            .await
            .map_err(|_| ClientError::BadResponse("request stream closed".into()))?;
        let grpc = &mut self.grpc;
        let mut request = Request::new(ReceiverStream::new(rx));
        request.set_timeout(self.request_timeout);
        let exchange = async move {
            let mut responses = grpc.attest_agent(request).await?.into_inner();
            loop {
                let step = responses.message().await?.and_then(|m| m.step).ok_or_else(|| {
                    ClientError::BadResponse("attestation ended without a result".into())
                })?;
                match step {
                    attest_agent_response::Step::Challenge(nonce) => {
                        let node_key = node_key.ok_or_else(|| {
                            ClientError::BadResponse("unexpected challenge".into())
                        })?;
                        let signature = node_key.sign(&challenge_message(&nonce))?;
                        let answer = pb::AttestAgentRequest {
                            step: Some(attest_agent_request::Step::ChallengeResponse(
                                pb::ChallengeResponse { signature },
                            )),
                        };
                        tx.send(answer).await.map_err(|_| {
                            ClientError::BadResponse("request stream closed".into())
                        })?;
                    }
                    attest_agent_response::Step::Result(result) => break Ok(result),
                }
            }
        };
        let result = bounded(self.request_timeout, "AttestAgent", exchange).await;
        let result = self.checked(result).await?;
        let agent_id = SpiffeId::parse(&result.agent_id)
            .map_err(|e| ClientError::BadResponse(e.to_string()))?;
        let bundle = parse_bundle(&self.trust_domain, &result.bundle)?;
        let x509 = bundle.x509_bundle().map_err(|e| ClientError::BadResponse(e.to_string()))?;
        let svid = result.svid.ok_or_else(|| ClientError::BadResponse("no SVID".into()))?;
        let identity = verify_agent_svid(&svid, key, &agent_id, &x509)?;
        // The server holds no other SVID for a new attestation (and a join token is spent):
        // an agent that cannot store it still runs on it, until it restarts.
        if let Err(e) = self.store(&identity, Some(&bundle)).await {
            tracing::error!(error = %e, "cannot store the agent SVID; a restart will need attesting again");
        }
        self.adopt(identity.clone(), x509).await?;
        Ok(Attestation { identity, bundle })
    }
}

//! Node attestation: `join_token` and `x509pop`.
//!
//! The first message carries the attestation data and a CSR for the agent SVID; the CSR is
//! checked before a join token is spent. For `x509pop` the node certificate chain must
//! verify against the configured node CA bundle (clientAuth), then the agent signs a fresh
//! 32-byte nonce with the node key (domain-separated by [`CHALLENGE_CONTEXT`]). The agent
//! ID and selectors come from the token or the certificate, never from the agent.

use std::sync::Arc;
use std::time::Instant;

use keycard_workload_api::SpiffeId;
use rand::RngCore as _;
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status, Streaming};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::csr_check::check_csr;
use super::error::AgentApiError;
use super::proto as pb;
use super::signing::{issue_agent_svid, svid_to_proto};
use super::state::{Inner, blocking};
use super::tls::PeerInfo;
use crate::selector::{Selector, SelectorSet};
use crate::server::datastore::{AgentRecord, TokenUse};
use crate::server::join_token;
use crate::telemetry::AUDIT_TARGET;

pub use crate::wire::{CHALLENGE_CONTEXT, NONCE_LEN, challenge_message};
/// Most certificates in a node chain.
const MAX_NODE_CHAIN: usize = 8;
const METHOD: &str = "/keycard.agent.v1.Agent/AttestAgent";

/// Who the attested node is.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    /// The agent ID.
    pub agent_id: SpiffeId,
    /// `join_token` or `x509pop`.
    pub attestor: &'static str,
    /// Node selectors.
    pub selectors: SelectorSet,
    /// Whether the same node may attest again.
    pub can_reattest: bool,
}

/// Starts an attestation on its own task; returns the response stream.
pub fn start(
    inner: Arc<Inner>,
    req: Request<Streaming<pb::AttestAgentRequest>>,
) -> impl Stream<Item = Result<pb::AttestAgentResponse, Status>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let peer = req.extensions().get::<PeerInfo>().cloned();
    let stream = req.into_inner();
    tokio::spawn(async move {
        let mut attestor = "unknown";
        let outcome = run(&inner, peer, stream, &tx, &mut attestor).await;
        let message = match outcome {
            Ok(result) => Ok(pb::AttestAgentResponse {
                step: Some(pb::attest_agent_response::Step::Result(result)),
            }),
            Err(e) => {
                inner.metrics.attested(attestor, reason(&e));
                tracing::info!(target: AUDIT_TARGET, event = "attestation_refused", attestor,
                    reason = %e);
                Err(inner.refuse(METHOD, &e))
            }
        };
        let _ = tx.send(message).await;
    });
    ReceiverStream::new(rx)
}

fn reason(err: &AgentApiError) -> &'static str {
    match err {
        AgentApiError::UnknownJoinToken => "unknown_token",
        AgentApiError::UsedJoinToken => "used_token",
        AgentApiError::ExpiredJoinToken => "expired_token",
        AgentApiError::BannedAgent(_) => "banned",
        AgentApiError::CannotReattest(_) => "cannot_reattest",
        AgentApiError::X509PopCertificate(_) => "bad_certificate",
        AgentApiError::X509PopSignature => "bad_signature",
        AgentApiError::AttestRateLimited(_) => "rate_limited",
        AgentApiError::AttestationTimeout { .. } => "timeout",
        _ => "refused",
    }
}

type Sender = tokio::sync::mpsc::Sender<Result<pb::AttestAgentResponse, Status>>;

/// The agent's next attestation message (`step` names it), within the step timeout.
async fn next(
    inner: &Inner,
    stream: &mut Streaming<pb::AttestAgentRequest>,
    step: &'static str,
) -> Result<pb::attest_agent_request::Step, AgentApiError> {
    let after = inner.options.attestation_step_timeout;
    tokio::time::timeout(after, stream.message())
        .await
        .map_err(|_| AgentApiError::AttestationTimeout { step, after })?
        .map_err(|s| AgentApiError::BadRequest(format!("reading the request: {}", s.message())))?
        .and_then(|m| m.step)
        .ok_or_else(|| AgentApiError::BadRequest("the stream ended early".into()))
}

async fn run(
    inner: &Inner,
    peer: Option<PeerInfo>,
    mut stream: Streaming<pb::AttestAgentRequest>,
    tx: &Sender,
    attestor: &mut &'static str,
) -> Result<pb::AttestationResult, AgentApiError> {
    let ip = peer.map(|p| p.remote_addr.ip());
    if let Some(ip) = ip
        && !inner.attest_limiter.try_take(&ip, 1, Instant::now())
    {
        return Err(AgentApiError::AttestRateLimited(ip.to_string()));
    }
    let pb::attest_agent_request::Step::Params(params) =
        next(inner, &mut stream, "attestation params").await?
    else {
        return Err(AgentApiError::BadRequest("the first message must carry the params".into()));
    };
    let opts = &inner.options;
    let csr = check_csr(&params.csr, opts.max_csr_len, &opts.trust_domain, None)?;
    let node = match params.data {
        Some(pb::attestation_params::Data::JoinToken(t)) => {
            *attestor = "join_token";
            join_token_node(inner, &t.token).await?
        }
        Some(pb::attestation_params::Data::X509pop(x)) => {
            *attestor = "x509pop";
            x509pop_node(inner, &x.cert_chain, &mut stream, tx).await?
        }
        None => return Err(AgentApiError::BadRequest("no attestation data".into())),
    };
    let id = node.agent_id.clone();
    let existing = blocking(&inner.store, move |s| s.get_agent(&id)).await?;
    if let Some(old) = &existing {
        if old.banned {
            return Err(AgentApiError::BannedAgent(old.id.to_string()));
        }
        if !old.can_reattest || !node.can_reattest {
            return Err(AgentApiError::CannotReattest(old.id.to_string()));
        }
    }
    let issued = issue_agent_svid(inner, &node.agent_id, csr.into_public_key())?;
    let now = inner.clock.now();
    let record = AgentRecord {
        id: node.agent_id.clone(),
        attestation_type: node.attestor.to_owned(),
        selectors: node.selectors.clone(),
        svid_serial: hex::encode(&issued.svid.serial),
        previous_svid_serial: None,
        svid_expires_at: issued.svid.not_after,
        banned: false,
        can_reattest: node.can_reattest,
        created_at: existing.map_or(now, |o| o.created_at),
        updated_at: now,
    };
    blocking(&inner.store, move |s| s.upsert_agent(&record)).await?;
    inner.metrics.attested(node.attestor, "ok");
    tracing::info!(target: AUDIT_TARGET, event = "agent_attested", attestor = node.attestor,
        agent = %node.agent_id, selectors = %node.selectors,
        serial = %hex::encode(&issued.svid.serial));
    Ok(pb::AttestationResult {
        agent_id: node.agent_id.to_string(),
        svid: Some(svid_to_proto(&issued)),
        bundle: inner.bundle_json()?,
    })
}

async fn join_token_node(inner: &Inner, token: &str) -> Result<NodeIdentity, AgentApiError> {
    let hash = join_token::hash_token(token);
    let now = inner.clock.now();
    let record = match blocking(&inner.store, move |s| s.use_join_token(&hash, now)).await? {
        TokenUse::Accepted(record) => record,
        TokenUse::Unknown => return Err(AgentApiError::UnknownJoinToken),
        TokenUse::AlreadyUsed => return Err(AgentApiError::UsedJoinToken),
        TokenUse::Expired => return Err(AgentApiError::ExpiredJoinToken),
    };
    let selector = Selector::new("join_token", &record.token_id)
        .map_err(|e| AgentApiError::BadRequest(e.to_string()))?;
    Ok(NodeIdentity {
        agent_id: join_token::agent_id_of(&inner.options.trust_domain, &record),
        attestor: "join_token",
        selectors: [selector].into_iter().collect(),
        can_reattest: false,
    })
}

async fn x509pop_node(
    inner: &Inner,
    chain: &[Vec<u8>],
    stream: &mut Streaming<pb::AttestAgentRequest>,
    tx: &Sender,
) -> Result<NodeIdentity, AgentApiError> {
    let bundle = inner.options.x509pop_ca_bundle.as_ref().ok_or(AgentApiError::X509PopDisabled)?;
    let now = UnixTime::since_unix_epoch(
        inner.clock.now().duration_since(std::time::SystemTime::UNIX_EPOCH).unwrap_or_default(),
    );
    let node = verify_node_chain(bundle, chain, now, &inner.options.trust_domain)?;
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let challenge = pb::AttestAgentResponse {
        step: Some(pb::attest_agent_response::Step::Challenge(nonce.to_vec())),
    };
    tx.send(Ok(challenge))
        .await
        .map_err(|_| AgentApiError::BadRequest("client went away".into()))?;
    let pb::attest_agent_request::Step::ChallengeResponse(answer) =
        next(inner, stream, "answer to the x509pop challenge").await?
    else {
        return Err(AgentApiError::BadRequest("expected the challenge response".into()));
    };
    let leaf =
        chain.first().ok_or_else(|| AgentApiError::X509PopCertificate("empty chain".into()))?;
    verify_challenge(leaf, &nonce, &answer.signature)?;
    Ok(node)
}

/// Verifies a node chain (leaf first) against the node CAs and derives the agent ID and
/// selectors from the certificates in the verified path.
pub fn verify_node_chain(
    cas: &[CertificateDer<'static>],
    chain: &[Vec<u8>],
    now: UnixTime,
    trust_domain: &keycard_workload_api::TrustDomain,
) -> Result<NodeIdentity, AgentApiError> {
    let bad = |m: String| AgentApiError::X509PopCertificate(m);
    if chain.is_empty() || chain.len() > MAX_NODE_CHAIN {
        return Err(bad(format!("{} certificates; send 1 to {MAX_NODE_CHAIN}", chain.len())));
    }
    let certs: Vec<CertificateDer<'_>> =
        chain.iter().map(|c| CertificateDer::from(c.as_slice())).collect();
    let anchors = cas
        .iter()
        .map(|c| webpki::anchor_from_trusted_cert(c).map(|a| (a.to_owned(), c)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("node CA bundle: {e}")))?;
    let trust: Vec<_> = anchors.iter().map(|(a, _)| a.clone()).collect();
    let leaf = webpki::EndEntityCert::try_from(&certs[0]).map_err(|e| bad(e.to_string()))?;
    let path = leaf
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &trust,
            &certs[1..],
            now,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| bad(format!("chain does not verify against the node CAs: {e}")))?;
    let sha1 = |der: &[u8]| {
        hex::encode(ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der))
    };
    let mut selectors = SelectorSet::new();
    let mut add = |kind: &str, value: String| {
        if let Ok(s) = Selector::new(kind, &value) {
            selectors.insert(s);
        }
    };
    for ca in path.intermediate_certificates() {
        add("x509pop", format!("ca:fingerprint:{}", sha1(ca.der().as_ref())));
    }
    let anchor = path.anchor();
    if let Some((_, ca)) = anchors.iter().find(|(a, _)| {
        a.subject == anchor.subject && a.subject_public_key_info == anchor.subject_public_key_info
    }) {
        add("x509pop", format!("ca:fingerprint:{}", sha1(ca.as_ref())));
    }
    let (_, parsed) = X509Certificate::from_der(&chain[0]).map_err(|e| bad(e.to_string()))?;
    for cn in parsed.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()) {
        add("x509pop", format!("subject:cn:{cn}"));
    }
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                add("x509pop", format!("san:dns:{dns}"));
            }
        }
    }
    let agent_id = trust_domain
        .spiffe_id(&format!("{}x509pop/{}", super::AGENT_PATH_PREFIX, sha1(&chain[0])))
        .map_err(|e| bad(e.to_string()))?;
    Ok(NodeIdentity { agent_id, attestor: "x509pop", selectors, can_reattest: true })
}

/// Checks `signature` over [`challenge_message`]`(nonce)` with the leaf's public key.
pub fn verify_challenge(leaf: &[u8], nonce: &[u8], signature: &[u8]) -> Result<(), AgentApiError> {
    use x509_parser::oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_SIG_ED25519,
    };
    let (_, cert) = X509Certificate::from_der(leaf)
        .map_err(|e| AgentApiError::X509PopCertificate(e.to_string()))?;
    let spki = cert.public_key();
    let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
    let alg: &dyn ring::signature::VerificationAlgorithm = if spki.algorithm.algorithm
        == OID_SIG_ED25519
    {
        &ring::signature::ED25519
    } else if spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY && curve == Some(OID_EC_P256) {
        &ring::signature::ECDSA_P256_SHA256_FIXED
    } else if spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY
        && curve == Some(OID_NIST_EC_P384)
    {
        &ring::signature::ECDSA_P384_SHA384_FIXED
    } else {
        return Err(AgentApiError::X509PopCertificate(
            "node key must be ECDSA P-256/P-384 or Ed25519".into(),
        ));
    };
    ring::signature::UnparsedPublicKey::new(alg, spki.subject_public_key.data.as_ref())
        .verify(&challenge_message(nonce), signature)
        .map_err(|_| AgentApiError::X509PopSignature)
}

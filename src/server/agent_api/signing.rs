//! Issuing SVIDs to agents: their own (renewal) and their workloads' (X.509 in batches,
//! JWT one at a time). The SPIFFE ID, DNS names and TTL come from the entry; the CSR gives
//! only its public key. Every SVID is counted and audited.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use keycard_workload_api::SpiffeId;
use rustls_pki_types::SubjectPublicKeyInfoDer;
use tonic::Request;

use super::csr_check::check_csr;
use super::error::AgentApiError;
use super::proto as pb;
use super::state::{Inner, blocking};
use super::status::code_of;
use crate::ca::{IssuedX509Svid, SvidRequest};
use crate::server::datastore::AgentRecord;
use crate::server::entry::Entry;
use crate::telemetry::AUDIT_TARGET;
use crate::wire::MAX_BATCH;

/// Seconds since the Unix epoch (0 before it).
pub fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// An issued SVID on the wire.
pub fn svid_to_proto(issued: &IssuedX509Svid) -> pb::X509Svid {
    pb::X509Svid {
        cert_chain: issued.svid.chain_without_root.iter().map(|c| c.to_vec()).collect(),
        expires_at: unix_secs(issued.svid.not_after),
        serial: hex::encode(&issued.svid.serial),
    }
}

/// Signs an X.509-SVID, counting and auditing it. `subject` is `agent` or `workload`;
/// `agent` is the agent the SVID is issued to or for.
pub fn sign_x509(
    inner: &Inner,
    request: &SvidRequest,
    subject: &str,
    agent: &SpiffeId,
) -> Result<IssuedX509Svid, AgentApiError> {
    let started = Instant::now();
    let issued = inner.ca.sign_x509_svid(request).map_err(AgentApiError::Ca)?;
    inner.metrics.issued("x509", subject, started.elapsed());
    tracing::info!(
        target: AUDIT_TARGET,
        event = "x509_svid_issued",
        subject,
        spiffe_id = %request.spiffe_id,
        serial = %hex::encode(&issued.svid.serial),
        expiry = unix_secs(issued.svid.not_after),
        agent = %agent,
    );
    Ok(issued)
}

/// Signs a new agent SVID for `agent_id` with `public_key`.
pub fn issue_agent_svid(
    inner: &Inner,
    agent_id: &SpiffeId,
    public_key: SubjectPublicKeyInfoDer<'static>,
) -> Result<IssuedX509Svid, AgentApiError> {
    let request = SvidRequest {
        public_key,
        spiffe_id: agent_id.clone(),
        dns_names: Vec::new(),
        ttl: inner.options.agent_svid_ttl,
    };
    sign_x509(inner, &request, "agent", agent_id)
}

/// `RenewAgent`: a new agent SVID. The agent record then names its serial as the newest
/// and the caller's as the previous one: the caller's SVID keeps working until the new
/// one is first used, so a reply lost on the way (or an agent that crashed before storing
/// it) costs nothing, and any older SVID is refused.
pub async fn renew_agent(
    inner: &Inner,
    req: Request<pb::RenewAgentRequest>,
) -> Result<pb::RenewAgentResponse, AgentApiError> {
    let (agent, presented) = inner.authenticate_svid(&req).await?;
    let opts = &inner.options;
    let csr = check_csr(&req.get_ref().csr, opts.max_csr_len, &opts.trust_domain, None)?;
    take_sign_tokens(inner, &agent.id, 1)?;
    let issued = issue_agent_svid(inner, &agent.id, csr.into_public_key())?;
    let (id, serial) = (agent.id.clone(), hex::encode(&issued.svid.serial));
    let (expires_at, now) = (issued.svid.not_after, inner.clock.now());
    let asked = presented.clone();
    let recorded =
        blocking(&inner.store, move |s| s.renew_agent_svid(&id, &asked, &serial, expires_at, now))
            .await?;
    if !recorded {
        // Another renewal from a newer SVID won the race: this caller's SVID is superseded.
        return Err(AgentApiError::StaleAgentSvid { presented });
    }
    Ok(pb::RenewAgentResponse { svid: Some(svid_to_proto(&issued)) })
}

fn take_sign_tokens(inner: &Inner, agent: &SpiffeId, n: usize) -> Result<(), AgentApiError> {
    if inner.sign_limiter.try_take(agent, n, Instant::now()) {
        Ok(())
    } else {
        Err(AgentApiError::SignRateLimited(agent.to_string()))
    }
}

/// The entry `id` if it is authorized for `agent`: `NotFound` for an unknown ID (after one
/// refresh, in case it was just created), `PermissionDenied` for someone else's entry.
async fn authorized_entry(
    inner: &Inner,
    agent: &AgentRecord,
    id: &str,
) -> Result<Arc<Entry>, AgentApiError> {
    let entry = match inner.cache.get(id) {
        Some(e) => e,
        None => {
            inner.cache.refresh().await;
            inner.cache.get(id).ok_or_else(|| AgentApiError::UnknownEntry(id.to_owned()))?
        }
    };
    if !inner.cache.is_authorized(&entry, &agent.id, &agent.selectors) {
        return Err(AgentApiError::EntryNotAuthorized(id.to_owned()));
    }
    Ok(entry)
}

async fn sign_one(
    inner: &Inner,
    agent: &AgentRecord,
    params: &pb::NewX509SvidParams,
) -> Result<pb::X509Svid, AgentApiError> {
    let entry = authorized_entry(inner, agent, &params.entry_id).await?;
    let opts = &inner.options;
    let spiffe_id = &entry.spec.spiffe_id;
    let csr = check_csr(&params.csr, opts.max_csr_len, &opts.trust_domain, Some(spiffe_id))?;
    let request = SvidRequest {
        public_key: csr.into_public_key(),
        spiffe_id: spiffe_id.clone(),
        dns_names: entry.spec.dns_names.clone(),
        ttl: entry.spec.x509_ttl.unwrap_or(opts.default_x509_ttl),
    };
    Ok(svid_to_proto(&sign_x509(inner, &request, "workload", &agent.id)?))
}

/// `BatchNewX509Svid`: one result per item, each with its own status, so one bad item
/// does not cost the others their SVIDs.
pub async fn batch_new_x509_svid(
    inner: &Inner,
    req: Request<pb::BatchNewX509SvidRequest>,
) -> Result<pb::BatchNewX509SvidResponse, AgentApiError> {
    let agent = inner.authenticate(&req).await?;
    let params = req.into_inner().params;
    if params.len() > MAX_BATCH {
        return Err(AgentApiError::TooManyItems { len: params.len(), max: MAX_BATCH });
    }
    take_sign_tokens(inner, &agent.id, params.len())?;
    let mut results = Vec::with_capacity(params.len());
    for p in &params {
        let result = match sign_one(inner, &agent, p).await {
            Ok(svid) => pb::X509SvidResult {
                entry_id: p.entry_id.clone(),
                svid: Some(svid),
                status_code: 0,
                status_message: String::new(),
            },
            Err(e) => {
                let code = code_of(&e);
                inner.metrics.refused("/keycard.agent.v1.Agent/BatchNewX509Svid", code);
                pb::X509SvidResult {
                    entry_id: p.entry_id.clone(),
                    svid: None,
                    status_code: code as i32,
                    status_message: e.to_string(),
                }
            }
        };
        results.push(result);
    }
    Ok(pb::BatchNewX509SvidResponse { results })
}

/// `NewJwtSvid`: a JWT-SVID with the entry's ID and TTL for the given audiences.
pub async fn new_jwt_svid(
    inner: &Inner,
    req: Request<pb::NewJwtSvidRequest>,
) -> Result<pb::NewJwtSvidResponse, AgentApiError> {
    let agent = inner.authenticate(&req).await?;
    let req = req.into_inner();
    if let Some(problem) = crate::wire::audience_problem(&req.audiences) {
        return Err(AgentApiError::BadRequest(problem));
    }
    let entry = authorized_entry(inner, &agent, &req.entry_id).await?;
    take_sign_tokens(inner, &agent.id, 1)?;
    let ttl = entry.spec.jwt_ttl.unwrap_or(inner.options.default_jwt_ttl);
    let started = Instant::now();
    let minted = inner
        .ca
        .sign_jwt_svid(&entry.spec.spiffe_id, &req.audiences, ttl)
        .map_err(AgentApiError::Ca)?;
    inner.metrics.issued("jwt", "workload", started.elapsed());
    tracing::info!(
        target: AUDIT_TARGET,
        event = "jwt_svid_issued",
        spiffe_id = %entry.spec.spiffe_id,
        audience_count = req.audiences.len(),
        first_audience = req.audiences.first().map_or("", String::as_str),
        expiry = unix_secs(minted.expiry),
        agent = %agent.id,
    );
    Ok(pb::NewJwtSvidResponse {
        token: minted.token,
        expires_at: unix_secs(minted.expiry),
        spiffe_id: entry.spec.spiffe_id.to_string(),
    })
}

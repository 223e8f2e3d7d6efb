//! Issuing SVIDs to agents: their own (renewal) and their workloads' (X.509 in batches,
//! JWT one at a time). The SPIFFE ID, DNS names and TTL come from the entry; the CSR gives
//! only its public key. Every SVID is counted and audited.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use keycard_workload_api::SpiffeId;
use keycard_workload_api::{X509BundleSet, verify_chain, x5t_s256};
use rustls_pki_types::{CertificateDer, SubjectPublicKeyInfoDer, UnixTime};
use tonic::{Code, Request};

use super::csr_check::check_csr;
use super::error::AgentApiError;
use super::limits::Grant;
use super::proto as pb;
use super::state::{Inner, blocking};
use super::status::code_of;
use crate::ca::{IssuedX509Svid, SvidRequest};
use crate::server::datastore::AgentRecord;
use crate::server::entry::{Entry, JwtSvidBinding};
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
    take_one_sign_token(inner, &agent.id)?;
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

/// Takes one signing token of `agent`'s bucket for each of the first of `n` items (on the
/// server clock): how many got one, and when the others may retry.
fn take_sign_tokens(inner: &Inner, agent: &SpiffeId, n: usize) -> Grant {
    inner.sign_limiter.take_up_to(agent, n, inner.clock.now())
}

/// `SignRateLimited` for a call of `n` items of which none could be signed: retry when the
/// bucket holds tokens for all of them (or a full bucket, if fewer).
fn rate_limited(inner: &Inner, agent: &SpiffeId, grant: &Grant, n: usize) -> AgentApiError {
    let burst = inner.options.sign_rate.burst.max(1.0) as usize;
    let retry_after = grant.retry_after(n.min(burst).saturating_sub(1));
    AgentApiError::SignRateLimited { agent: agent.to_string(), retry_after }
}

/// Takes one signing token for a call that signs one thing.
fn take_one_sign_token(inner: &Inner, agent: &SpiffeId) -> Result<(), AgentApiError> {
    let grant = take_sign_tokens(inner, agent, 1);
    if grant.granted == 1 { Ok(()) } else { Err(rate_limited(inner, agent, &grant, 1)) }
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

/// The CSR check and signature of one batch item whose entry is authorized.
fn sign_for_entry(
    inner: &Inner,
    agent: &SpiffeId,
    entry: &Entry,
    csr: &[u8],
) -> Result<pb::X509Svid, AgentApiError> {
    let opts = &inner.options;
    let spiffe_id = &entry.spec.spiffe_id;
    let csr = check_csr(csr, opts.max_csr_len, &opts.trust_domain, Some(spiffe_id))?;
    let request = SvidRequest {
        public_key: csr.into_public_key(),
        spiffe_id: spiffe_id.clone(),
        dns_names: entry.spec.dns_names.clone(),
        ttl: entry.spec.x509_ttl.unwrap_or(opts.default_x509_ttl),
    };
    Ok(svid_to_proto(&sign_x509(inner, &request, "workload", agent)?))
}

/// Items of a batch below which one thread signs them all: a hand-off to another thread
/// costs more than it saves on a few signatures.
const ITEMS_PER_THREAD: usize = 16;

/// One batch item ready to be signed: its place in the answer, its entry and its CSR.
type Job = (usize, Arc<Entry>, Vec<u8>);

/// Checks the CSRs and signs the SVIDs of `jobs` on the blocking pool, spread over the
/// machine's cores (each CSR check and signature is a few tens of microseconds of CPU, so
/// a 500-item batch would otherwise hold one async thread for tens of milliseconds).
async fn sign_jobs(
    inner: &Arc<Inner>,
    agent: &SpiffeId,
    jobs: Vec<Job>,
) -> Vec<(usize, Result<pb::X509Svid, AgentApiError>)> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = jobs.len().div_ceil(ITEMS_PER_THREAD).clamp(1, cores);
    let per_thread = jobs.len().div_ceil(threads).max(1);
    let mut jobs = jobs.into_iter();
    let mut running = Vec::with_capacity(threads);
    loop {
        let chunk: Vec<Job> = jobs.by_ref().take(per_thread).collect();
        if chunk.is_empty() {
            break;
        }
        let (inner, agent) = (inner.clone(), agent.clone());
        let indexes: Vec<usize> = chunk.iter().map(|(i, _, _)| *i).collect();
        let task = tokio::task::spawn_blocking(move || {
            chunk
                .into_iter()
                .map(|(i, entry, csr)| (i, sign_for_entry(&inner, &agent, &entry, &csr)))
                .collect::<Vec<_>>()
        });
        running.push((indexes, task));
    }
    let mut out = Vec::new();
    for (indexes, task) in running {
        match task.await {
            Ok(results) => out.extend(results),
            // A panic in a signature (a bug): its items fail, the others stand.
            Err(e) => out.extend(
                indexes.into_iter().map(|i| (i, Err(AgentApiError::SigningTask(e.to_string())))),
            ),
        }
    }
    out
}

/// The method refusals of batch items are counted under.
const BATCH_METHOD: &str = "/keycard.agent.v1.Agent/BatchNewX509Svid";

fn item_result(
    inner: &Inner,
    entry_id: String,
    result: Result<pb::X509Svid, AgentApiError>,
) -> pb::X509SvidResult {
    match result {
        Ok(svid) => pb::X509SvidResult {
            entry_id,
            svid: Some(svid),
            status_code: 0,
            status_message: String::new(),
            retry_after_ms: 0,
        },
        Err(e) => {
            let code = code_of(&e);
            inner.metrics.refused(BATCH_METHOD, code);
            pb::X509SvidResult {
                entry_id,
                svid: None,
                status_code: code as i32,
                status_message: e.to_string(),
                retry_after_ms: 0,
            }
        }
    }
}

/// `BatchNewX509Svid`: one result per item, each with its own status, so one bad item
/// does not cost the others their SVIDs. The first items get the signing tokens the
/// agent's bucket holds; the rest are answered `ResourceExhausted` with the time their
/// tokens will be there, and only a call that gets no token at all fails as a whole.
/// Entries are looked up first; the CSR checks and signatures then run on the blocking
/// pool, over every core ([`sign_jobs`]).
pub async fn batch_new_x509_svid(
    inner: &Arc<Inner>,
    req: Request<pb::BatchNewX509SvidRequest>,
) -> Result<pb::BatchNewX509SvidResponse, AgentApiError> {
    let agent = inner.authenticate(&req).await?;
    let mut params = req.into_inner().params;
    if params.len() > MAX_BATCH {
        return Err(AgentApiError::TooManyItems { len: params.len(), max: MAX_BATCH });
    }
    let grant = take_sign_tokens(inner, &agent.id, params.len());
    if grant.granted == 0 && !params.is_empty() {
        return Err(rate_limited(inner, &agent.id, &grant, params.len()));
    }
    let later = params.split_off(grant.granted);
    let mut slots: Vec<Option<Result<pb::X509Svid, AgentApiError>>> = Vec::new();
    let mut jobs = Vec::with_capacity(params.len());
    let mut ids = Vec::with_capacity(params.len());
    for (i, p) in params.into_iter().enumerate() {
        match authorized_entry(inner, &agent, &p.entry_id).await {
            Ok(entry) => {
                jobs.push((i, entry, p.csr));
                slots.push(None);
            }
            Err(e) => slots.push(Some(Err(e))),
        }
        ids.push(p.entry_id);
    }
    for (i, result) in sign_jobs(inner, &agent.id, jobs).await {
        slots[i] = Some(result);
    }
    let mut results = Vec::with_capacity(ids.len() + later.len());
    for (entry_id, slot) in ids.into_iter().zip(slots) {
        let result = slot.unwrap_or_else(|| Err(AgentApiError::SigningTask("no result".into())));
        results.push(item_result(inner, entry_id, result));
    }
    for (k, p) in later.into_iter().enumerate() {
        inner.metrics.refused(BATCH_METHOD, Code::ResourceExhausted);
        let after = grant.retry_after(k);
        results.push(pb::X509SvidResult {
            status_message: format!(
                "signing rate limit reached for agent {}; retry after {} ms",
                agent.id,
                after.as_millis()
            ),
            entry_id: p.entry_id,
            svid: None,
            status_code: Code::ResourceExhausted as i32,
            retry_after_ms: u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
        });
    }
    Ok(pb::BatchNewX509SvidResponse { results })
}

/// The RFC 8705 thumbprint of the X.509-SVID an agent sent to bind a JWT-SVID of `entry`
/// to, once it is shown to chain to this trust domain's bundle, to name the entry's SPIFFE
/// ID and to be valid now: so an agent cannot bind a token to a certificate its workload
/// does not hold (it would need a certificate the CA issued for that ID).
fn binding_thumbprint(
    inner: &Inner,
    entry: &Entry,
    chain: &[Vec<u8>],
) -> Result<String, AgentApiError> {
    let refuse =
        |why: String| AgentApiError::BadBindingCertificate { entry_id: entry.id.clone(), why };
    if chain.is_empty() {
        return Err(refuse("no X.509-SVID was sent".into()));
    }
    if chain.len() > MAX_BINDING_CHAIN {
        return Err(refuse(format!("the chain sent has {} certificates", chain.len())));
    }
    let certs: Vec<CertificateDer<'_>> =
        chain.iter().map(|c| CertificateDer::from(&c[..])).collect();
    let bundles: X509BundleSet = [inner.ca.x509_bundle()].into_iter().collect();
    let now = UnixTime::since_unix_epoch(
        inner.clock.now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default(),
    );
    let id = verify_chain(&certs, &bundles, now)
        .map_err(|e| refuse(format!("the X.509-SVID sent is refused: {e}")))?;
    if id != entry.spec.spiffe_id {
        return Err(refuse(format!(
            "the X.509-SVID sent is for {id}, not the entry's {}",
            entry.spec.spiffe_id
        )));
    }
    Ok(x5t_s256(&chain[0]))
}

/// Most certificates accepted in a binding chain (leaf and intermediates).
const MAX_BINDING_CHAIN: usize = 8;

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
    let thumbprint = match entry.spec.jwt_svid_binding {
        JwtSvidBinding::None => None,
        JwtSvidBinding::X509 => Some(binding_thumbprint(inner, &entry, &req.x509_svid)?),
    };
    take_one_sign_token(inner, &agent.id)?;
    let ttl = entry.spec.jwt_ttl.unwrap_or(inner.options.default_jwt_ttl);
    let started = Instant::now();
    let minted = inner
        .ca
        .sign_bound_jwt_svid(&entry.spec.spiffe_id, &req.audiences, ttl, thumbprint.as_deref())
        .map_err(AgentApiError::Ca)?;
    inner.metrics.issued("jwt", "workload", started.elapsed());
    tracing::info!(
        target: AUDIT_TARGET,
        event = "jwt_svid_issued",
        spiffe_id = %entry.spec.spiffe_id,
        audience_count = req.audiences.len(),
        first_audience = req.audiences.first().map_or("", String::as_str),
        expiry = unix_secs(minted.expiry),
        bound_to = thumbprint.as_deref().unwrap_or(""),
        agent = %agent.id,
    );
    Ok(pb::NewJwtSvidResponse {
        token: minted.token,
        expires_at: unix_secs(minted.expiry),
        spiffe_id: entry.spec.spiffe_id.to_string(),
    })
}

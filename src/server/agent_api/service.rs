//! The gRPC service: authenticates the calling agent from its verified certificate, then
//! hands each call to [`super::attest`] or [`super::signing`], or answers it here (sync,
//! bundle). Every refusal goes through [`super::status`] and is counted by method and code.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use keycard_workload_api::SpiffeId;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::authorized::AuthorizedEntries;
use super::limits::KeyedLimiter;
use super::proto::agent_server::{Agent, AgentServer};
use super::proto::{self as pb};
use super::tls::PeerInfo;
use super::{AgentApiError, AgentApiOptions, MAX_MESSAGE_SIZE, SYNC_PAGE_SIZE};
use crate::ca::CaManager;
use crate::clock::Clock;
use crate::server::datastore::{AgentRecord, DataStore, DataStoreError};
use crate::telemetry::metrics::ServerMetrics;

/// Everything the handlers share.
#[derive(Debug)]
pub struct Inner {
    /// The server's options.
    pub options: AgentApiOptions,
    /// Signs SVIDs and provides the bundle.
    pub ca: Arc<CaManager>,
    /// Agents, join tokens (entries are read through `cache`).
    pub store: Arc<dyn DataStore>,
    /// Counters and histograms.
    pub metrics: Arc<ServerMetrics>,
    /// The time.
    pub clock: Arc<dyn Clock>,
    /// Registration entries in memory.
    pub cache: Arc<AuthorizedEntries>,
    /// Attestations per source address.
    pub attest_limiter: KeyedLimiter<IpAddr>,
    /// Signatures per agent.
    pub sign_limiter: KeyedLimiter<SpiffeId>,
}

/// The agent API service (cheap to clone).
#[derive(Debug, Clone)]
pub struct AgentService {
    inner: Arc<Inner>,
}

/// Runs a blocking datastore call off the async threads.
pub async fn blocking<T: Send + 'static>(
    store: &Arc<dyn DataStore>,
    f: impl FnOnce(&dyn DataStore) -> Result<T, DataStoreError> + Send + 'static,
) -> Result<T, AgentApiError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(|e| AgentApiError::DataStore(DataStoreError::Backend(e.to_string())))?
        .map_err(AgentApiError::from)
}

impl Inner {
    /// The calling agent: the verified certificate's ID, whose record must exist, not be
    /// banned, and name this certificate's serial as the current one.
    pub async fn authenticate<T>(&self, req: &Request<T>) -> Result<AgentRecord, AgentApiError> {
        let chain = req
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.chain.clone())
            .ok_or(AgentApiError::NoAgentSvid)?;
        let leaf = chain.first().ok_or(AgentApiError::NoAgentSvid)?;
        let id = keycard_workload_api::spiffe_id_of(leaf)
            .map_err(|e| AgentApiError::NotAnAgent(e.to_string()))?;
        // Agent IDs are `/keycard/agent/...` by default, but an operator may choose any ID of
        // the trust domain for a join token: the agent record below is what decides.
        if !id.is_member_of(&self.options.trust_domain) || id == self.options.server_id() {
            return Err(AgentApiError::NotAnAgent(id.to_string()));
        }
        let serial = serial_of(leaf)?;
        let lookup = id.clone();
        let record = blocking(&self.store, move |s| s.get_agent(&lookup))
            .await?
            .ok_or_else(|| AgentApiError::UnknownAgent(id.to_string()))?;
        if record.banned {
            return Err(AgentApiError::BannedAgent(id.to_string()));
        }
        if record.svid_serial != serial {
            return Err(AgentApiError::StaleAgentSvid { presented: serial });
        }
        Ok(record)
    }

    /// The bundle as SPIFFE JSON bytes.
    pub fn bundle_json(&self) -> Result<Vec<u8>, AgentApiError> {
        let bundle = self.ca.bundle().map_err(AgentApiError::Ca)?;
        let json = bundle.to_json().map_err(|e| AgentApiError::Setup(e.to_string()))?;
        Ok(json.into_bytes())
    }

    /// Maps `err` to a status and counts the refusal.
    pub fn refuse(&self, method: &str, err: &AgentApiError) -> Status {
        let status = super::status::to_status(err);
        self.metrics.refused(method, status.code());
        status
    }
}

/// The serial number of a certificate, lowercase hex, as stored in agent records.
pub fn serial_of(cert: &[u8]) -> Result<String, AgentApiError> {
    use x509_parser::prelude::FromDer as _;
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(cert)
        .map_err(|e| AgentApiError::NotAnAgent(format!("unreadable certificate: {e}")))?;
    Ok(hex::encode(parsed.raw_serial()))
}

impl AgentService {
    /// The service over its parts.
    pub fn new(
        options: AgentApiOptions,
        ca: Arc<CaManager>,
        store: Arc<dyn DataStore>,
        metrics: Arc<ServerMetrics>,
        clock: Arc<dyn Clock>,
        cache: Arc<AuthorizedEntries>,
    ) -> Self {
        let attest_limiter = KeyedLimiter::new(options.attest_rate);
        let sign_limiter = KeyedLimiter::new(options.sign_rate);
        let inner =
            Inner { options, ca, store, metrics, clock, cache, attest_limiter, sign_limiter };
        Self { inner: Arc::new(inner) }
    }

    /// The tonic server for this service, with message sizes bounded.
    pub fn into_server(self) -> AgentServer<Self> {
        AgentServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    async fn sync(
        &self,
        req: Request<pb::SyncEntriesRequest>,
    ) -> Result<Vec<pb::SyncEntriesResponse>, AgentApiError> {
        let agent = self.inner.authenticate(&req).await?;
        let req = req.into_inner();
        if req.entry_ids.len() > SYNC_PAGE_SIZE {
            return Err(AgentApiError::TooManyItems {
                len: req.entry_ids.len(),
                max: SYNC_PAGE_SIZE,
            });
        }
        self.inner.cache.refresh().await;
        let set = self.inner.cache.authorized_for(&agent.id, &agent.selectors);
        let wanted: std::collections::HashSet<&str> =
            req.entry_ids.iter().map(String::as_str).collect();
        let all: Vec<_> = set.entries.values().collect();
        let mut pages: Vec<pb::SyncEntriesResponse> = all
            .chunks(SYNC_PAGE_SIZE)
            .map(|chunk| pb::SyncEntriesResponse {
                revisions: chunk
                    .iter()
                    .map(|e| pb::EntryRevision { id: e.id.clone(), revision: e.revision })
                    .collect(),
                entries: chunk
                    .iter()
                    .filter(|e| e.revision > req.since_revision || wanted.contains(e.id.as_str()))
                    .map(|e| entry_to_proto(e))
                    .collect(),
                ..Default::default()
            })
            .collect();
        pages.push(pb::SyncEntriesResponse {
            complete: true,
            revision: set.revision,
            bundle: self.inner.bundle_json()?,
            tainted_authority_ids: self.inner.ca.tainted_x509_authorities(),
            ..Default::default()
        });
        Ok(pages)
    }
}

/// An entry on the wire.
pub fn entry_to_proto(e: &crate::server::entry::Entry) -> pb::Entry {
    let secs = |d: Option<std::time::Duration>| d.map_or(0, |d| d.as_secs() as i64);
    pb::Entry {
        id: e.id.clone(),
        spiffe_id: e.spec.spiffe_id.to_string(),
        parent_id: e.spec.parent_id.to_string(),
        selectors: e.spec.selectors.iter().map(ToString::to_string).collect(),
        x509_ttl_seconds: secs(e.spec.x509_ttl),
        jwt_ttl_seconds: secs(e.spec.jwt_ttl),
        dns_names: e.spec.dns_names.clone(),
        hint: e.spec.hint.clone(),
        admin: e.spec.admin,
        revision: e.revision,
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

const SERVICE: &str = "/keycard.agent.v1.Agent/";

#[tonic::async_trait]
impl Agent for AgentService {
    type AttestAgentStream = BoxStream<pb::AttestAgentResponse>;
    type SyncEntriesStream = BoxStream<pb::SyncEntriesResponse>;

    async fn attest_agent(
        &self,
        req: Request<Streaming<pb::AttestAgentRequest>>,
    ) -> Result<Response<Self::AttestAgentStream>, Status> {
        let stream = super::attest::start(self.inner.clone(), req);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn renew_agent(
        &self,
        req: Request<pb::RenewAgentRequest>,
    ) -> Result<Response<pb::RenewAgentResponse>, Status> {
        super::signing::renew_agent(&self.inner, req)
            .await
            .map(Response::new)
            .map_err(|e| self.inner.refuse(&format!("{SERVICE}RenewAgent"), &e))
    }

    async fn sync_entries(
        &self,
        req: Request<pb::SyncEntriesRequest>,
    ) -> Result<Response<Self::SyncEntriesStream>, Status> {
        let pages = self
            .sync(req)
            .await
            .map_err(|e| self.inner.refuse(&format!("{SERVICE}SyncEntries"), &e))?;
        Ok(Response::new(Box::pin(tokio_stream::iter(pages.into_iter().map(Ok)))))
    }

    async fn batch_new_x509_svid(
        &self,
        req: Request<pb::BatchNewX509SvidRequest>,
    ) -> Result<Response<pb::BatchNewX509SvidResponse>, Status> {
        super::signing::batch_new_x509_svid(&self.inner, req)
            .await
            .map(Response::new)
            .map_err(|e| self.inner.refuse(&format!("{SERVICE}BatchNewX509Svid"), &e))
    }

    async fn new_jwt_svid(
        &self,
        req: Request<pb::NewJwtSvidRequest>,
    ) -> Result<Response<pb::NewJwtSvidResponse>, Status> {
        super::signing::new_jwt_svid(&self.inner, req)
            .await
            .map(Response::new)
            .map_err(|e| self.inner.refuse(&format!("{SERVICE}NewJwtSvid"), &e))
    }

    async fn fetch_bundle(
        &self,
        req: Request<pb::FetchBundleRequest>,
    ) -> Result<Response<pb::FetchBundleResponse>, Status> {
        let answer = async {
            self.inner.authenticate(&req).await?;
            Ok(pb::FetchBundleResponse { bundle: self.inner.bundle_json()? })
        };
        answer
            .await
            .map(Response::new)
            .map_err(|e: AgentApiError| self.inner.refuse(&format!("{SERVICE}FetchBundle"), &e))
    }
}

//! The gRPC service: authenticates the calling agent from its verified certificate, then
//! hands each call to [`super::attest`] or [`super::signing`] or (sync by cursor)
//! [`super::cursor_sync`], or answers it here (sync by revision list, bundle). Every
//! refusal goes through [`super::status`] and is counted by method and code.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::authorized::AuthorizedEntries;
use super::error::AgentApiError;
use super::limits::KeyedLimiter;
use super::options::AgentApiOptions;
use super::proto::agent_server::{Agent, AgentServer};
use super::proto::{self as pb};
use super::state::Inner;
use crate::ca::CaManager;
use crate::clock::Clock;
use crate::server::datastore::{DataStore, DataStoreError};
use crate::server::federation::foreign::ForeignBundles;
use crate::telemetry::metrics::ServerMetrics;
use crate::wire::{MAX_MESSAGE_SIZE, SYNC_PAGE_SIZE};

/// The agent API service (cheap to clone).
#[derive(Debug, Clone)]
pub struct AgentService {
    inner: Arc<Inner>,
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
        let foreign = Arc::new(ForeignBundles::new(store.clone(), options.trust_domain.clone()));
        let inner = Inner {
            options,
            ca,
            store,
            metrics,
            clock,
            cache,
            foreign,
            attest_limiter,
            sign_limiter,
            agents: Default::default(),
        };
        Self { inner: Arc::new(inner) }
    }

    /// The foreign bundles as agents receive them (tests forget the last read with
    /// [`ForeignBundles::invalidate`] instead of waiting a second).
    pub fn foreign_bundles(&self) -> &ForeignBundles {
        &self.inner.foreign
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
        // Read once for the whole call: agent record, entries and foreign bundles are each
        // read from the store only if something was committed since they last were.
        let mark = self.inner.store.change_mark();
        let agent = self.inner.authenticate_at(&req, mark).await?;
        let req = req.into_inner();
        if req.by_cursor && self.inner.options.sync_by_cursor {
            self.inner.cache.refresh_from(mark).await;
            let foreign = match self.inner.foreign.cached_at(mark) {
                Some(set) => set,
                None => {
                    let foreign = self.inner.foreign.clone();
                    tokio::task::spawn_blocking(move || foreign.current()).await.map_err(
                        |e| AgentApiError::DataStore(DataStoreError::Backend(e.to_string())),
                    )??
                }
            };
            return super::cursor_sync::answer(&self.inner, &agent, &req, &foreign);
        }
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
            tainted_authority_ids: self.inner.ca.tainted_authorities(),
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
        jwt_svid_binding: e.spec.jwt_svid_binding.as_str().to_owned(),
        federates_with: e.spec.federates_with.iter().map(|td| td.name().to_owned()).collect(),
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

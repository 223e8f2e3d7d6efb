//! The tonic service: decodes each request, runs the work on a blocking thread (the
//! datastore and the CA are synchronous), and maps errors once, in [`super::status`].

use std::sync::Arc;

use keycard_workload_api::{SpiffeId, TrustDomain};
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use super::convert::{kind_from_pb, page_request, parse_id, parse_optional_id, spec_from_pb};
use super::pb;
use super::pb::admin_server::Admin;
use super::status::AdminError;
use crate::ca::CaManager;
use crate::clock::Clock;
use crate::server::cluster::Cluster;
use crate::server::datastore::DataStore;
use crate::server::entry::SERVER_PATH;
use crate::server::federation::https::HttpsFetcher;
use crate::server::federation::refresh::Refresher;
use crate::telemetry::ServerMetrics;

/// The admin API service; cheap to clone (everything is shared).
#[derive(Debug, Clone)]
pub struct AdminService {
    pub(super) trust_domain: TrustDomain,
    /// `spiffe://<td>/keycard/server`: always a valid parent.
    pub(super) server_id: SpiffeId,
    pub(super) store: Arc<dyn DataStore>,
    pub(super) ca: Arc<CaManager>,
    /// This server among the others on the datastore (taint and revoke of their
    /// authorities, the peers `Health` reports).
    pub(super) cluster: Arc<Cluster>,
    pub(super) metrics: Arc<ServerMetrics>,
    pub(super) clock: Arc<dyn Clock>,
    /// Fetches a foreign bundle when an operator asks (`federation refresh`).
    pub(super) refresher: Refresher,
}

/// Who called, for audit events: the peer uid the kernel reported, if any.
pub(super) type Caller = Option<u32>;

fn caller<T>(req: &Request<T>) -> Caller {
    req.extensions().get::<UdsConnectInfo>().and_then(|i| i.peer_cred).map(|c| c.uid())
}

impl AdminService {
    /// A service over these parts.
    pub fn new(
        trust_domain: TrustDomain,
        store: Arc<dyn DataStore>,
        cluster: Arc<Cluster>,
        metrics: Arc<ServerMetrics>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let ca = cluster.ca().clone();
        // The server path is a constant valid path; fall back to the trust domain's ID.
        let server_id = trust_domain.spiffe_id(SERVER_PATH).unwrap_or_else(|_| trust_domain.id());
        let refresher = Refresher::new(
            store.clone(),
            clock.clone(),
            Arc::new(HttpsFetcher::default()),
            metrics.clone(),
        );
        Self { trust_domain, server_id, store, ca, cluster, metrics, clock, refresher }
    }

    /// Runs `work` on a blocking thread with a clone of the service.
    async fn blocking<T, F>(&self, work: F) -> Result<Response<T>, Status>
    where
        T: Send + 'static,
        F: FnOnce(&AdminService) -> Result<T, AdminError> + Send + 'static,
    {
        let service = self.clone();
        match tokio::task::spawn_blocking(move || work(&service)).await {
            Ok(Ok(reply)) => Ok(Response::new(reply)),
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(AdminError::Task(e.to_string()).into()),
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_entry(
        &self,
        req: Request<pb::CreateEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let who = caller(&req);
        let spec = spec_from_pb(req.into_inner().spec)?;
        self.blocking(move |s| s.create_entry(&spec, who)).await
    }

    async fn get_entry(
        &self,
        req: Request<pb::GetEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let id = req.into_inner().id;
        self.blocking(move |s| s.get_entry(&id)).await
    }

    async fn update_entry(
        &self,
        req: Request<pb::UpdateEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let who = caller(&req);
        let req = req.into_inner();
        let spec = spec_from_pb(req.spec)?;
        self.blocking(move |s| s.update_entry(&req.id, &spec, who)).await
    }

    async fn delete_entry(
        &self,
        req: Request<pb::DeleteEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let who = caller(&req);
        let id = req.into_inner().id;
        self.blocking(move |s| s.delete_entry(&id, who)).await
    }

    async fn list_entries(
        &self,
        req: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        let req = req.into_inner();
        let filter = super::convert::filter_from_pb(&req)?;
        let page = page_request(req.page_size, &req.page_token);
        self.blocking(move |s| s.list_entries(&filter, &page)).await
    }

    async fn count_entries(
        &self,
        _req: Request<pb::CountEntriesRequest>,
    ) -> Result<Response<pb::CountEntriesResponse>, Status> {
        self.blocking(|s| Ok(pb::CountEntriesResponse { count: s.store.count_entries()? })).await
    }

    async fn batch_create_entries(
        &self,
        req: Request<pb::BatchCreateEntriesRequest>,
    ) -> Result<Response<pb::BatchEntriesResponse>, Status> {
        let who = caller(&req);
        let req = req.into_inner();
        self.blocking(move |s| s.batch_create_entries(req, who)).await
    }

    async fn batch_delete_entries(
        &self,
        req: Request<pb::BatchDeleteEntriesRequest>,
    ) -> Result<Response<pb::BatchEntriesResponse>, Status> {
        let who = caller(&req);
        let req = req.into_inner();
        self.blocking(move |s| s.batch_delete_entries(req, who)).await
    }

    async fn generate_join_token(
        &self,
        req: Request<pb::GenerateJoinTokenRequest>,
    ) -> Result<Response<pb::GenerateJoinTokenResponse>, Status> {
        let who = caller(&req);
        let req = req.into_inner();
        let agent_id = parse_optional_id("agent_id", &req.agent_id)?;
        self.blocking(move |s| s.generate_join_token(req.ttl_seconds, agent_id, who)).await
    }

    async fn list_agents(
        &self,
        req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let req = req.into_inner();
        let page = page_request(req.page_size, &req.page_token);
        self.blocking(move |s| s.list_agents(&page)).await
    }

    async fn get_agent(
        &self,
        req: Request<pb::AgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let id = parse_id("id", &req.into_inner().id)?;
        self.blocking(move |s| s.get_agent(&id)).await
    }

    async fn evict_agent(
        &self,
        req: Request<pb::AgentRequest>,
    ) -> Result<Response<pb::EvictAgentResponse>, Status> {
        let who = caller(&req);
        let id = parse_id("id", &req.into_inner().id)?;
        self.blocking(move |s| s.evict_agent(&id, who)).await
    }

    async fn ban_agent(
        &self,
        req: Request<pb::AgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let who = caller(&req);
        let id = parse_id("id", &req.into_inner().id)?;
        self.blocking(move |s| s.ban_agent(&id, who)).await
    }

    async fn get_bundle(
        &self,
        req: Request<pb::GetBundleRequest>,
    ) -> Result<Response<pb::GetBundleResponse>, Status> {
        let format = req.into_inner().format();
        self.blocking(move |s| s.get_bundle(format)).await
    }

    async fn list_authorities(
        &self,
        req: Request<pb::ListAuthoritiesRequest>,
    ) -> Result<Response<pb::ListAuthoritiesResponse>, Status> {
        let kind = kind_from_pb(req.into_inner().kind)?;
        self.blocking(move |s| s.list_authorities(kind)).await
    }

    async fn prepare_authority(
        &self,
        req: Request<pb::ListAuthoritiesRequest>,
    ) -> Result<Response<pb::Authority>, Status> {
        let kind = kind_from_pb(req.into_inner().kind)?;
        self.blocking(move |s| s.prepare_authority(kind)).await
    }

    async fn activate_authority(
        &self,
        req: Request<pb::AuthorityRequest>,
    ) -> Result<Response<pb::Authority>, Status> {
        let req = req.into_inner();
        let kind = kind_from_pb(req.kind)?;
        self.blocking(move |s| s.activate_authority(kind, &req.id)).await
    }

    async fn taint_authority(
        &self,
        req: Request<pb::AuthorityRequest>,
    ) -> Result<Response<pb::Authority>, Status> {
        let req = req.into_inner();
        let kind = kind_from_pb(req.kind)?;
        self.blocking(move |s| s.taint_authority(kind, &req.id)).await
    }

    async fn revoke_authority(
        &self,
        req: Request<pb::AuthorityRequest>,
    ) -> Result<Response<pb::RevokeAuthorityResponse>, Status> {
        let req = req.into_inner();
        let kind = kind_from_pb(req.kind)?;
        self.blocking(move |s| s.revoke_authority(kind, &req.id)).await
    }

    async fn health(
        &self,
        _req: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        self.blocking(|s| Ok(s.health())).await
    }

    async fn create_federation(
        &self,
        req: Request<pb::FederationRequest>,
    ) -> Result<Response<pb::Federation>, Status> {
        let who = caller(&req);
        let req = req.into_inner();
        self.blocking(move |s| s.create_federation(&req, who)).await
    }

    async fn update_federation(
        &self,
        req: Request<pb::FederationRequest>,
    ) -> Result<Response<pb::Federation>, Status> {
        let who = caller(&req);
        let req = req.into_inner();
        self.blocking(move |s| s.update_federation(&req, who)).await
    }

    async fn get_federation(
        &self,
        req: Request<pb::TrustDomainRequest>,
    ) -> Result<Response<pb::Federation>, Status> {
        let td = req.into_inner().trust_domain;
        self.blocking(move |s| s.get_federation(&td)).await
    }

    async fn list_federations(
        &self,
        _req: Request<pb::ListFederationsRequest>,
    ) -> Result<Response<pb::ListFederationsResponse>, Status> {
        self.blocking(|s| s.list_federations()).await
    }

    async fn delete_federation(
        &self,
        req: Request<pb::TrustDomainRequest>,
    ) -> Result<Response<pb::Federation>, Status> {
        let who = caller(&req);
        let td = req.into_inner().trust_domain;
        self.blocking(move |s| s.delete_federation(&td, who)).await
    }

    async fn refresh_federation(
        &self,
        req: Request<pb::TrustDomainRequest>,
    ) -> Result<Response<pb::Federation>, Status> {
        let td = self.foreign_domain(&req.into_inner().trust_domain)?;
        let record = self.refresher.refresh_now(&td).await.map_err(AdminError::from)?;
        self.blocking(move |s| s.federation_to_pb(&record)).await
    }

    async fn set_foreign_bundle(
        &self,
        req: Request<pb::SetForeignBundleRequest>,
    ) -> Result<Response<pb::ForeignBundle>, Status> {
        let who = caller(&req);
        let req = req.into_inner();
        self.blocking(move |s| s.set_foreign_bundle(&req, who)).await
    }

    async fn list_foreign_bundles(
        &self,
        _req: Request<pb::ListForeignBundlesRequest>,
    ) -> Result<Response<pb::ListForeignBundlesResponse>, Status> {
        self.blocking(|s| s.list_foreign_bundles()).await
    }

    async fn delete_foreign_bundle(
        &self,
        req: Request<pb::TrustDomainRequest>,
    ) -> Result<Response<pb::ForeignBundle>, Status> {
        let who = caller(&req);
        let td = req.into_inner().trust_domain;
        self.blocking(move |s| s.delete_foreign_bundle(&td, who)).await
    }
}

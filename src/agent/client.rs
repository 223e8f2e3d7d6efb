//! The agent's client of the server's agent API.
//!
//! [`ServerClient::connect`] opens TLS to the server, trusting a bootstrap bundle and the
//! server ID `spiffe://<td>/keycard/server` only. Attestation makes a fresh agent key,
//! gets an agent SVID, verifies it (chain to the bundle the server sent, the ID the server
//! named, our own key) before adopting it, and reconnects with it as the client
//! certificate; every later call goes over that mTLS connection. Renewal does the same
//! with a new key.
//!
//! A new agent SVID is written to the agent's storage (atomically, fsync'd) before it is
//! used for anything: the server keeps accepting the SVID a renewal was asked with until
//! the new one is first presented, so whether the reply is lost, the agent crashes before
//! storing it, or after, the agent restarts with an SVID the server accepts.
//!
//! Every call has a deadline ([`REQUEST_TIMEOUT`] unless set otherwise): a server or a
//! connection that stops answering fails the call, and the connection is dropped so that
//! the next call dials again instead of waiting on a half-open one. With several servers
//! configured the next call dials the next one ([`failover`]).

use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use keycard_workload_api::{SpiffeBundle, TrustDomain, X509Bundle};
use rustls::pki_types::CertificateDer;
use tonic::Request;
use tonic::transport::Channel;

pub use super::identity::{AgentIdentity, ClientError};
use super::identity::{chain_of, csr_for, verify_agent_svid};
use super::server_tls::TrustCell;
use super::storage::AgentStorage;
use crate::ca::{KeyType, SigningKey};
use crate::telemetry::AgentMetrics;
use crate::wire::REQUEST_TIMEOUT;
use crate::wire::proto as pb;
use crate::wire::proto::agent_client::AgentClient;

mod attest;
mod failover;
mod sync;

pub use failover::{ServerAddresses, failover_reason};
pub use sync::{FederatedUpdate, SyncDelta, SyncedEntries};

/// The outcome of attestation.
#[derive(Debug, Clone)]
pub struct Attestation {
    /// The agent's identity (also kept by the client).
    pub identity: AgentIdentity,
    /// The bundle the server sent.
    pub bundle: SpiffeBundle,
}

/// An X.509-SVID issued for an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedX509Svid {
    /// Leaf first, then intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// `notAfter`, seconds since the Unix epoch.
    pub expires_at: i64,
    /// Serial, hex.
    pub serial: String,
}

/// A client of the agent API; see the module documentation.
#[derive(Debug)]
pub struct ServerClient {
    /// The servers, and the one in use ([`failover`]).
    servers: ServerAddresses,
    trust_domain: TrustDomain,
    /// The bundle trusted for the server, shared with the open channel's verifier.
    trust: TrustCell,
    identity: Option<AgentIdentity>,
    grpc: AgentClient<Channel>,
    /// Where a new agent SVID (and the bundle it came with) is stored before it is used.
    storage: Option<AgentStorage>,
    /// The deadline of every call (a stream's whole exchange included).
    request_timeout: Duration,
    /// Where switches between servers are counted, when set.
    metrics: Option<Arc<AgentMetrics>>,
    /// Whether the client moved to another server since [`Self::take_switched`] was asked.
    switched: bool,
}

/// Runs `call` (named `name`) within `after`; one out of time, whether our timer or
/// tonic's (the request's `grpc-timeout`) noticed first, is [`ClientError::Timeout`].
async fn bounded<T>(
    after: Duration,
    name: &'static str,
    call: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    match tokio::time::timeout(after, call).await {
        Ok(Err(ClientError::Rpc(status))) if timed_out(&status) => {
            Err(ClientError::Timeout { call: name, after })
        }
        Ok(result) => result,
        Err(_) => Err(ClientError::Timeout { call: name, after }),
    }
}

/// Whether `status` is tonic's own deadline running out (not an answer from the server).
fn timed_out(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = e.source();
    }
    false
}

fn parse_bundle(td: &TrustDomain, json: &[u8]) -> Result<SpiffeBundle, ClientError> {
    SpiffeBundle::parse(td.clone(), json)
        .map_err(|e| ClientError::BadResponse(format!("bundle: {e}")))
}

/// One item of a `BatchNewX509Svid` answer: the SVID, or the status the server gave it
/// (with its retry-after, if it named one).
fn item_result(r: pb::X509SvidResult) -> Result<IssuedX509Svid, tonic::Status> {
    match r.svid {
        Some(svid) if r.status_code == 0 => Ok(IssuedX509Svid {
            chain: chain_of(&svid),
            expires_at: svid.expires_at,
            serial: svid.serial,
        }),
        _ => {
            let status = tonic::Status::new(tonic::Code::from_i32(r.status_code), r.status_message);
            Err(match r.retry_after_ms {
                0 => status,
                ms => crate::wire::with_retry_after(status, Duration::from_millis(ms)),
            })
        }
    }
}

impl ServerClient {
    /// A client with no agent SVID yet, over an open channel.
    fn unattested(
        servers: ServerAddresses,
        trust_domain: TrustDomain,
        trust: TrustCell,
        grpc: AgentClient<Channel>,
        request_timeout: Duration,
    ) -> Self {
        Self {
            servers,
            trust_domain,
            trust,
            identity: None,
            grpc,
            storage: None,
            request_timeout,
            metrics: None,
            switched: false,
        }
    }

    /// Connects without a client certificate (to attest), trusting `bootstrap` for the
    /// server's certificate. `addr` is `host:port`.
    pub async fn connect(
        addr: &str,
        trust_domain: TrustDomain,
        bootstrap: X509Bundle,
    ) -> Result<Self, ClientError> {
        Self::dial(ServerAddresses::one(addr), trust_domain, Some(bootstrap), REQUEST_TIMEOUT).await
    }

    /// Connects without a client certificate and WITHOUT authenticating the server's chain
    /// (only its SPIFFE ID is checked): the insecure bootstrap. The bundle the server sends
    /// with the attestation answer is trusted from then on.
    pub async fn connect_insecure(
        addr: &str,
        trust_domain: TrustDomain,
    ) -> Result<Self, ClientError> {
        Self::dial(ServerAddresses::one(addr), trust_domain, None, REQUEST_TIMEOUT).await
    }

    /// Connects with an agent SVID obtained earlier (after a restart).
    pub async fn connect_with_identity(
        addr: &str,
        trust_domain: TrustDomain,
        bundle: X509Bundle,
        identity: AgentIdentity,
    ) -> Result<Self, ClientError> {
        let servers = ServerAddresses::one(addr);
        Self::with_identity_at(servers, trust_domain, bundle, identity, REQUEST_TIMEOUT).await
    }

    /// Connects with an agent SVID obtained earlier to the current server of `servers`.
    /// The connection is made on first use, so this does not wait for any server: a call
    /// that finds it gone moves to the next one.
    pub async fn with_identity_at(
        servers: ServerAddresses,
        trust_domain: TrustDomain,
        bundle: X509Bundle,
        identity: AgentIdentity,
        request_timeout: Duration,
    ) -> Result<Self, ClientError> {
        let trust = Arc::new(RwLock::new(bundle));
        let within = failover::connect_timeout(request_timeout);
        let grpc = super::server_tls::open_channel_within(
            servers.current(),
            &trust_domain,
            &trust,
            Some(&identity),
            within,
        )
        .await?;
        let mut client = Self::unattested(servers, trust_domain, trust, grpc, request_timeout);
        client.identity = Some(identity);
        Ok(client)
    }

    /// Stores every new agent SVID (attestation, renewal) in `storage` before using it.
    pub fn with_storage(mut self, storage: AgentStorage) -> Self {
        self.storage = Some(storage);
        self
    }

    /// Gives every call `after` to complete instead of [`REQUEST_TIMEOUT`] (a dial made
    /// from now on too, when that is shorter than [`super::server_tls::CONNECT_TIMEOUT`]).
    pub fn with_request_timeout(mut self, after: Duration) -> Self {
        self.request_timeout = after;
        self
    }

    /// A request carrying the deadline, so that the server gives up when the agent does.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.request_timeout);
        request
    }

    /// Passes `result` on; when it says the server is gone, first moves to the next
    /// server ([`ServerClient::fail_over`]): the next call dials it. During attestation
    /// (no agent SVID yet) the caller connects again.
    async fn checked<T>(&mut self, result: Result<T, ClientError>) -> Result<T, ClientError> {
        if let Err(e) = &result {
            self.fail_over(e).await;
        }
        result
    }

    /// Writes `identity` (after `bundle`, when given, which it must verify against) to the
    /// storage, off the async threads; without storage there is nothing to do.
    async fn store(
        &self,
        identity: &AgentIdentity,
        bundle: Option<&SpiffeBundle>,
    ) -> Result<(), ClientError> {
        let Some(storage) = self.storage.clone() else { return Ok(()) };
        let (identity, bundle) = (identity.clone(), bundle.cloned());
        tokio::task::spawn_blocking(move || {
            if let Some(bundle) = &bundle {
                storage.save_bundle(bundle)?;
            }
            storage.save_identity(&identity)
        })
        .await
        .map_err(|e| ClientError::Store(e.to_string()))?
        .map_err(|e| ClientError::Store(e.to_string()))
    }

    /// The agent's trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The agent identity in use, once attested.
    pub fn identity(&self) -> Option<&AgentIdentity> {
        self.identity.as_ref()
    }

    /// The X.509 bundle trusted for the server now.
    pub fn bundle(&self) -> X509Bundle {
        self.trust.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Trusts `bundle` for the server from now on, the open channel included. A synced
    /// bundle comes here only after the manager accepted it (never empty, never older).
    pub fn trust_server_bundle(&self, bundle: X509Bundle) {
        self.set_bundle(bundle);
    }

    fn set_bundle(&self, bundle: X509Bundle) {
        *self.trust.write().unwrap_or_else(PoisonError::into_inner) = bundle;
    }

    /// The raw gRPC client over the current connection (for calls this type does not wrap).
    pub fn grpc(&mut self) -> &mut AgentClient<Channel> {
        &mut self.grpc
    }

    async fn adopt(
        &mut self,
        identity: AgentIdentity,
        bundle: X509Bundle,
    ) -> Result<(), ClientError> {
        self.set_bundle(bundle);
        let within = failover::connect_timeout(self.request_timeout);
        let (addr, td) = (self.servers.current(), &self.trust_domain);
        self.grpc =
            super::server_tls::open_channel_within(addr, td, &self.trust, Some(&identity), within)
                .await?;
        self.identity = Some(identity);
        Ok(())
    }

    /// Renews the agent SVID with a new key, stores it, and reconnects with it. On any
    /// failure the current SVID stays in use (the server still accepts it).
    pub async fn renew(&mut self) -> Result<AgentIdentity, ClientError> {
        let current = self.identity.clone().ok_or(ClientError::NotAttested)?;
        let key = Arc::new(SigningKey::generate(KeyType::EcP256)?);
        let request = self.request(pb::RenewAgentRequest { csr: csr_for(&key)? });
        let call = async { Ok(self.grpc.renew_agent(request).await?.into_inner()) };
        let reply = bounded(self.request_timeout, "RenewAgent", call).await;
        let reply = self.checked(reply).await?;
        let svid = reply.svid.ok_or_else(|| ClientError::BadResponse("no SVID".into()))?;
        let bundle = self.bundle();
        let identity = verify_agent_svid(&svid, key, &current.spiffe_id, &bundle)?;
        self.store(&identity, None).await?;
        self.adopt(identity.clone(), bundle).await?;
        Ok(identity)
    }

    /// Signs CSRs for entries: one result per `(entry_id, csr)`, in order. An item the
    /// server refused for the agent's signing rate is `ResourceExhausted` with the time to
    /// retry as [`crate::wire::retry_after`] reads it; a call refused as a whole for the
    /// rate is a [`ClientError::Rpc`] that carries it the same way.
    pub async fn batch_new_x509_svid(
        &mut self,
        items: &[(String, Vec<u8>)],
    ) -> Result<Vec<Result<IssuedX509Svid, tonic::Status>>, ClientError> {
        let params = items
            .iter()
            .map(|(entry_id, csr)| pb::NewX509SvidParams {
                entry_id: entry_id.clone(),
                csr: csr.clone(),
            })
            .collect();
        let request = self.request(pb::BatchNewX509SvidRequest { params });
        let call = async { Ok(self.grpc.batch_new_x509_svid(request).await?.into_inner()) };
        let reply = bounded(self.request_timeout, "BatchNewX509Svid", call).await;
        let reply = self.checked(reply).await?;
        Ok(reply.results.into_iter().map(item_result).collect())
    }
    /// A JWT-SVID for an entry: `(token, expiry seconds since the epoch)`.
    pub async fn new_jwt_svid(
        &mut self,
        entry_id: &str,
        audiences: &[String],
    ) -> Result<(String, i64), ClientError> {
        self.new_bound_jwt_svid(entry_id, audiences, Vec::new()).await
    }

    /// [`ServerClient::new_jwt_svid`] for an entry bound to X.509: `x509_svid` is the chain
    /// (leaf first, DER) of the X.509-SVID the token is to be bound to.
    pub async fn new_bound_jwt_svid(
        &mut self,
        entry_id: &str,
        audiences: &[String],
        x509_svid: Vec<Vec<u8>>,
    ) -> Result<(String, i64), ClientError> {
        let req = pb::NewJwtSvidRequest {
            entry_id: entry_id.to_owned(),
            audiences: audiences.to_vec(),
            x509_svid,
        };
        let request = self.request(req);
        let call = async { Ok(self.grpc.new_jwt_svid(request).await?.into_inner()) };
        let reply = bounded(self.request_timeout, "NewJwtSvid", call).await;
        let reply = self.checked(reply).await?;
        Ok((reply.token, reply.expires_at))
    }

    /// The trust domain's bundle; also becomes the bundle trusted for the server.
    pub async fn fetch_bundle(&mut self) -> Result<SpiffeBundle, ClientError> {
        let request = self.request(pb::FetchBundleRequest {});
        let call = async { Ok(self.grpc.fetch_bundle(request).await?.into_inner()) };
        let reply = bounded(self.request_timeout, "FetchBundle", call).await;
        let reply = self.checked(reply).await?;
        let bundle = parse_bundle(&self.trust_domain, &reply.bundle)?;
        if let Ok(x509) = bundle.x509_bundle() {
            self.set_bundle(x509);
        }
        Ok(bundle)
    }
}

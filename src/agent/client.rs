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

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use keycard_workload_api::{SpiffeBundle, SpiffeId, TrustDomain, X509Bundle};
use rustls::pki_types::CertificateDer;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

pub use super::identity::{AgentIdentity, ClientError};
use super::identity::{chain_of, csr_for, verify_agent_svid};
use super::server_tls::TrustCell;
use super::storage::AgentStorage;
use crate::ca::{KeyType, SigningKey};
use crate::wire::proto::agent_client::AgentClient;
use crate::wire::proto::{self as pb, attest_agent_request, attest_agent_response};
use crate::wire::{SYNC_PAGE_SIZE, challenge_message};

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

/// The agent's copy of its authorized entries, updated by [`ServerClient::sync`].
#[derive(Debug, Clone, Default)]
pub struct SyncedEntries {
    /// The store revision the copy reflects (0 before the first sync).
    pub revision: u64,
    /// The entries by ID.
    pub entries: BTreeMap<String, pb::Entry>,
    /// The bundle as of the last sync.
    pub bundle: Option<SpiffeBundle>,
    /// IDs of tainted X.509 authorities.
    pub tainted_authority_ids: Vec<String>,
}

/// A client of the agent API; see the module documentation.
#[derive(Debug)]
pub struct ServerClient {
    addr: String,
    trust_domain: TrustDomain,
    /// The bundle trusted for the server, shared with the open channel's verifier.
    trust: TrustCell,
    identity: Option<AgentIdentity>,
    grpc: AgentClient<Channel>,
    /// Where a new agent SVID (and the bundle it came with) is stored before it is used.
    storage: Option<AgentStorage>,
}

fn parse_bundle(td: &TrustDomain, json: &[u8]) -> Result<SpiffeBundle, ClientError> {
    SpiffeBundle::parse(td.clone(), json)
        .map_err(|e| ClientError::BadResponse(format!("bundle: {e}")))
}

impl ServerClient {
    /// Connects without a client certificate (to attest), trusting `bootstrap` for the
    /// server's certificate. `addr` is `host:port`.
    pub async fn connect(
        addr: &str,
        trust_domain: TrustDomain,
        bootstrap: X509Bundle,
    ) -> Result<Self, ClientError> {
        let trust = Arc::new(RwLock::new(bootstrap));
        let grpc = super::open_channel(addr, &trust_domain, &trust, None).await?;
        Ok(Self { addr: addr.to_owned(), trust_domain, trust, identity: None, grpc, storage: None })
    }

    /// Connects without a client certificate and WITHOUT authenticating the server's chain
    /// (only its SPIFFE ID is checked): the insecure bootstrap. The bundle the server sends
    /// with the attestation answer is trusted from then on.
    pub async fn connect_insecure(
        addr: &str,
        trust_domain: TrustDomain,
    ) -> Result<Self, ClientError> {
        tracing::warn!(
            server = addr,
            "INSECURE BOOTSTRAP: the server is not authenticated until the agent has attested; \
             anyone who can intercept this connection can impersonate the server. \
             Use trust_bundle_path outside development."
        );
        let grpc = super::server_tls::open_insecure_channel(addr, &trust_domain).await?;
        let trust = Arc::new(RwLock::new(X509Bundle::new(trust_domain.clone())));
        Ok(Self { addr: addr.to_owned(), trust_domain, trust, identity: None, grpc, storage: None })
    }

    /// Connects with an agent SVID obtained earlier (after a restart).
    pub async fn connect_with_identity(
        addr: &str,
        trust_domain: TrustDomain,
        bundle: X509Bundle,
        identity: AgentIdentity,
    ) -> Result<Self, ClientError> {
        let trust = Arc::new(RwLock::new(bundle));
        let grpc = super::open_channel(addr, &trust_domain, &trust, Some(&identity)).await?;
        Ok(Self {
            addr: addr.to_owned(),
            trust_domain,
            trust,
            identity: Some(identity),
            grpc,
            storage: None,
        })
    }

    /// Stores every new agent SVID (attestation, renewal) in `storage` before using it.
    pub fn with_storage(mut self, storage: AgentStorage) -> Self {
        self.storage = Some(storage);
        self
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

    /// The agent identity in use, once attested.
    pub fn identity(&self) -> Option<&AgentIdentity> {
        self.identity.as_ref()
    }

    /// The X.509 bundle trusted for the server now.
    pub fn bundle(&self) -> X509Bundle {
        self.trust.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Trusts `bundle` for the server from now on, the open channel included.
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
        self.grpc =
            super::open_channel(&self.addr, &self.trust_domain, &self.trust, Some(&identity))
                .await?;
        self.identity = Some(identity);
        Ok(())
    }

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

    async fn attest(
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
        let mut responses = self.grpc.attest_agent(ReceiverStream::new(rx)).await?.into_inner();
        let result = loop {
            let step = responses.message().await?.and_then(|m| m.step).ok_or_else(|| {
                ClientError::BadResponse("attestation ended without a result".into())
            })?;
            match step {
                attest_agent_response::Step::Challenge(nonce) => {
                    let node_key = node_key
                        .ok_or_else(|| ClientError::BadResponse("unexpected challenge".into()))?;
                    let signature = node_key.sign(&challenge_message(&nonce))?;
                    let answer = pb::AttestAgentRequest {
                        step: Some(attest_agent_request::Step::ChallengeResponse(
                            pb::ChallengeResponse { signature },
                        )),
                    };
                    tx.send(answer)
                        .await
                        .map_err(|_| ClientError::BadResponse("request stream closed".into()))?;
                }
                attest_agent_response::Step::Result(result) => break result,
            }
        };
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

    /// Renews the agent SVID with a new key, stores it, and reconnects with it. On any
    /// failure the current SVID stays in use (the server still accepts it).
    pub async fn renew(&mut self) -> Result<AgentIdentity, ClientError> {
        let current = self.identity.clone().ok_or(ClientError::NotAttested)?;
        let key = Arc::new(SigningKey::generate(KeyType::EcP256)?);
        let reply = self
            .grpc
            .renew_agent(pb::RenewAgentRequest { csr: csr_for(&key)? })
            .await?
            .into_inner();
        let svid = reply.svid.ok_or_else(|| ClientError::BadResponse("no SVID".into()))?;
        let bundle = self.bundle();
        let identity = verify_agent_svid(&svid, key, &current.spiffe_id, &bundle)?;
        self.store(&identity, None).await?;
        self.adopt(identity.clone(), bundle).await?;
        Ok(identity)
    }

    /// One raw `SyncEntries` call: every page merged, in order.
    pub async fn sync_entries(
        &mut self,
        since_revision: u64,
        entry_ids: Vec<String>,
    ) -> Result<(Vec<pb::EntryRevision>, Vec<pb::Entry>, pb::SyncEntriesResponse), ClientError>
    {
        let mut stream = self
            .grpc
            .sync_entries(pb::SyncEntriesRequest { since_revision, entry_ids })
            .await?
            .into_inner();
        let (mut revisions, mut entries) = (Vec::new(), Vec::new());
        while let Some(page) = stream.message().await? {
            if page.complete {
                return Ok((revisions, entries, page));
            }
            revisions.extend(page.revisions);
            entries.extend(page.entries);
        }
        Err(ClientError::BadResponse("sync ended without a complete message".into()))
    }

    /// Brings `previous` up to date: keeps unchanged entries, takes changed ones, drops
    /// those no longer authorized, and fetches any it lacks.
    pub async fn sync(&mut self, previous: &SyncedEntries) -> Result<SyncedEntries, ClientError> {
        let (revisions, changed, last) = self.sync_entries(previous.revision, Vec::new()).await?;
        let mut changed: BTreeMap<String, pb::Entry> =
            changed.into_iter().map(|e| (e.id.clone(), e)).collect();
        let mut entries = BTreeMap::new();
        let mut missing = Vec::new();
        for r in revisions {
            match changed.remove(&r.id) {
                Some(e) => {
                    entries.insert(r.id, e);
                }
                None => match previous.entries.get(&r.id) {
                    Some(e) if e.revision == r.revision => {
                        entries.insert(r.id, e.clone());
                    }
                    _ => missing.push(r.id),
                },
            }
        }
        for chunk in missing.chunks(SYNC_PAGE_SIZE) {
            let (_, fetched, _) = self.sync_entries(previous.revision, chunk.to_vec()).await?;
            for e in fetched.into_iter().filter(|e| chunk.contains(&e.id)) {
                entries.insert(e.id.clone(), e);
            }
        }
        let bundle = parse_bundle(&self.trust_domain, &last.bundle)?;
        if let Ok(x509) = bundle.x509_bundle() {
            self.set_bundle(x509);
        }
        Ok(SyncedEntries {
            revision: last.revision,
            entries,
            bundle: Some(bundle),
            tainted_authority_ids: last.tainted_authority_ids,
        })
    }

    /// Signs CSRs for entries: one result per `(entry_id, csr)`, in order.
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
        let reply = self
            .grpc
            .batch_new_x509_svid(pb::BatchNewX509SvidRequest { params })
            .await?
            .into_inner();
        Ok(reply
            .results
            .into_iter()
            .map(|r| match r.svid {
                Some(svid) if r.status_code == 0 => Ok(IssuedX509Svid {
                    chain: chain_of(&svid),
                    expires_at: svid.expires_at,
                    serial: svid.serial,
                }),
                _ => {
                    Err(tonic::Status::new(tonic::Code::from_i32(r.status_code), r.status_message))
                }
            })
            .collect())
    }

    /// A JWT-SVID for an entry: `(token, expiry seconds since the epoch)`.
    pub async fn new_jwt_svid(
        &mut self,
        entry_id: &str,
        audiences: &[String],
    ) -> Result<(String, i64), ClientError> {
        let req =
            pb::NewJwtSvidRequest { entry_id: entry_id.to_owned(), audiences: audiences.to_vec() };
        let reply = self.grpc.new_jwt_svid(req).await?.into_inner();
        Ok((reply.token, reply.expires_at))
    }

    /// The trust domain's bundle; also becomes the bundle trusted for the server.
    pub async fn fetch_bundle(&mut self) -> Result<SpiffeBundle, ClientError> {
        let reply = self.grpc.fetch_bundle(pb::FetchBundleRequest {}).await?.into_inner();
        let bundle = parse_bundle(&self.trust_domain, &reply.bundle)?;
        if let Ok(x509) = bundle.x509_bundle() {
            self.set_bundle(x509);
        }
        Ok(bundle)
    }
}

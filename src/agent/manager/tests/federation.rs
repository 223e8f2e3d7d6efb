//! The federated bundles a sync brings, against the real agent API wrapped by a test
//! layer that plays the server half of federation: it records the digest each sync sends,
//! sets entries' `federates_with`, and adds the federated set to the last message when the
//! agent's digest is not the server's (as the wire contract in proto/agent.proto says).

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use keycard_workload_api::{SpiffeBundle, SpiffeId, TrustDomain};
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status, Streaming};

use super::harness::{selectors, td};
use super::*;
use crate::agent::ServerClient;
use crate::agent::cache::{FederatedBundles, TrustBundle};
use crate::ca::CaManager;
use crate::clock::{ManualClock, SystemClock};
use crate::server::agent_api::authorized::AuthorizedEntries;
use crate::server::agent_api::server_svid::ServerSvid;
use crate::server::agent_api::service::AgentService;
use crate::server::agent_api::{AgentApiOptions, tls};
use crate::server::datastore::{DataStore, SqliteDataStore};
use crate::server::entry::EntrySpec;
use crate::server::join_token;
use crate::telemetry::metrics::ServerMetrics;
use crate::wire::proto::{self as pb, agent_server::Agent};

/// What the test layer serves as the server's federation state.
#[derive(Debug, Default)]
struct Federation {
    /// Trust domain name => bundle JSON (the server's whole set).
    bundles: BTreeMap<String, Vec<u8>>,
    /// SPIFFE ID => the entry's federates_with.
    federates_with: HashMap<String, Vec<String>>,
    /// The federated_digest of every sync received, in order.
    digests_seen: Vec<Vec<u8>>,
}

impl Federation {
    /// The digest of the set (empty for none, as the agent says it holds none).
    fn digest(&self) -> Vec<u8> {
        if self.bundles.is_empty() {
            return Vec::new();
        }
        let mut h = Sha256::new();
        for (name, json) in &self.bundles {
            h.update((name.len() as u64).to_be_bytes());
            h.update(name.as_bytes());
            h.update((json.len() as u64).to_be_bytes());
            h.update(json);
        }
        h.finalize().to_vec()
    }
}

type Shared = Arc<Mutex<Federation>>;

fn lock(f: &Shared) -> std::sync::MutexGuard<'_, Federation> {
    f.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Clone)]
struct Federating {
    inner: AgentService,
    federation: Shared,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Agent for Federating {
    type AttestAgentStream = <AgentService as Agent>::AttestAgentStream;
    type SyncEntriesStream = BoxStream<pb::SyncEntriesResponse>;

    async fn attest_agent(
        &self,
        req: Request<Streaming<pb::AttestAgentRequest>>,
    ) -> Result<Response<Self::AttestAgentStream>, Status> {
        self.inner.attest_agent(req).await
    }

    async fn renew_agent(
        &self,
        req: Request<pb::RenewAgentRequest>,
    ) -> Result<Response<pb::RenewAgentResponse>, Status> {
        self.inner.renew_agent(req).await
    }

    async fn sync_entries(
        &self,
        req: Request<pb::SyncEntriesRequest>,
    ) -> Result<Response<Self::SyncEntriesStream>, Status> {
        let sent = req.get_ref().federated_digest.clone();
        let (bundles, digest, federates_with) = {
            let mut f = lock(&self.federation);
            f.digests_seen.push(sent.clone());
            (f.bundles.clone(), f.digest(), f.federates_with.clone())
        };
        let pages = self.inner.sync_entries(req).await?.into_inner();
        let pages = pages.map(move |page| {
            page.map(|mut p| {
                for e in &mut p.entries {
                    e.federates_with =
                        federates_with.get(&e.spiffe_id).cloned().unwrap_or_default();
                }
                if p.complete && sent != digest {
                    p.federated_included = true;
                    p.federated_bundles = bundles.clone().into_iter().collect();
                    p.federated_digest = digest.clone();
                }
                p
            })
        });
        Ok(Response::new(Box::pin(pages)))
    }

    async fn batch_new_x509_svid(
        &self,
        req: Request<pb::BatchNewX509SvidRequest>,
    ) -> Result<Response<pb::BatchNewX509SvidResponse>, Status> {
        self.inner.batch_new_x509_svid(req).await
    }

    async fn new_jwt_svid(
        &self,
        req: Request<pb::NewJwtSvidRequest>,
    ) -> Result<Response<pb::NewJwtSvidResponse>, Status> {
        self.inner.new_jwt_svid(req).await
    }

    async fn fetch_bundle(
        &self,
        req: Request<pb::FetchBundleRequest>,
    ) -> Result<Response<pb::FetchBundleResponse>, Status> {
        self.inner.fetch_bundle(req).await
    }
}

/// The wrapped server, an attested agent's manager over a fresh cache, and the state.
struct Fed {
    manager: Manager,
    cache: Arc<SvidCache>,
    store: Arc<dyn DataStore>,
    agent_id: SpiffeId,
    federation: Shared,
    _stop: tokio::sync::watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

async fn start() -> Fed {
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::ca::manager::test_ca(td());
    let store: Arc<dyn DataStore> =
        Arc::new(SqliteDataStore::open(&dir.path().join("keycard.db")).unwrap());
    let options = AgentApiOptions::new(td());
    let clock: Arc<dyn crate::clock::Clock> = Arc::new(SystemClock);
    let svid = Arc::new(
        ServerSvid::mint(ca.clone(), options.server_id(), options.server_svid_ttl, clock.clone())
            .unwrap(),
    );
    let authorized = Arc::new(AuthorizedEntries::new(store.clone(), options.server_id()));
    authorized.refresh().await;
    let config = tls::server_config(ca.clone(), svid, &td()).unwrap();
    let metrics = Arc::new(ServerMetrics::new());
    let service = AgentService::new(options, ca.clone(), store.clone(), metrics, clock, authorized);
    let federation = Shared::default();
    let wrapped = Federating { inner: service, federation: federation.clone() };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let incoming = tls::incoming(listener, config, stopped.clone());
    let mut on_stop = stopped;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::agent_server::AgentServer::new(wrapped))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = on_stop.wait_for(|s| *s).await;
            }),
    );

    let client = attested(&addr.to_string(), &ca, &store).await;
    let agent_id = client.identity().unwrap().spiffe_id.clone();
    let manual = ManualClock::starting_now();
    let cache = Arc::new(SvidCache::new(Arc::new(manual.clone())));
    let manager = Manager::new(client, cache.clone(), Arc::new(manual), ManagerOptions::default());
    Fed { manager, cache, store, agent_id, federation, _stop: stop, _dir: dir }
}

async fn attested(addr: &str, ca: &CaManager, store: &Arc<dyn DataStore>) -> ServerClient {
    let (token, record) =
        join_token::new_token(&td(), Duration::from_secs(600), None, SystemTime::now()).unwrap();
    store.create_join_token(&record).unwrap();
    let bundle = ca.bundle().unwrap().x509_bundle().unwrap();
    let mut client = ServerClient::connect(addr, td(), bundle).await.unwrap();
    client.attest_join_token(token.secret()).await.unwrap();
    client
}

fn bundle_json(name: &str) -> Vec<u8> {
    let ca = crate::ca::manager::test_ca(TrustDomain::new(name).unwrap());
    ca.bundle().unwrap().to_json().unwrap().into_bytes()
}

fn held(cache: &SvidCache) -> Vec<String> {
    cache.federated().keys().map(|t| t.name().to_owned()).collect()
}

impl Fed {
    fn set(&self, bundles: &[(&str, Vec<u8>)]) {
        lock(&self.federation).bundles =
            bundles.iter().map(|(n, j)| (n.to_string(), j.clone())).collect();
    }

    fn last_digest_sent(&self) -> Vec<u8> {
        lock(&self.federation).digests_seen.last().cloned().unwrap()
    }

    fn server_digest(&self) -> Vec<u8> {
        lock(&self.federation).digest()
    }
}

#[tokio::test]
async fn the_agent_sends_its_digest_and_takes_the_set_only_when_it_differs() {
    let mut f = start().await;
    let com = bundle_json("example.com");
    f.set(&[("example.com", com.clone())]);
    lock(&f.federation)
        .federates_with
        .insert("spiffe://example.org/web".into(), vec!["example.com".into()]);
    let spec = EntrySpec::new(
        SpiffeId::parse("spiffe://example.org/web").unwrap(),
        f.agent_id.clone(),
        selectors(&["unix:uid:1"]),
    );
    f.store.create_entry(&spec, SystemTime::now()).unwrap();

    // First round: the agent holds none and says so; it gets the set and the digest.
    let report = f.manager.tick().await.unwrap();
    assert!(f.last_digest_sent().is_empty());
    assert!(report.synced_changed);
    assert_eq!(held(&f.cache), ["example.com"]);
    assert_eq!(f.manager.synced().federated_digest, f.server_digest());
    assert_eq!(f.manager.synced().federated.len(), 1);
    let web = f.cache.federated_for(&selectors(&["unix:uid:1"]));
    assert_eq!(web.keys().map(TrustDomain::name).collect::<Vec<_>>(), ["example.com"]);
    let first = f.cache.federated();

    // An idle round: the digest goes back, nothing comes, nothing changes.
    let report = f.manager.tick().await.unwrap();
    assert_eq!(f.last_digest_sent(), f.server_digest());
    assert!(!report.synced_changed, "{report:?}");
    assert!(Arc::ptr_eq(&first, &f.cache.federated()));

    // The server's set changes: example.com's bundle turns bad, example.net joins, and a
    // bundle for the agent's own trust domain slips in. The round does not fail.
    let net = bundle_json("example.net");
    let own = bundle_json("example.org");
    f.set(&[
        ("example.com", b"{\"keys\": 7}".to_vec()),
        ("example.net", net),
        ("example.org", own),
    ]);
    let report = f.manager.tick().await.unwrap();
    assert!(report.synced_changed);
    assert_eq!(held(&f.cache), ["example.com", "example.net"], "own domain ignored");
    let com_now = &f.cache.federated()[&TrustDomain::new("example.com").unwrap()];
    assert!(Arc::ptr_eq(com_now, &first[&TrustDomain::new("example.com").unwrap()]), "kept");
    assert_eq!(f.manager.synced().federated_digest, f.server_digest(), "digest adopted");

    // Every federation is deleted: the set is sent empty, and the agent holds none.
    f.set(&[]);
    let report = f.manager.tick().await.unwrap();
    assert!(report.synced_changed);
    assert!(held(&f.cache).is_empty());
    assert!(f.cache.federated_for(&selectors(&["unix:uid:1"])).is_empty());
    assert!(f.manager.synced().federated_digest.is_empty());
    let report = f.manager.tick().await.unwrap();
    assert!(f.last_digest_sent().is_empty());
    assert!(!report.synced_changed, "{report:?}");

    // Bundles the cache got elsewhere (a disk cache written before the federations were
    // deleted) go at the next sync, though the server sends no set: both hold none.
    let stale: FederatedBundles = [(
        TrustDomain::new("example.com").unwrap(),
        Arc::new(
            TrustBundle::of(&SpiffeBundle::parse(td_of("example.com"), &com).unwrap()).unwrap(),
        ),
    )]
    .into();
    let synced = f.manager.synced().clone();
    f.cache.set_synced(&synced.entries, synced.bundle.as_ref(), &[], Some(stale)).unwrap();
    let report = f.manager.tick().await.unwrap();
    assert!(f.last_digest_sent().is_empty());
    assert!(report.synced_changed);
    assert!(held(&f.cache).is_empty());
}

fn td_of(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

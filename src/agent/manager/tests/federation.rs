//! The federated bundles a sync brings, against the real agent API: foreign bundles and
//! entries' `federates_with` are written to its datastore as the admin API writes them,
//! and the server sends the set only when the agent's digest is not its own.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keycard_workload_api::{SpiffeBundle, SpiffeId, TrustDomain};
use tokio::net::TcpListener;

use super::harness::{selectors, td};
use super::*;
use crate::agent::ServerClient;
use crate::agent::cache::{CacheDelta, FederatedBundles, TrustBundle};
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
use crate::wire::proto as pb;

/// The server, an attested agent's manager over a fresh cache, and the server's store.
struct Fed {
    manager: Manager,
    cache: Arc<SvidCache>,
    store: Arc<dyn DataStore>,
    agent_id: SpiffeId,
    service: AgentService,
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
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let incoming = tls::incoming(listener, config, stopped.clone());
    let mut on_stop = stopped;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::agent_server::AgentServer::new(service.clone()))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = on_stop.wait_for(|s| *s).await;
            }),
    );

    let client = attested(&addr.to_string(), &ca, &store).await;
    let agent_id = client.identity().unwrap().spiffe_id.clone();
    let manual = ManualClock::starting_now();
    let cache = Arc::new(SvidCache::new(Arc::new(manual.clone())));
    let manager = Manager::new(client, cache.clone(), Arc::new(manual), ManagerOptions::default());
    Fed { manager, cache, store, agent_id, service, _stop: stop, _dir: dir }
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
    /// Replaces the foreign bundles the server holds.
    fn set(&self, bundles: &[(&str, Vec<u8>)]) {
        for (td, _) in self.store.list_bundles().unwrap() {
            self.store.delete_bundle(&td).unwrap();
        }
        for (name, json) in bundles {
            self.store.set_bundle(&td_of(name), json).unwrap();
        }
        self.service.foreign_bundles().invalidate();
    }

    fn server_digest(&self) -> Vec<u8> {
        self.service.foreign_bundles().current().unwrap().digest.clone()
    }
}

#[tokio::test]
async fn the_agent_sends_its_digest_and_takes_the_set_only_when_it_differs() {
    let mut f = start().await;
    let com = bundle_json("example.com");
    f.set(&[("example.com", com.clone())]);
    let spec = EntrySpec {
        federates_with: vec![td_of("example.com")],
        ..EntrySpec::new(
            SpiffeId::parse("spiffe://example.org/web").unwrap(),
            f.agent_id.clone(),
            selectors(&["unix:uid:1"]),
        )
    };
    f.store.create_entry(&spec, SystemTime::now()).unwrap();

    // First round: the agent holds none; it gets the set and the digest.
    let report = f.manager.tick().await.unwrap();
    assert!(report.synced_changed);
    assert_eq!(held(&f.cache), ["example.com"]);
    assert_eq!(f.manager.synced().federated_digest, f.server_digest());
    assert_eq!(f.manager.synced().federated.len(), 1);
    let web = f.cache.federated_for(&selectors(&["unix:uid:1"]));
    assert_eq!(web.keys().map(TrustDomain::name).collect::<Vec<_>>(), ["example.com"]);
    let first = f.cache.federated();

    // An idle round: the digest goes back, nothing comes, nothing changes.
    let report = f.manager.tick().await.unwrap();
    assert!(!report.synced_changed, "{report:?}");
    assert!(Arc::ptr_eq(&first, &f.cache.federated()));

    // The server's set changes: example.net joins, and a bundle stored for the server's
    // own trust domain is not sent as a foreign one. example.com's bundle is unchanged.
    let net = bundle_json("example.net");
    let own = bundle_json("example.org");
    f.set(&[("example.com", com.clone()), ("example.net", net), ("example.org", own)]);
    let report = f.manager.tick().await.unwrap();
    assert!(report.synced_changed);
    assert_eq!(held(&f.cache), ["example.com", "example.net"], "own domain not foreign");
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
    f.cache.apply(CacheDelta { federated: Some(stale), ..Default::default() }).unwrap();
    let report = f.manager.tick().await.unwrap();
    assert!(report.synced_changed);
    assert!(held(&f.cache).is_empty());
}

fn td_of(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

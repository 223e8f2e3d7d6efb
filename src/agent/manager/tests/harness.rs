//! A real agent API server in-process, restartable on the same state, and an attested
//! agent's manager over a fresh cache with a manual clock.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keycard_workload_api::{SpiffeId, TrustDomain, X509BundleSet};
use tempfile::TempDir;
use tokio::net::TcpListener;

use crate::agent::ServerClient;
use crate::agent::cache::SvidCache;
use crate::agent::manager::{Manager, ManagerOptions};
use crate::ca::CaManager;
use crate::clock::{Clock, ManualClock, SystemClock};
use crate::selector::{Selector, SelectorSet};
use crate::server::agent_api::{AgentApiError, AgentApiOptions, Rate, serve};
use crate::server::datastore::{DataStore, SqliteDataStore};
use crate::server::entry::{Entry, EntrySpec};
use crate::server::join_token;
use crate::telemetry::metrics::ServerMetrics;

pub fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

pub fn selectors(items: &[&str]) -> SelectorSet {
    items.iter().map(|s| Selector::parse(s).unwrap()).collect()
}

/// A server over a CA and a store that outlive it, so that it can be stopped and started
/// again on the same state.
pub struct Server {
    pub addr: SocketAddr,
    pub ca: Arc<CaManager>,
    pub store: Arc<dyn DataStore>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), AgentApiError>>>,
    _dir: Arc<TempDir>,
}

impl Server {
    pub async fn start() -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let ca = crate::ca::manager::test_ca(td());
        let store: Arc<dyn DataStore> =
            Arc::new(SqliteDataStore::open(&dir.path().join("keycard.db")).unwrap());
        Self::start_on("127.0.0.1:0", ca, store, dir).await
    }

    pub async fn start_on(
        addr: &str,
        ca: Arc<CaManager>,
        store: Arc<dyn DataStore>,
        dir: Arc<TempDir>,
    ) -> Self {
        Self::start_full(addr, ca, store, dir, AgentApiOptions::new(td()), Arc::new(SystemClock))
            .await
    }

    /// A server signing at most `rate` per agent, whose time (the signing-rate buckets
    /// included) is `clock`.
    pub async fn start_paced(rate: Rate, clock: ManualClock) -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let ca = crate::ca::manager::test_ca(td());
        let store: Arc<dyn DataStore> =
            Arc::new(SqliteDataStore::open(&dir.path().join("keycard.db")).unwrap());
        let mut options = AgentApiOptions::new(td());
        options.sign_rate = rate;
        Self::start_full("127.0.0.1:0", ca, store, dir, options, Arc::new(clock)).await
    }

    async fn start_full(
        addr: &str,
        ca: Arc<CaManager>,
        store: Arc<dyn DataStore>,
        dir: Arc<TempDir>,
        options: AgentApiOptions,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            listener,
            options,
            ca.clone(),
            store.clone(),
            Arc::new(ServerMetrics::new()),
            clock,
            async move {
                let _ = stopped.await;
            },
        ));
        Self { addr, ca, store, stop: Some(stop), task: Some(task), _dir: dir }
    }

    /// The server's SQLite file.
    pub fn db_path(&self) -> std::path::PathBuf {
        self._dir.path().join("keycard.db")
    }

    /// Stops the server gracefully and waits until it has let go of its port.
    pub async fn shut_down(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }

    /// A new server on the same address, CA and store.
    pub async fn restart(&self) -> Self {
        Self::start_on(
            &self.addr.to_string(),
            self.ca.clone(),
            self.store.clone(),
            self._dir.clone(),
        )
        .await
    }

    /// Another server on a port of its own over the same CA and store: what an agent that
    /// lists several servers of one trust domain sees (they share the datastore).
    pub async fn sibling(&self) -> Self {
        Self::start_on("127.0.0.1:0", self.ca.clone(), self.store.clone(), self._dir.clone()).await
    }

    /// A server that answers every sync with the revision list, as servers from before
    /// sync by cursor did.
    pub async fn start_without_cursors() -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let ca = crate::ca::manager::test_ca(td());
        let store: Arc<dyn DataStore> =
            Arc::new(SqliteDataStore::open(&dir.path().join("keycard.db")).unwrap());
        let mut options = AgentApiOptions::new(td());
        options.sync_by_cursor = false;
        Self::start_full("127.0.0.1:0", ca, store, dir, options, Arc::new(SystemClock)).await
    }

    /// A server over `ca` and a fresh store.
    pub async fn start_with_ca(ca: Arc<CaManager>) -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let store: Arc<dyn DataStore> =
            Arc::new(SqliteDataStore::open(&dir.path().join("keycard.db")).unwrap());
        Self::start_on("127.0.0.1:0", ca, store, dir).await
    }

    /// A new server on the same address and store, over another CA manager.
    pub async fn restart_with_ca(&self, ca: Arc<CaManager>) -> Self {
        Self::start_on(&self.addr.to_string(), ca, self.store.clone(), self._dir.clone()).await
    }

    pub fn bundle_set(&self) -> X509BundleSet {
        let mut set = X509BundleSet::new();
        set.insert(self.ca.bundle().unwrap().x509_bundle().unwrap());
        set
    }

    /// An agent attested with a fresh join token.
    pub async fn agent(&self) -> ServerClient {
        let (token, record) =
            join_token::new_token(&td(), Duration::from_secs(600), None, SystemTime::now())
                .unwrap();
        self.store.create_join_token(&record).unwrap();
        let bundle = self.ca.bundle().unwrap().x509_bundle().unwrap();
        let mut client = ServerClient::connect(&self.addr.to_string(), td(), bundle).await.unwrap();
        client.attest_join_token(token.secret()).await.unwrap();
        client
    }

    pub fn entry(&self, spiffe_id: &str, parent: &SpiffeId, sel: &[&str]) -> Entry {
        let spec =
            EntrySpec::new(SpiffeId::parse(spiffe_id).unwrap(), parent.clone(), selectors(sel));
        self.store.create_entry(&spec, SystemTime::now()).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A server, an attested agent's manager over a fresh cache, and the agent's manual clock.
pub struct Setup {
    pub server: Server,
    pub manager: Manager,
    pub cache: Arc<SvidCache>,
    pub clock: ManualClock,
    pub agent_id: SpiffeId,
}

pub async fn setup_with(options: ManagerOptions) -> Setup {
    setup_on(Server::start().await, options).await
}

/// An attested agent's manager over a fresh cache, against `server`.
pub async fn setup_on(server: Server, options: ManagerOptions) -> Setup {
    setup_on_clock(server, options, ManualClock::starting_now()).await
}

/// An attested agent's manager over a fresh cache, against `server`, reading `clock`.
pub async fn setup_on_clock(server: Server, options: ManagerOptions, clock: ManualClock) -> Setup {
    let client = server.agent().await;
    let agent_id = client.identity().unwrap().spiffe_id.clone();
    let cache = Arc::new(SvidCache::new(Arc::new(clock.clone())));
    let manager = Manager::new(client, cache.clone(), Arc::new(clock.clone()), options);
    Setup { server, manager, cache, clock, agent_id }
}

pub async fn setup() -> Setup {
    setup_with(ManagerOptions::default()).await
}

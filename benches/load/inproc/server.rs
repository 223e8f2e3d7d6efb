//! A real agent API server in this process (TLS gRPC on 127.0.0.1, a SQLite datastore in a
//! temporary directory, the per-agent signing rate out of the way) and an agent attested
//! to it with a join token, with entries of its own.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keycard::agent::ServerClient;
use keycard::ca::CaManager;
use keycard::clock::Clock;
use keycard::selector::{Selector, SelectorSet};
use keycard::server::agent_api::{AgentApiOptions, Rate, serve};
use keycard::server::datastore::{DataStore, SqliteDataStore};
use keycard::server::entry::EntrySpec;
use keycard::server::join_token;
use keycard::telemetry::ServerMetrics;
use tokio::net::TcpListener;

use super::common::{ca_manager, td, workload_id};

/// The running server; dropping it stops the server.
pub struct Server {
    /// Its CA (what the agent trusts).
    pub ca: Arc<CaManager>,
    /// Its datastore.
    pub store: Arc<dyn DataStore>,
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

impl Server {
    /// Starts a server whose CA and handlers read `clock`. Agent and server SVIDs live 6 h,
    /// so that a manual clock may run a few hours ahead of the certificates' real time.
    pub async fn start(clock: Arc<dyn Clock>) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ca = ca_manager(clock.clone());
        let store: Arc<dyn DataStore> = Arc::new(
            SqliteDataStore::open(&dir.path().join("keycard.db")).expect("a SQLite datastore"),
        );
        let mut options = AgentApiOptions::new(td());
        options.sign_rate = Rate { per_second: 1e9, burst: 1e9 };
        options.attest_rate = Rate { per_second: 1000.0, burst: 1000.0 };
        options.cache_refresh_interval = Duration::from_millis(50);
        options.agent_svid_ttl = Duration::from_secs(6 * 3600);
        options.server_svid_ttl = Duration::from_secs(6 * 3600);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let addr = listener.local_addr().expect("the bound address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn({
            let (ca, store) = (ca.clone(), store.clone());
            async move {
                let metrics = Arc::new(ServerMetrics::new());
                let shutdown = async move {
                    let _ = stopped.await;
                };
                if let Err(e) = serve(listener, options, ca, store, metrics, clock, shutdown).await
                {
                    eprintln!("agent API server: {e}");
                }
            }
        });
        Self { ca, store, addr, stop: Some(stop), task, _dir: dir }
    }

    /// An agent attested with a fresh join token.
    pub async fn agent(&self, now: SystemTime) -> ServerClient {
        let (token, record) = join_token::new_token(&td(), Duration::from_secs(600), None, now)
            .expect("a join token");
        self.store.create_join_token(&record).expect("the token is stored");
        let bundle = self.ca.x509_bundle();
        let mut client = ServerClient::connect(&self.addr.to_string(), td(), bundle)
            .await
            .expect("the server answers");
        client.attest_join_token(token.secret()).await.expect("the agent attests");
        client
    }

    /// `n` entries for workloads of `agent` (X.509-SVID lifetime `x509_ttl`, or the
    /// server's default); their IDs, in order.
    pub fn entries(
        &self,
        agent: &ServerClient,
        n: usize,
        x509_ttl: Option<Duration>,
        now: SystemTime,
    ) -> Vec<String> {
        let parent = agent.identity().expect("an attested agent").spiffe_id.clone();
        let specs: Vec<EntrySpec> = (0..n)
            .map(|i| {
                let selector =
                    Selector::parse(&format!("unix:uid:{}", 10_000 + i)).expect("a selector");
                let selectors = SelectorSet::from_iter([selector]);
                let mut spec = EntrySpec::new(workload_id(i), parent.clone(), selectors);
                spec.x509_ttl = x509_ttl;
                spec
            })
            .collect();
        let entries = self.store.create_entries(&specs, now).expect("the entries are stored");
        entries.into_iter().map(|e| e.id).collect()
    }
}

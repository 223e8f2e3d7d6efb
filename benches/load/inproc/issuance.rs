//! Target 2: server issuance. A real agent API server in this process (real TLS gRPC on
//! 127.0.0.1, a real SQLite datastore in a temporary directory, the per-agent signing
//! rate raised out of the way) and an agent attested with a join token send
//! `BatchNewX509Svid` calls of 500 CSRs made before timing; SVIDs per second against raw
//! ring sign/s measured in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use keycard::agent::ServerClient;
use keycard::selector::{Selector, SelectorSet};
use keycard::server::agent_api::{AgentApiOptions, Rate, serve};
use keycard::server::datastore::{DataStore, SqliteDataStore};
use keycard::server::entry::EntrySpec;
use keycard::server::join_token;
use keycard::telemetry::ServerMetrics;
use keycard::wire::MAX_BATCH;
use tokio::net::TcpListener;

use super::common::{alternate, csrs, raw_sign_rate, system_ca, td, workload_id};
use crate::table::{Goal, Row};

/// A server and an attested agent with `MAX_BATCH` entries of its own.
struct Setup {
    client: ServerClient,
    items: Vec<(String, Vec<u8>)>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.server.abort();
    }
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ca = system_ca();
    let store: Arc<dyn DataStore> = Arc::new(
        SqliteDataStore::open(&dir.path().join("keycard.db")).expect("a SQLite datastore"),
    );
    let mut options = AgentApiOptions::new(td());
    options.sign_rate = Rate { per_second: 1e9, burst: 1e9 };
    options.attest_rate = Rate { per_second: 1000.0, burst: 1000.0 };
    options.cache_refresh_interval = Duration::from_millis(50);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let addr = listener.local_addr().expect("the bound address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn({
        let (ca, store) = (ca.clone(), store.clone());
        async move {
            let metrics = Arc::new(ServerMetrics::new());
            let clock = Arc::new(keycard::clock::SystemClock);
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(e) = serve(listener, options, ca, store, metrics, clock, shutdown).await {
                eprintln!("agent API server: {e}");
            }
        }
    });

    let now = SystemTime::now();
    let (token, record) =
        join_token::new_token(&td(), Duration::from_secs(600), None, now).expect("a join token");
    store.create_join_token(&record).expect("the token is stored");
    let bundle = ca.x509_bundle();
    let mut client =
        ServerClient::connect(&addr.to_string(), td(), bundle).await.expect("the server answers");
    client.attest_join_token(token.secret()).await.expect("the agent attests");
    let agent = client.identity().expect("an attested agent").spiffe_id.clone();

    let specs: Vec<EntrySpec> = (0..MAX_BATCH)
        .map(|i| {
            let selector =
                Selector::parse(&format!("unix:uid:{}", 10_000 + i)).expect("a selector");
            EntrySpec::new(workload_id(i), agent.clone(), SelectorSet::from_iter([selector]))
        })
        .collect();
    let entries = store.create_entries(&specs, now).expect("the entries are stored");
    let items: Vec<(String, Vec<u8>)> =
        entries.into_iter().map(|e| e.id).zip(csrs(MAX_BATCH)).collect();
    Setup { client, items, stop: Some(stop), server, _dir: dir }
}

/// One batch call; the SVIDs issued per second (all must be issued).
async fn batch_rate(setup: &mut Setup) -> Result<f64, String> {
    let started = Instant::now();
    let results =
        setup.client.batch_new_x509_svid(&setup.items).await.map_err(|e| e.to_string())?;
    let elapsed = started.elapsed().as_secs_f64();
    let issued = results.iter().filter(|r| r.is_ok()).count();
    if issued != setup.items.len() {
        let first = results.iter().find_map(|r| r.as_ref().err().map(|s| s.message().to_owned()));
        return Err(format!("{issued} of {} issued; first refusal: {first:?}", setup.items.len()));
    }
    Ok(issued as f64 / elapsed)
}

/// The row of target 2.
pub fn row(quick: bool) -> Row {
    let rounds = if quick { 3 } else { 7 };
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let mut setup = runtime.block_on(setup());
    // The server's entry cache reads the new entries within its refresh interval: wait
    // (bounded) until a whole batch is issued, which also warms the connection.
    let mut ready = Err(String::new());
    for _ in 0..100 {
        ready = runtime.block_on(batch_rate(&mut setup));
        if ready.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Err(e) = ready {
        panic!("the server never issued a whole batch: {e}");
    }
    let message_len = 500;
    let (keycard, raw) = alternate(
        rounds,
        || runtime.block_on(batch_rate(&mut setup)).expect("a whole batch is issued"),
        || raw_sign_rate(MAX_BATCH, message_len),
    );
    drop(setup);
    Row {
        what: format!("Server issuance, {MAX_BATCH}-CSR BatchNewX509Svid (TLS gRPC, SQLite)"),
        keycard,
        baseline: Some(raw),
        baseline_name: "raw ring ECDSA P-256 sign, one core".into(),
        unit: "SVIDs/s".into(),
        goal: Goal::AtLeast(0.4),
    }
}

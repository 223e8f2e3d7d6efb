//! Target 2: server issuance. A real agent API server in this process (real TLS gRPC on
//! 127.0.0.1, a real SQLite datastore in a temporary directory, the per-agent signing
//! rate raised out of the way) and an agent attested with a join token send
//! `BatchNewX509Svid` calls of 500 CSRs made before timing; SVIDs per second against raw
//! ring sign/s measured in the same run.

use std::time::{Duration, Instant, SystemTime};

use keycard::agent::ServerClient;
use keycard::clock::SystemClock;
use keycard::wire::MAX_BATCH;

use super::common::{alternate, csrs, raw_sign_rate};
use super::server::Server;
use crate::table::{Goal, Row};

/// A server and an attested agent with `MAX_BATCH` entries of its own, and a CSR for each.
struct Setup {
    client: ServerClient,
    items: Vec<(String, Vec<u8>)>,
    _server: Server,
}

async fn setup() -> Setup {
    let server = Server::start(std::sync::Arc::new(SystemClock)).await;
    let now = SystemTime::now();
    let client = server.agent(now).await;
    let ids = server.entries(&client, MAX_BATCH, None, now);
    let items = ids.into_iter().zip(csrs(MAX_BATCH)).collect();
    Setup { client, items, _server: server }
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

//! Target 3: the Workload API's latency and throughput against a raw tonic server with the
//! same payload, in the same run. FetchX509SVID is timed to its first message, on one
//! reused connection and on a new connection per call; FetchJWTSVID asks for a token the
//! agent has cached. Calls of the two servers alternate in rounds, so that drift in the
//! machine's load touches both alike.

use std::path::Path;
use std::time::{Duration, Instant};

use keycard_workload_api::client::unix_channel;
use keycard_workload_api::proto::{
    JwtsvidRequest, SECURITY_HEADER, SECURITY_HEADER_VALUE, SpiffeWorkloadApiClient,
    X509svidRequest,
};
use tonic::Request;
use tonic::transport::Channel;

use crate::Options;
use crate::cluster::{Cluster, entries};
use crate::raw_api::{RawApi, RawServer};
use crate::table::{Goal, Row};

/// Rounds the calls of each kind are split into, alternating keycard and raw.
const ROUNDS: usize = 5;
/// Concurrent callers of the throughput rows.
const CALLERS: usize = 8;
/// The audience of every JWT-SVID asked for.
const AUDIENCE: &str = "load-bench";

/// A Workload API client.
pub type Client = SpiffeWorkloadApiClient<Channel>;

fn with_header<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(SECURITY_HEADER, SECURITY_HEADER_VALUE.parse().unwrap());
    request
}

/// A Workload API client on a new connection to `socket`.
pub async fn connect(socket: &Path) -> Client {
    let channel = unix_channel(socket)
        .await
        .unwrap_or_else(|e| panic!("fetch: cannot connect to {}: {e}", socket.display()));
    SpiffeWorkloadApiClient::new(channel).max_decoding_message_size(256 << 20)
}

/// Opens FetchX509SVID and waits for its first message; returns how long that took.
pub async fn x509_first_message(client: &mut Client) -> Duration {
    let start = Instant::now();
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap_or_else(|e| panic!("FetchX509SVID refused: {e}"))
        .into_inner();
    let first = stream.message().await;
    let took = start.elapsed();
    assert!(matches!(first, Ok(Some(_))), "FetchX509SVID sent no first message: {first:?}");
    took
}

async fn jwt_call(client: &mut Client) -> Duration {
    let request = JwtsvidRequest { audience: vec![AUDIENCE.to_owned()], spiffe_id: String::new() };
    let start = Instant::now();
    let answer = client.fetch_jwtsvid(with_header(request)).await;
    let took = start.elapsed();
    assert!(answer.is_ok(), "FetchJWTSVID failed: {answer:?}");
    took
}

/// What one kind of call is.
#[derive(Clone, Copy)]
enum Kind {
    X509Reused,
    X509NewConnection,
    JwtReused,
}

/// `n` calls of `kind` against `socket`; the duration of each.
async fn samples(kind: Kind, socket: &Path, n: usize) -> Vec<Duration> {
    let mut client = connect(socket).await;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(match kind {
            Kind::X509Reused => x509_first_message(&mut client).await,
            Kind::JwtReused => jwt_call(&mut client).await,
            Kind::X509NewConnection => {
                let start = Instant::now();
                let mut fresh = connect(socket).await;
                x509_first_message(&mut fresh).await;
                start.elapsed()
            }
        });
    }
    out
}

/// Calls completed per second by [`CALLERS`] callers, each on its own connection, in `time`.
async fn calls_per_second(kind: Kind, socket: &Path, time: Duration) -> f64 {
    let deadline = Instant::now() + time;
    let mut callers = Vec::new();
    for _ in 0..CALLERS {
        let socket = socket.to_path_buf();
        callers.push(tokio::spawn(async move {
            let mut client = connect(&socket).await;
            let mut done = 0u64;
            while Instant::now() < deadline {
                match kind {
                    Kind::JwtReused => jwt_call(&mut client).await,
                    _ => x509_first_message(&mut client).await,
                };
                done += 1;
            }
            done
        }));
    }
    let mut total = 0;
    for caller in callers {
        total += caller.await.expect("a caller task");
    }
    total as f64 / time.as_secs_f64()
}

/// The `q` quantile (0..=1) in microseconds.
fn quantile_us(sorted: &[Duration], q: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index.min(sorted.len() - 1)].as_secs_f64() * 1e6
}

/// Both servers' samples of `kind`, alternating in [`ROUNDS`] rounds; sorted.
async fn paired(kind: Kind, keycard: &Path, raw: &Path, n: usize) -> [Vec<Duration>; 2] {
    let mut both = [Vec::new(), Vec::new()];
    for _ in 0..ROUNDS {
        both[0].extend(samples(kind, keycard, n / ROUNDS).await);
        both[1].extend(samples(kind, raw, n / ROUNDS).await);
    }
    for s in &mut both {
        s.sort();
    }
    both
}

fn latency_rows(what: &str, both: &[Vec<Duration>; 2], bound: f64) -> Vec<Row> {
    [("p50", 0.5), ("p99", 0.99)]
        .into_iter()
        .map(|(name, q)| Row {
            what: format!("{what} {name}"),
            keycard: quantile_us(&both[0], q),
            baseline: Some(quantile_us(&both[1], q)),
            baseline_name: "raw tonic, same payload".to_owned(),
            unit: "µs".to_owned(),
            goal: Goal::AtMost(bound),
        })
        .collect()
}

fn throughput_row(what: &str, keycard: f64, raw: f64) -> Row {
    Row {
        what: format!("{what}, calls/s with {CALLERS} callers"),
        keycard,
        baseline: Some(raw),
        baseline_name: "raw tonic, same payload".to_owned(),
        unit: "calls/s".to_owned(),
        goal: Goal::AtLeast(0.7),
    }
}

/// Target 3's rows.
pub fn run(options: &Options) -> Vec<Row> {
    let cluster = Cluster::start(500);
    cluster.register(&entries(1, 1, cluster.uid, "fetch"));
    let agent = cluster.agent("sync_interval = \"1s\"\n");
    agent.must_reach("cache_svids", 1, Duration::from_secs(60), "fetch");
    let raw_dir = tempfile::tempdir().expect("a temp dir");
    let keycard_socket = agent.agent.socket.clone();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(async {
        // Capture keycard's answers: the raw server sends exactly these.
        let mut client = connect(&keycard_socket).await;
        let mut stream = client
            .fetch_x509svid(with_header(X509svidRequest {}))
            .await
            .expect("FetchX509SVID")
            .into_inner();
        let x509 = stream.message().await.expect("a first message").expect("an X509SVIDResponse");
        drop(stream);
        let request =
            JwtsvidRequest { audience: vec![AUDIENCE.to_owned()], spiffe_id: String::new() };
        let jwt = client.fetch_jwtsvid(with_header(request)).await.expect("FetchJWTSVID");
        let raw_server = RawServer::spawn(&RawApi { x509, jwt: jwt.into_inner() }, raw_dir.path());
        let raw_socket = raw_server.socket.clone();

        let n = options.pick(10_000, 500);
        let n_new = options.pick(5_000, 250);
        let time = options.pick(Duration::from_secs(3), Duration::from_millis(500));
        // Warm both up (first connections, allocator, caches).
        paired(Kind::X509Reused, &keycard_socket, &raw_socket, 50).await;
        paired(Kind::JwtReused, &keycard_socket, &raw_socket, 50).await;

        let mut rows = Vec::new();
        let both = paired(Kind::X509Reused, &keycard_socket, &raw_socket, n).await;
        rows.extend(latency_rows("FetchX509SVID first message, reused connection:", &both, 1.5));
        let both = paired(Kind::X509NewConnection, &keycard_socket, &raw_socket, n_new).await;
        rows.extend(latency_rows("FetchX509SVID first message, new connection:", &both, 2.0));
        let both = paired(Kind::JwtReused, &keycard_socket, &raw_socket, n).await;
        rows.extend(latency_rows("FetchJWTSVID (cached), reused connection:", &both, 1.5));
        for (kind, what) in [(Kind::X509Reused, "FetchX509SVID"), (Kind::JwtReused, "FetchJWTSVID")]
        {
            let keycard = calls_per_second(kind, &keycard_socket, time).await;
            let raw = calls_per_second(kind, &raw_socket, time).await;
            rows.push(throughput_row(what, keycard, raw));
        }
        rows
    })
}

//! Peers that stop answering mid-stream, while two workloads do mTLS through keycard:
//! - Workload API clients that open FetchX509SVID and stop reading while 30 SVIDs rotate:
//!   the agent keeps serving everyone else, its memory stays bounded (each stalled stream
//!   is back-pressured: a few messages queued, not one per rotation), and a stalled
//!   stream that reads again gets the current SVIDs.
//! - The server behind a TCP proxy that stops answering mid-call (connections open, no
//!   bytes): the agent keeps serving its workloads and, once the proxy serves again, syncs
//!   again by itself (the stalled call ends at its deadline; the agent reconnects).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use keycard_workload_api::proto::{
    SECURITY_HEADER, SECURITY_HEADER_VALUE, SpiffeWorkloadApiClient, X509svidRequest,
    X509svidResponse,
};
use tonic::Streaming;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::proxy::Proxy;
use super::{BACK, FRONT, Node, assert_none_failed, served};
use crate::agent::{FAST_ROTATION, PATIENCE};
use crate::pair::MtlsLoad;

const ENTRIES: usize = 30;
const STALLED_STREAMS: usize = 40;
const STALL: Duration = Duration::from_secs(12);

/// The resident memory of the process whose command line names `dir`, in KiB.
fn rss_kib(dir: &Path) -> u64 {
    let needle = dir.to_str().unwrap();
    for proc in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(proc.path().join("cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains(needle) {
            continue;
        }
        let status = std::fs::read_to_string(proc.path().join("status")).unwrap_or_default();
        if let Some(line) = status.lines().find(|l| l.starts_with("VmRSS:")) {
            return line.split_whitespace().nth(1).unwrap().parse().unwrap();
        }
    }
    panic!("no process for {needle}");
}

/// The serials of the leaves of a response.
fn serials(msg: &X509svidResponse) -> BTreeSet<Vec<u8>> {
    msg.svids
        .iter()
        .map(|s| X509Certificate::from_der(&s.x509_svid).unwrap().1.raw_serial().to_vec())
        .collect()
}

/// Opens FetchX509SVID on a connection whose HTTP/2 windows are the protocol's default
/// 64 KiB (hyper's client grants megabytes): a caller that stops reading then stops
/// granting window at once, so the agent, not this process, holds what it cannot send.
async fn open_small_window_stream(socket: &Path) -> Streaming<X509svidResponse> {
    let target = socket.to_path_buf();
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect_with_connector(tower::service_fn(move |_| {
            let target = target.clone();
            async move {
                tokio::net::UnixStream::connect(target).await.map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
        .unwrap();
    let mut request = tonic::Request::new(X509svidRequest {});
    request.metadata_mut().insert(SECURITY_HEADER, SECURITY_HEADER_VALUE.parse().unwrap());
    SpiffeWorkloadApiClient::new(channel).fetch_x509svid(request).await.unwrap().into_inner()
}

/// The next message of `stream` within `limit`, if any.
async fn next(
    stream: &mut Streaming<X509svidResponse>,
    limit: Duration,
) -> Option<X509svidResponse> {
    match tokio::time::timeout(limit, stream.message()).await {
        Ok(Ok(Some(msg))) => Some(msg),
        Ok(other) => panic!("the stalled stream ended: {other:?}"),
        Err(_) => None,
    }
}

#[test]
fn streams_that_stop_reading_are_back_pressured_while_the_agent_serves_everyone_else() {
    let (node, server) = Node::start(FAST_ROTATION);
    node.entry(&server, "front");
    node.entry(&server, "back");
    for i in 2..ENTRIES {
        node.entry(&server, &format!("e{i}"));
    }
    let agent = node.agent();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let load = MtlsLoad::start(&agent.socket, FRONT, BACK, Duration::from_millis(20));
    let (watch, _) = runtime.block_on(served(&agent.socket, ENTRIES));

    // Streams that read their first message and then nothing more.
    let mut size = 0;
    let mut stalled = runtime.block_on(async {
        let mut streams = Vec::new();
        for _ in 0..STALLED_STREAMS {
            let mut stream = open_small_window_stream(&agent.socket).await;
            let first = next(&mut stream, PATIENCE).await.expect("no first message");
            size = prost::Message::encoded_len(&first) as u64;
            streams.push(stream);
        }
        streams
    });
    let before = serials_of(&watch);
    std::thread::sleep(Duration::from_secs(1));
    let rss_start = rss_kib(&node.agent_dir());
    let mut updates = 0;
    let mut changes = watch.updated();
    let start = Instant::now();
    runtime.block_on(async {
        while start.elapsed() < STALL {
            let left = STALL.saturating_sub(start.elapsed());
            if let Ok(Ok(())) = tokio::time::timeout(left, changes.changed()).await {
                updates += 1;
            }
        }
    });
    let rss_end = rss_kib(&node.agent_dir());
    let after = serials_of(&watch);
    let renewed = after.difference(&before).count();
    assert!(renewed >= ENTRIES, "only {renewed} SVIDs renewed while the streams were stalled");

    // Everyone else was served all along: the pair, and a new caller at once.
    assert_none_failed(&load.failures(), load.handshakes(), "while streams were stalled");
    let (_, fresh) = runtime.block_on(served(&agent.socket, ENTRIES));

    // A stalled stream reads again: a few queued messages, then the current SVIDs.
    let (queued, caught_up) = runtime.block_on(async {
        let stream = &mut stalled[0];
        let mut queued = 0;
        while let Some(msg) = next(stream, Duration::from_millis(300)).await {
            queued += 1;
            if serials(&msg) == serials_of(&watch) {
                return (queued, true);
            }
        }
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Some(msg) = next(stream, PATIENCE).await
                && serials(&msg).is_disjoint(&before)
            {
                return (queued, true);
            }
        }
        (queued, false)
    });
    assert!(caught_up, "the stalled stream never delivered the current SVIDs");
    drop(stalled);
    let grew = rss_end.saturating_sub(rss_start);
    let size = size / 1024;
    println!(
        "{STALLED_STREAMS} streams stalled for {STALL:?} through {updates} updates ({renewed} \
         SVIDs renewed): agent RSS {rss_start} KiB -> {rss_end} KiB (+{grew} KiB); a stalled \
         stream held {queued} queued messages of {size} KiB; a new caller was served in {fresh:?}"
    );
    // Unbounded queues would hold a message per update per stalled stream.
    let unbounded = (STALLED_STREAMS * updates) as u64 * size;
    assert!(grew < 32 * 1024, "the agent grew by {grew} KiB (unbounded: ~{unbounded} KiB)");
    assert!(
        queued * 2 < updates,
        "{queued} queued messages of {updates} updates: not back-pressured"
    );
    let report = load.stop();
    assert_none_failed(&report.failures, report.handshakes, "in all");
    agent.stop();
    server.stop();
}

/// The serials of the SVIDs a source holds now.
fn serials_of(source: &keycard_workload_api::X509Source) -> BTreeSet<Vec<u8>> {
    source
        .updated()
        .borrow()
        .svids
        .iter()
        .map(|s| X509Certificate::from_der(s.leaf()).unwrap().1.raw_serial().to_vec())
        .collect()
}

/// SVIDs live a minute, so that they outlast a call stuck until its 30 s deadline.
const MINUTE_SVIDS: &str = r#"
trust_domain = "example.org"
ca_ttl = "10m"
default_x509_svid_ttl = "1m"
default_jwt_svid_ttl = "1m"
agent_svid_ttl = "90s"
"#;

#[test]
fn a_server_that_stops_answering_mid_call_leaves_workloads_served_and_the_agent_recovers() {
    let (node, server) = Node::start(MINUTE_SVIDS);
    node.entry(&server, "front");
    node.entry(&server, "back");
    let proxy = Proxy::start(&node.bind);
    let agent = node.agent_at(&proxy.address);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let load = MtlsLoad::start(&agent.socket, FRONT, BACK, Duration::from_millis(20));
    runtime.block_on(served(&agent.socket, 2));

    // The proxy stops answering: the agent's next sync call hangs on an open connection.
    proxy.stall();
    let stalled = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let (_, fresh) = runtime.block_on(served(&agent.socket, 2));
    assert_none_failed(&load.failures(), load.handshakes(), "while the proxy stalled");

    // An entry registered meanwhile reaches the workloads once the proxy answers again.
    node.entry(&server, "late");
    proxy.resume();
    let resumed = Instant::now();
    runtime.block_on(async {
        let (source, _) = served(&agent.socket, 3).await;
        drop(source);
    });
    let synced = resumed.elapsed();
    let report = load.stop();
    assert_none_failed(&report.failures, report.handshakes, "in all");
    println!(
        "proxy stalled {:?}: a new caller served in {fresh:?} meanwhile; the agent synced again \
         {synced:?} after the proxy resumed; {} handshakes, 0 failed",
        resumed.duration_since(stalled),
        report.handshakes
    );
    // The stuck call ends at its deadline (30 s) and the next round reconnects.
    assert!(synced < Duration::from_secs(40), "the agent took {synced:?} to sync again");
    agent.stop();
    server.stop();
}

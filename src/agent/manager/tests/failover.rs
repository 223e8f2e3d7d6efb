//! An agent listing several servers: one that refuses connections and one that accepts
//! TCP and never answers are left within the request deadline each, the next round goes
//! to the next server, and after a switch the full sync keeps every SVID the workloads
//! hold. Refusals from a server move nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use super::harness::{Server, selectors, setup_on, td};
use super::*;
use crate::agent::client::{ServerAddresses, ServerClient};
use crate::telemetry::AgentMetrics;

/// The deadline the failover clients get (the default is 30 s).
const DEADLINE: Duration = Duration::from_millis(800);

/// A loopback port nobody listens on: connections are refused.
async fn dead_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().to_string()
}

/// A listener that accepts connections and never says a byte; dropped with the task.
async fn stalled_port() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (addr, task)
}

/// The agent's client of `setup`, moved onto `addresses` (its SVID kept), with metrics.
async fn over(client: &ServerClient, addresses: Vec<String>) -> (ServerClient, Arc<AgentMetrics>) {
    let servers = ServerAddresses::new(addresses).unwrap();
    let identity = client.identity().unwrap().clone();
    let metrics = Arc::new(AgentMetrics::new());
    let client = ServerClient::with_identity_at(servers, td(), client.bundle(), identity, DEADLINE)
        .await
        .unwrap()
        .with_metrics(metrics.clone());
    (client, metrics)
}

#[tokio::test]
async fn a_refusing_and_a_silent_server_are_left_for_the_next_within_a_deadline_each() {
    let mut s = setup_on(Server::start().await, ManagerOptions::default()).await;
    s.server.entry("spiffe://example.org/web", &s.agent_id, &["unix:uid:1000"]);
    let (dead, (silent, _held)) = (dead_port().await, stalled_port().await);
    let live = s.server.addr.to_string();
    let (client, metrics) =
        over(s.manager.client(), vec![dead.clone(), silent.clone(), live]).await;
    s.manager.set_client(client);

    for (bad, name) in [(&dead, "refusing"), (&silent, "silent")] {
        assert_eq!(s.manager.client().servers().current(), bad.as_str());
        let start = Instant::now();
        let e = s.manager.tick().await.unwrap_err();
        let took = start.elapsed();
        assert!(took < DEADLINE + Duration::from_millis(500), "{name} server held {took:?}");
        assert!(matches!(e, ManagerError::Server(_)), "{name}: {e}");
        assert_ne!(s.manager.client().servers().current(), bad.as_str(), "{name}: not left");
    }
    let report = s.manager.tick().await.unwrap();
    assert_eq!((report.issued, report.failed), (1, 0));
    assert_eq!(s.cache.svids_for(&selectors(&["unix:uid:1000"])).len(), 1);
    assert_eq!(metrics.server_failovers.get(), 2);
    let text = metrics.render();
    assert!(text.contains(&format!("keycard_agent_server{{address=\"{}\"}} 1", s.server.addr)));
    assert!(text.contains(&format!("keycard_agent_server{{address=\"{dead}\"}} 0")), "{text}");
}

#[tokio::test]
async fn after_a_switch_the_full_sync_keeps_the_svids_and_the_new_server_serves() {
    let first = Server::start().await;
    let second = first.sibling().await;
    let mut s = setup_on(first, ManagerOptions::default()).await;
    let web = s.server.entry("spiffe://example.org/web", &s.agent_id, &["unix:uid:1000"]);
    s.server.entry("spiffe://example.org/db", &s.agent_id, &["unix:uid:1001"]);
    let addresses = vec![s.server.addr.to_string(), second.addr.to_string()];
    let (client, metrics) = over(s.manager.client(), addresses).await;
    s.manager.set_client(client);
    assert_eq!(s.manager.tick().await.unwrap().issued, 2);
    let held = s.cache.svids();
    // An idle round keeps the cursor: nothing changed, nothing sent again.
    assert!(!s.manager.tick().await.unwrap().synced_changed);

    s.server.shut_down().await;
    let e = s.manager.tick().await.unwrap_err();
    assert_eq!(s.manager.client().servers().current(), second.addr.to_string(), "{e}");
    assert_eq!(metrics.server_failovers.get(), 1);

    // The next round syncs everything with the other server: the same entries, so every
    // SVID held stays (none issued again, none dropped).
    let report = s.manager.tick().await.unwrap();
    assert!(report.synced_changed, "the first round on another server is a full sync");
    assert_eq!((report.issued, report.renewed, report.removed, report.failed), (0, 0, 0, 0));
    let serials = |svids: &[Arc<crate::agent::cache::CachedSvid>]| {
        svids.iter().map(|s| (s.entry_id.clone(), s.serial.clone())).collect::<Vec<_>>()
    };
    assert_eq!(serials(&s.cache.svids()), serials(&held));
    assert!(s.cache.svid(&web.id).is_some());

    // And it is the server from now on: a new entry gets its SVID through it.
    second.entry("spiffe://example.org/new", &s.agent_id, &["unix:uid:1002"]);
    let report = s.manager.tick().await.unwrap();
    assert_eq!(report.issued, 1);
    assert_eq!(s.cache.svids_for(&selectors(&["unix:uid:1002"])).len(), 1);
}

#[tokio::test]
async fn a_refusal_from_the_server_moves_nothing() {
    let first = Server::start().await;
    let second = first.sibling().await;
    let mut s = setup_on(first, ManagerOptions::default()).await;
    let addresses = vec![s.server.addr.to_string(), second.addr.to_string()];
    let (mut client, metrics) = over(s.manager.client(), addresses).await;
    // No such entry: the server refuses (NotFound or PermissionDenied), it is not gone.
    let e = client.new_jwt_svid("no-such-entry", &["aud".into()]).await.unwrap_err();
    assert!(crate::agent::client::failover_reason(&e).is_none(), "{e}");
    assert_eq!(client.servers().current(), s.server.addr.to_string());
    assert!(!client.take_switched());
    assert_eq!(metrics.server_failovers.get(), 0);
    s.manager.set_client(client);
    assert!(s.manager.tick().await.is_ok());
}

//! An agent given several server addresses (`--server-address` repeated):
//! - the first refuses connections and the second accepts TCP and never answers: the
//!   agent attests with the third, a real server, within about one request deadline per
//!   bad address, and serves SVIDs;
//! - the first is a TCP proxy in front of the server (the second address), killed while
//!   two workloads do mTLS: the agent switches to the second, syncs everything with it
//!   (the workloads keep the SVIDs they hold: none is issued again), and goes on syncing
//!   through it.
//!
//! Two real servers sharing state need PostgreSQL; here every address that works leads
//! to the same server. Switching between servers that share a datastore is tested in
//! process (`agent::manager::tests::failover`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::proxy::Proxy;
use super::{BACK, FRONT, Node, assert_none_failed, served};
use crate::agent::PATIENCE;
use crate::pair::MtlsLoad;
use crate::procs::{metric, metrics};

/// The agent's deadline per call and per dial (the default is 30 s).
const DEADLINE: Duration = Duration::from_secs(2);
const AGENT_EXTRA: &str = "server_request_timeout = \"2s\"\nhealth_address = \"127.0.0.1:0\"\n";

/// SVIDs live ten minutes: none is renewed during a test, so a serial that changes was
/// issued again.
const LONG_SVIDS: &str = r#"
trust_domain = "example.org"
ca_ttl = "3h"
default_x509_svid_ttl = "10m"
default_jwt_svid_ttl = "1m"
agent_svid_ttl = "30m"
"#;

/// The serial of each SVID a source holds, by SPIFFE ID.
fn serials(source: &keycard_workload_api::X509Source) -> BTreeMap<String, Vec<u8>> {
    let context = source.updated().borrow().clone();
    context
        .svids
        .iter()
        .map(|s| {
            let serial = X509Certificate::from_der(s.leaf()).unwrap().1.raw_serial().to_vec();
            (s.spiffe_id().to_string(), serial)
        })
        .collect()
}

#[test]
fn an_agent_attests_past_a_refusing_and_a_silent_address_within_a_deadline_each() {
    let (node, server) = Node::start(LONG_SVIDS);
    node.entry(&server, "front");
    // Refusing: a port nobody listens on. Silent: a listener that never accepts, so the
    // kernel completes the TCP handshake and nothing ever answers.
    let refusing = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_address = silent.local_addr().unwrap().to_string();
    let (refusing, real) = (refusing.to_string(), node.bind.clone());

    let start = Instant::now();
    let agent = node.agent_over(&[&refusing, &silent_address, &real], AGENT_EXTRA);
    let listening = start.elapsed();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (_source, fetch) = runtime.block_on(served(&agent.socket, 1));
    let total = start.elapsed();
    println!(
        "past a refusing and a silent address: Workload API up in {listening:?}, first SVID \
         served {total:?} after start (fetch {fetch:?}); deadline {DEADLINE:?}"
    );
    // One deadline for the silent address, none for the refusing one, plus start-up.
    assert!(listening >= DEADLINE, "the silent address was not waited for: {listening:?}");
    assert!(listening < DEADLINE + Duration::from_secs(5), "took {listening:?}");

    let text = metrics(agent.health.as_deref().unwrap());
    assert_eq!(metric(&text, "keycard_agent_server_failovers_total"), Some(2), "{text}");
    let current = format!("keycard_agent_server{{address=\"{real}\"}}");
    assert_eq!(metric(&text, &current), Some(1), "{text}");
    drop(silent);
    agent.stop();
    server.stop();
}

#[test]
fn an_agent_whose_first_server_dies_mid_run_goes_on_with_the_second() {
    let (node, server) = Node::start(LONG_SVIDS);
    node.entry(&server, "front");
    node.entry(&server, "back");
    let proxy = Proxy::start(&node.bind);
    let agent = node.agent_over(&[&proxy.address, &node.bind], AGENT_EXTRA);
    let health = agent.health.clone().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let load = MtlsLoad::start(&agent.socket, FRONT, BACK, Duration::from_millis(20));
    let (watch, _) = runtime.block_on(served(&agent.socket, 2));
    let held = serials(&watch);
    let before = metrics(&health);
    assert_eq!(metric(&before, "keycard_agent_server_failovers_total"), Some(0), "{before}");
    let proxied = format!("keycard_agent_server{{address=\"{}\"}}", proxy.address);
    assert_eq!(metric(&before, &proxied), Some(1), "{before}");

    // The first server goes away mid-run (its connections close, new ones are refused).
    let killed = Instant::now();
    drop(proxy);
    let direct = format!("keycard_agent_server{{address=\"{}\"}}", node.bind);
    let deadline = killed + PATIENCE;
    while metric(&metrics(&health), &direct) != Some(1) {
        assert!(Instant::now() < deadline, "the agent never moved to the second server");
        std::thread::sleep(Duration::from_millis(50));
    }
    let switched = killed.elapsed();

    // An entry registered after the switch reaches the workloads through the second server.
    node.entry(&server, "late");
    let (source, _) = runtime.block_on(served(&agent.socket, 3));
    let synced = killed.elapsed();
    drop(source);
    // The full sync with the new server kept what the workloads held: nothing reissued.
    let now = serials(&watch);
    for (id, serial) in &held {
        assert_eq!(now.get(id), Some(serial), "{id}: the SVID held was replaced or dropped");
    }
    let report = load.stop();
    let when = format!("across the switch (server side: {:?})", report.accept_errors);
    assert_none_failed(&report.failures, report.handshakes, &when);
    let after = metrics(&health);
    assert!(metric(&after, "keycard_agent_server_failovers_total") >= Some(1), "{after}");
    assert_eq!(metric(&after, &proxied), Some(0), "{after}");
    println!(
        "first server killed: the agent switched after {switched:?}, served an entry created \
         after the switch {synced:?} after the kill; {} handshakes, 0 failed; SVIDs kept",
        report.handshakes
    );
    assert!(switched < DEADLINE + Duration::from_secs(5), "switched after {switched:?}");
    agent.stop();
    server.stop();
}

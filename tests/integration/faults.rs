//! Faults while two workloads do mTLS through keycard: the server down for longer than an
//! SVID half-life with the agent restarted meanwhile (here), kill -9 while writing
//! ([`kill`]), a failing datastore ([`datastore`]), peers that stop answering ([`stall`]),
//! an agent listing several server addresses of which some are dead or silent
//! ([`failover`]).
//! A forward clock jump is tested at the agent-loop level, on the manual clock
//! (`agent::manager::tests::clock_jump`): a real process cannot be shown a jump cheaply.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use keycard_workload_api::X509Source;
use keycard_workload_api::client::X509Context;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::agent::PATIENCE;
use crate::pair::MtlsLoad;
use crate::procs::{Agent, Server};

mod datastore;
mod failover;
mod kill;
mod proxy;
mod stall;

/// SVIDs live 24 s (renewed about every 12 s); the agent's own SVID lives 90 s.
const OUTAGE_CONFIG: &str = r#"
trust_domain = "example.org"
ca_ttl = "10m"
default_x509_svid_ttl = "24s"
default_jwt_svid_ttl = "1m"
agent_svid_ttl = "90s"
"#;
const TTL: Duration = Duration::from_secs(24);
pub(crate) const FRONT: &str = "spiffe://example.org/workload/front";
pub(crate) const BACK: &str = "spiffe://example.org/workload/back";

/// A server on a fixed loopback port (so that it can come back on the same address), and
/// what it takes to start and restart an agent against it.
pub struct Node {
    /// Holds everything; removed on drop.
    pub dir: tempfile::TempDir,
    /// The server's agent API, `127.0.0.1:port`.
    pub bind: String,
    /// The server's TOML configuration.
    pub config: &'static str,
    /// This test's uid (the workloads' selector).
    pub uid: u32,
    token: String,
    bundle_file: PathBuf,
}

impl Node {
    /// Starts a server with `config` on a free port; returns it with the node.
    pub fn start(config: &'static str) -> (Node, Server) {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let bind = format!("127.0.0.1:{}", port.port());
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let uid = std::fs::metadata(dir.path()).unwrap().uid();
        let server = Server::start_with(&dir.path().join("server"), &bind, Some(config));
        let pem = server.admin_text(&["bundle", "show", "--format", "pem"]);
        let bundle_file = dir.path().join("bundle.pem");
        std::fs::write(&bundle_file, pem).unwrap();
        let token = server.token("node/1");
        (Node { dir, bind, config, uid, token, bundle_file }, server)
    }

    /// Starts the server again on the same address and state.
    pub fn restart_server(&self) -> Server {
        Server::start_with(&self.server_dir(), &self.bind, Some(self.config))
    }

    /// The server's data directory.
    pub fn server_dir(&self) -> PathBuf {
        self.dir.path().join("server")
    }

    /// The agent's data directory.
    pub fn agent_dir(&self) -> PathBuf {
        self.dir.path().join("agent")
    }

    /// An entry `workload/<name>` for this uid under the agent `node/1`.
    pub fn entry(&self, server: &Server, name: &str) -> String {
        let created = server.admin(&[
            "entry",
            "create",
            "--spiffe-id",
            &format!("spiffe://example.org/workload/{name}"),
            "--parent-id",
            "spiffe://example.org/node/1",
            "--selector",
            &format!("unix:uid:{}", self.uid),
        ]);
        created["id"].as_str().unwrap().to_owned()
    }

    /// Starts (or restarts) the agent `node/1`, syncing every 300 ms, with its disk cache.
    pub fn agent(&self) -> Agent {
        self.agent_at(&self.bind)
    }

    /// [`Node::agent`] listing the servers `addresses` in order (the first given as the
    /// agent's first `--server-address`), with `extra` TOML (a health address, a short
    /// request deadline) in its config file.
    pub fn agent_over(&self, addresses: &[&str], extra: &str) -> Agent {
        let config = self.dir.path().join("agent.toml");
        let text = format!("sync_interval = \"300ms\"\ndisk_cache = true\n{extra}");
        std::fs::write(&config, text).unwrap();
        let mut flags = vec!["--config", config.to_str().unwrap()];
        flags.extend(["--trust-bundle", self.bundle_file.to_str().unwrap()]);
        flags.extend(["--join-token", &self.token]);
        for address in &addresses[1..] {
            flags.extend(["--server-address", address]);
        }
        Agent::start(self.dir.path(), addresses[0], &flags, extra.contains("health_address"))
    }

    /// [`Node::agent`] reaching the server at `address` (a proxy in front of it).
    pub fn agent_at(&self, address: &str) -> Agent {
        let config = self.dir.path().join("agent.toml");
        std::fs::write(&config, "sync_interval = \"300ms\"\ndisk_cache = true\n").unwrap();
        let flags = [
            "--config",
            config.to_str().unwrap(),
            "--trust-bundle",
            self.bundle_file.to_str().unwrap(),
            "--join-token",
            &self.token,
        ];
        Agent::start(self.dir.path(), address, &flags, false)
    }
}

/// Panics unless `failures` is empty, naming how many there were and the first three.
fn assert_none_failed(failures: &[String], handshakes: u64, when: &str) {
    assert!(
        failures.is_empty(),
        "{when}: {} of {handshakes} handshakes failed, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
}

/// The notAfter of each SVID of `context`, by SPIFFE ID.
pub(crate) fn expiries(context: &X509Context) -> Vec<(String, SystemTime)> {
    context
        .svids
        .iter()
        .map(|svid| {
            let (_, cert) = X509Certificate::from_der(svid.leaf()).unwrap();
            let secs = cert.validity().not_after.timestamp() as u64;
            (svid.spiffe_id().to_string(), SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        })
        .collect()
}

/// The shortest remaining life among the SVIDs of `context` (zero without two SVIDs).
fn least_left(context: &X509Context) -> Duration {
    let e = expiries(context);
    if e.len() < 2 {
        return Duration::ZERO;
    }
    let now = SystemTime::now();
    e.iter().map(|(_, at)| at.duration_since(now).unwrap_or_default()).min().unwrap()
}

/// A new `X509Source` on `socket` holding `count` SVIDs (at least); returns how long that
/// took.
pub(crate) async fn served(socket: &std::path::Path, count: usize) -> (X509Source, Duration) {
    let start = Instant::now();
    let endpoint = format!("unix://{}", socket.display());
    let source = tokio::time::timeout(PATIENCE, X509Source::new(Some(&endpoint)))
        .await
        .expect("no X509Source within PATIENCE")
        .unwrap();
    let mut updates = source.updated();
    tokio::time::timeout(PATIENCE, updates.wait_for(|c| c.svids.len() >= count))
        .await
        .expect("the agent did not serve both SVIDs")
        .unwrap();
    (source, start.elapsed())
}

/// Whether every SVID of `context` expires later than the one of its ID in `before`.
pub(crate) fn renewed_since(before: &[(String, SystemTime)], context: &X509Context) -> bool {
    let now = expiries(context);
    now.len() == before.len() && now.iter().all(|n| before.iter().all(|b| b.0 != n.0 || b.1 < n.1))
}

/// A server configured by `config`, the agent with the entries `front` and `back`, the
/// mTLS pair between them, and a source watching their SVIDs.
pub struct Pair {
    /// The state directory and how to (re)start things.
    pub node: Node,
    /// The server.
    pub server: Server,
    /// The agent `node/1`, with its disk cache.
    pub agent: Agent,
    /// A runtime for the test's own async calls.
    pub runtime: tokio::runtime::Runtime,
    /// The two workloads doing mTLS.
    pub load: MtlsLoad,
    /// Follows `front` and `back` as the agent serves them.
    pub watch: X509Source,
}

impl Pair {
    /// Starts everything; returns once the pair did its first handshake.
    pub fn start(config: &'static str) -> Pair {
        let (node, server) = Node::start(config);
        node.entry(&server, "front");
        node.entry(&server, "back");
        let agent = node.agent();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let load = MtlsLoad::start(&agent.socket, FRONT, BACK, Duration::from_millis(20));
        let (watch, _) = runtime.block_on(served(&agent.socket, 2));
        Pair { node, server, agent, runtime, load, watch }
    }
}

#[test]
fn mtls_survives_a_server_outage_longer_than_a_half_life_with_the_agent_restarted_meanwhile() {
    let Pair { node, server, agent, runtime, load, watch } = Pair::start(OUTAGE_CONFIG);

    // Stop the server when both SVIDs have at least 70 % of their life left: right after
    // the later of two renewals; within one half-life one such moment always comes, as
    // two SVIDs renewing every half-life are at most a quarter-life apart one way round.
    let fresh = TTL.mul_f64(0.7);
    let deadline = Instant::now() + TTL;
    while least_left(&watch.updated().borrow()) < fresh {
        assert!(Instant::now() < deadline, "both SVIDs were never fresh at once");
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = expiries(&watch.updated().borrow());
    server.stop();
    let down = Instant::now();
    println!("server stopped; SVIDs left: {:?}", least_left(&watch.updated().borrow()));

    // The agent restarts while the server is down: served again from its disk cache.
    std::thread::sleep(Duration::from_secs(2));
    agent.stop();
    let restart = Instant::now();
    let agent = node.agent();
    let (_, fetch) = runtime.block_on(served(&agent.socket, 2));
    let restored = restart.elapsed();
    println!("agent restarted with the server down: served in {restored:?} (fetch {fetch:?})");
    assert!(restored < Duration::from_secs(2), "the restarted agent served after {restored:?}");

    // The outage lasts longer than a half-life; then the server returns.
    let outage = TTL / 2 + Duration::from_millis(500);
    std::thread::sleep(outage.saturating_sub(down.elapsed()));
    assert_none_failed(&load.failures(), load.handshakes(), "during the outage");
    let server = node.restart_server();
    let back = Instant::now();
    println!("server back after {:?}", down.elapsed());

    // Renewal resumes: both SVIDs rotate, before the old ones expire.
    let (fresh_source, _) = runtime.block_on(served(&agent.socket, 2));
    let mut updates = fresh_source.updated();
    let rotated = |c: &std::sync::Arc<X509Context>| renewed_since(&before, c);
    runtime
        .block_on(async { tokio::time::timeout(TTL, updates.wait_for(rotated)).await })
        .expect("the SVIDs did not rotate after the server returned")
        .unwrap();
    let renewed = back.elapsed();
    println!("both SVIDs renewed {renewed:?} after the server returned");
    // The pair's own source follows the restarted agent and presents the new SVIDs.
    let start = load.handshakes();
    while load.handshakes() < start + 20 {
        std::thread::sleep(Duration::from_millis(50));
    }
    let report = load.stop();
    assert_none_failed(&report.failures, report.handshakes, "in all");
    let newest = expiries(&updates.borrow());
    let der_expiry = |der: &Vec<u8>| {
        let (_, cert) = X509Certificate::from_der(der).unwrap();
        SystemTime::UNIX_EPOCH + Duration::from_secs(cert.validity().not_after.timestamp() as u64)
    };
    let latest_server = report.server_leaves.iter().map(der_expiry).max().unwrap();
    assert!(
        newest.iter().any(|(id, at)| id == BACK && *at == latest_server),
        "the client never saw the renewed server SVID"
    );
    println!(
        "{} handshakes, 0 failed, across a {:?} outage (half-life {:?})",
        report.handshakes,
        back.duration_since(down),
        TTL / 2
    );
    agent.stop();
    server.stop();
}

//! HA: two real servers on one real PostgreSQL database (a fresh one per test, on the
//! cluster `scripts/test.sh` starts), real agents, real workloads.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use keycard::server::datastore::postgres::TestDatabase;
use keycard_workload_api::client::X509Context;

use crate::agent::PATIENCE;
use crate::faults::{BACK, FRONT, expiries, renewed_since, served};
use crate::pair::MtlsLoad;
use crate::procs::{Agent, Server, keycard, metric, metrics};

/// SVIDs live 20 s (renewed about every 10 s); authorities 10 min, so every server reads
/// its peers every 6 s (a hundredth of `ca_ttl`).
fn config(url: &str) -> String {
    format!(
        "trust_domain = \"example.org\"\nca_ttl = \"10m\"\ndefault_x509_svid_ttl = \"20s\"\n\
         agent_svid_ttl = \"60s\"\ndefault_jwt_svid_ttl = \"1m\"\n[datastore]\ntype = \"postgres\"\nurl = \"{url}\"\n"
    )
}
const TTL: Duration = Duration::from_secs(20);

/// Two servers on one new database, started at the same moment, and a directory for the
/// rest of the test.
struct Deployment {
    _db: TestDatabase,
    dir: tempfile::TempDir,
    a: Server,
    b: Server,
    uid: u32,
}

impl Deployment {
    fn start() -> Deployment {
        let db = TestDatabase::from_env();
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let uid = std::fs::metadata(dir.path()).unwrap().uid();
        let text = config(db.url());
        // Both at once on the empty database: both migrate it (one waits for the other).
        let (a, b) = std::thread::scope(|s| {
            let a =
                s.spawn(|| Server::start_with(&dir.path().join("a"), "127.0.0.1:0", Some(&text)));
            let b =
                s.spawn(|| Server::start_with(&dir.path().join("b"), "127.0.0.1:0", Some(&text)));
            (a.join().unwrap(), b.join().unwrap())
        });
        let d = Deployment { _db: db, dir, a, b, uid };
        d.wait_for_each_other();
        d
    }

    /// Waits until each server publishes both servers' X.509 authorities.
    fn wait_for_each_other(&self) {
        let deadline = Instant::now() + PATIENCE;
        for server in [&self.a, &self.b] {
            loop {
                let list = server.admin(&["authority", "x509", "show"]);
                let owners: std::collections::BTreeSet<String> = list["authorities"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a["server_id"].as_str().unwrap().to_owned())
                    .collect();
                if owners.len() == 2 {
                    break;
                }
                assert!(Instant::now() < deadline, "the servers never saw each other: {list}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    /// The bundle (PEM) as server `s` publishes it, in a file.
    fn bundle_file(&self, s: &Server) -> PathBuf {
        let path = self.dir.path().join("bundle.pem");
        std::fs::write(&path, s.admin_text(&["bundle", "show", "--format", "pem"])).unwrap();
        path
    }

    /// An entry `workload/<name>` for this uid under the agent `node/<node>`, made
    /// through `s`.
    fn entry(&self, s: &Server, node: &str, name: &str) {
        s.admin(&[
            "entry",
            "create",
            "--spiffe-id",
            &format!("spiffe://example.org/workload/{name}"),
            "--parent-id",
            &format!("spiffe://example.org/node/{node}"),
            "--selector",
            &format!("unix:uid:{}", self.uid),
        ]);
    }

    /// Starts the agent `node/<node>` in its own directory, attesting with a token made
    /// through `token_from`, to `addresses` in order.
    fn agent(&self, node: &str, token_from: &Server, addresses: &[&str]) -> Agent {
        let token = token_from.token(&format!("node/{node}"));
        let bundle = self.bundle_file(token_from);
        let config = self.dir.path().join(format!("agent-{node}.toml"));
        std::fs::write(&config, "sync_interval = \"300ms\"\n").unwrap();
        let mut flags = vec![
            "--config".to_owned(),
            config.display().to_string(),
            "--trust-bundle".to_owned(),
            bundle.display().to_string(),
            "--join-token".to_owned(),
            token,
            "--health-address".to_owned(),
            "127.0.0.1:0".to_owned(),
        ];
        for extra in &addresses[1..] {
            flags.extend(["--server-address".to_owned(), (*extra).to_owned()]);
        }
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let dir = self.dir.path().join(format!("node-{node}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Agent::start(&dir, addresses[0], &flags, true)
    }
}

/// The X.509 authorities (DER) of the agent's bundle, as a workload sees them.
fn roots(context: &X509Context) -> usize {
    context.bundles.iter().map(|b| b.authorities().len()).sum()
}

#[test]
fn two_servers_on_one_database_share_entries_agents_tokens_and_authorities() {
    let d = Deployment::start();
    let health = d.a.admin(&["healthcheck"]);
    assert_eq!(health["datastore_kind"], "postgres", "{health}");
    assert_eq!(health["peers"].as_array().unwrap().len(), 1, "{health}");
    assert_eq!(health["peers"][0]["live"], true, "{health}");

    // An entry made through A, an agent attested through B: the workload gets its SVID,
    // and the agent's bundle holds both servers' authorities.
    d.entry(&d.a, "b", "web");
    let agent = d.agent("b", &d.b, &[&d.b.address]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (source, _) = runtime.block_on(served(&agent.socket, 1));
    let context = source.updated().borrow().clone();
    assert_eq!(context.svids[0].spiffe_id().as_str(), "spiffe://example.org/workload/web");
    assert_eq!(roots(&context), 2, "each server's authority is in the agent's bundle");

    // One join token, redeemed through both servers at the same moment: exactly once.
    let token = d.a.token("node/twice");
    let bundle = d.bundle_file(&d.a);
    let mut children: Vec<_> = [&d.a, &d.b]
        .iter()
        .enumerate()
        .map(|(i, server)| {
            let dir = d.dir.path().join(format!("twice-{i}"));
            keycard()
                .args(["agent", "run", "--trust-domain", "example.org"])
                .args(["--server-address", &server.address, "--join-token", &token])
                .arg("--trust-bundle")
                .arg(&bundle)
                .arg("--data-dir")
                .arg(dir.join("agent"))
                .arg("--socket-path")
                .arg(dir.join("api.sock"))
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let attested = |dir: &Path| dir.join("agent").join("agent_svid.pem").exists();
    let deadline = Instant::now() + PATIENCE;
    let mut exited = Vec::new();
    while Instant::now() < deadline && exited.is_empty() {
        for (i, child) in children.iter_mut().enumerate() {
            if !exited.contains(&i) && child.try_wait().unwrap().is_some() {
                exited.push(i);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let dirs: Vec<PathBuf> = (0..2).map(|i| d.dir.path().join(format!("twice-{i}"))).collect();
    let winners = dirs.iter().filter(|dir| attested(dir)).count();
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert_eq!(exited.len(), 1, "one agent is refused and stops, the other runs");
    assert_eq!(winners, 1, "the token was redeemed {winners} times");
    let refused = children.remove(exited[0]).wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("used"), "the loser's error names the used token: {stderr}");
    agent.stop();
}

#[test]
fn a_server_killed_under_mtls_load_fails_no_handshake() {
    let d = Deployment::start();
    d.entry(&d.a, "1", "front");
    d.entry(&d.a, "1", "back");
    let agent = d.agent("1", &d.a, &[&d.a.address, &d.b.address]);
    let load = MtlsLoad::start(&agent.socket, FRONT, BACK, Duration::from_millis(20));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (watch, _) = runtime.block_on(served(&agent.socket, 2));
    let before = expiries(&watch.updated().borrow());

    // A dies (kill -9); the agent moves to B; the SVIDs keep renewing, through B, before
    // they expire; no handshake fails meanwhile.
    let Deployment { a, b, _db, dir, .. } = d;
    drop(a);
    let killed = Instant::now();
    let mut updates = watch.updated();
    let renewed = |c: &std::sync::Arc<X509Context>| renewed_since(&before, c);
    runtime
        .block_on(async { tokio::time::timeout(TTL, updates.wait_for(renewed)).await })
        .expect("the SVIDs were not renewed through the other server")
        .unwrap();
    println!("both SVIDs renewed {:?} after server A was killed", killed.elapsed());
    let start = load.handshakes();
    while load.handshakes() < start + 20 {
        std::thread::sleep(Duration::from_millis(50));
    }
    let report = load.stop();
    assert!(
        report.failures.is_empty(),
        "{} of {} handshakes failed, first: {:?}",
        report.failures.len(),
        report.handshakes,
        report.failures.first()
    );
    let text = metrics(agent.health.as_deref().unwrap());
    let failovers = metric(&text, "keycard_agent_server_failovers_total").unwrap_or(0);
    assert!(failovers >= 1, "the agent did not fail over:\n{text}");
    println!("{} handshakes, 0 failed, with server A killed", report.handshakes);
    agent.stop();
    b.stop();
    drop(dir);
}

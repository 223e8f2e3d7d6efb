//! A server and one agent as real processes in a temp dir on loopback, with the entries a
//! scenario registers in batches (`keycard entry create --file`), and the figures a
//! scenario reads from them: the agent's cache gauges, RSS, CPU and I/O.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::meters;
use crate::procs::{Agent, Server};

/// The agent every entry names as its parent (attested with a join token for this ID).
pub const AGENT_ID: &str = "spiffe://example.org/node/1";

/// The most entries one `entry create --file` call takes (the admin API's batch limit).
const MAX_BATCH_ENTRIES: usize = 10_000;

/// A server config: SVIDs live an hour (no renewal during a run), and each agent may have
/// `rate` SVIDs signed per second.
fn server_config(rate: u32) -> String {
    format!(
        "trust_domain = \"example.org\"\nca_ttl = \"6h\"\ndefault_x509_svid_ttl = \"1h\"\n\
         default_jwt_svid_ttl = \"5m\"\nagent_svid_ttl = \"1h\"\n\
         svids_per_second_per_agent = {rate}\n"
    )
}

/// A running server and what an agent needs to join it.
pub struct Cluster {
    dir: tempfile::TempDir,
    /// The server process; `None` only inside [`Cluster::restart_server`].
    server: Option<Server>,
    bundle_file: PathBuf,
    token: String,
    /// This process's uid: entries for it are what the bench's own calls fetch.
    pub uid: u32,
}

/// A running agent, with the PID and health address the figures are read from.
pub struct RunningAgent {
    /// The process (killed on drop).
    pub agent: Agent,
    /// Its PID, for `/proc`.
    pub pid: u32,
    /// Its `/metrics` address.
    pub health: String,
    /// When the process was spawned.
    pub spawned: Instant,
}

impl Cluster {
    /// Starts a server allowing `rate` SVIDs per second per agent.
    pub fn start(rate: u32) -> Cluster {
        let dir = tempfile::tempdir().expect("a temp dir");
        let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(dir.path()).unwrap());
        let server = start_server(dir.path(), "127.0.0.1:0", rate);
        let pem = server.admin_text(&["bundle", "show", "--format", "pem"]);
        let bundle_file = dir.path().join("bundle.pem");
        std::fs::write(&bundle_file, pem).expect("bundle written");
        let token = server.token("node/1");
        Cluster { dir, server: Some(server), bundle_file, token, uid }
    }

    /// Stops the server and starts it again on the same state and address with `rate`.
    pub fn restart_server(&mut self, rate: u32) {
        let address = self.server().address.clone();
        if let Some(old) = self.server.take() {
            old.stop();
        }
        self.server = Some(start_server(self.dir.path(), &address, rate));
    }

    /// The running server.
    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("a server runs outside restart_server")
    }

    /// Registers `entries` (JSON entry objects) in batches of the admin API's limit.
    pub fn register(&self, entries: &[serde_json::Value]) {
        for (i, batch) in entries.chunks(MAX_BATCH_ENTRIES).enumerate() {
            let file = self.dir.path().join(format!("entries-{i}.json"));
            std::fs::write(&file, serde_json::to_vec(batch).expect("JSON")).expect("entry file");
            let out = self.server().admin_raw(&["entry", "create", "--file", path_str(&file)]);
            assert!(out.status.success(), "entry create --file failed: {out:?}");
        }
    }

    /// Starts the agent (`node/1`) with this extra TOML and a health endpoint, and waits
    /// until its Workload API listens. Its state stays in the cluster's dir across restarts.
    pub fn agent(&self, extra_config: &str) -> RunningAgent {
        self.agent_via(extra_config, &self.server().address)
    }

    /// Like [`Cluster::agent`], with the agent told the server is at `server_address` (a
    /// relay in front of it).
    pub fn agent_via(&self, extra_config: &str, server_address: &str) -> RunningAgent {
        let port = free_port();
        let config = self.dir.path().join("agent.toml");
        let text = format!("health_address = \"127.0.0.1:{port}\"\n{extra_config}");
        std::fs::write(&config, text).expect("agent config");
        let flags = [
            "--config",
            path_str(&config),
            "--trust-bundle",
            path_str(&self.bundle_file),
            "--join-token",
            &self.token,
        ];
        let spawned = Instant::now();
        let agent = Agent::start(self.dir.path(), server_address, &flags, true);
        let pid = meters::child_pid(&self.dir.path().join("agent"), "the agent");
        let health = agent.health.clone().expect("the agent logs its health address");
        RunningAgent { agent, pid, health, spawned }
    }

    /// Waits until the agent's on-disk SVID cache (`disk_cache = true`) exists and has
    /// not changed for a second, so that a restart finds the whole of it.
    pub fn wait_for_disk_cache(&self, scenario: &str) {
        let file = self.dir.path().join("agent").join("cache").join("workload_cache.json");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = None;
        loop {
            let now = std::fs::metadata(&file).ok().map(|m| (m.len(), m.modified().ok()));
            if now.is_some() && now == last {
                return;
            }
            assert!(Instant::now() < deadline, "{scenario}: {} never settled", file.display());
            last = now;
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// The server's PID.
    pub fn server_pid(&self) -> u32 {
        meters::child_pid(&self.dir.path().join("server"), "the server")
    }
}

impl RunningAgent {
    /// The agent's `keycard_agent_<name>` gauge or counter, if it answers.
    pub fn metric(&self, name: &str) -> Option<f64> {
        meters::metric(&self.health, &format!("keycard_agent_{name}"))
    }

    /// Waits until the gauge `name` reaches `count` or `limit` passes; returns the time
    /// since the agent was spawned, or `Err` with the last value seen on timeout.
    pub fn wait_for(&self, name: &str, count: usize, limit: Duration) -> Result<Duration, f64> {
        let mut last = 0.0;
        loop {
            if let Some(v) = self.metric(name) {
                last = v;
                if v >= count as f64 {
                    return Ok(self.spawned.elapsed());
                }
            }
            if self.spawned.elapsed() > limit {
                return Err(last);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Like [`RunningAgent::wait_for`], but a timeout is a panic naming `scenario`.
    pub fn must_reach(&self, name: &str, count: usize, limit: Duration, scenario: &str) {
        if let Err(last) = self.wait_for(name, count, limit) {
            panic!("{scenario}: the agent's {name} stayed at {last} of {count} for {limit:?}");
        }
    }

    /// RSS in MiB.
    pub fn rss_mib(&self) -> f64 {
        meters::rss_mib(self.pid)
    }
}

/// `n` entries under the agent: the first `mine` for this process's uid, the others each
/// for a uid of its own (a fleet of workloads the bench does not run), IDs prefixed `tag`.
pub fn entries(n: usize, mine: usize, uid: u32, tag: &str) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| {
            let selector = if i < mine {
                format!("unix:uid:{uid}")
            } else {
                format!("unix:uid:{}", 1_000_000 + i)
            };
            json!({
                "spiffe_id": format!("spiffe://example.org/{tag}/{i}"),
                "parent_id": AGENT_ID,
                "selectors": [selector],
            })
        })
        .collect()
}

fn start_server(dir: &Path, bind: &str, rate: u32) -> Server {
    Server::start_with(&dir.join("server"), bind, Some(&server_config(rate)))
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

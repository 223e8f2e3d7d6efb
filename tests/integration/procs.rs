//! Real `keycard server run` and `keycard agent run` processes for the tests: started with
//! JSON logs, waited for by the log lines that say they listen, stopped with SIGTERM; and
//! [`Group`], for a process that starts processes of its own (the helper and its `--cmd`).

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// The `keycard` binary under test.
pub fn keycard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keycard"))
}

/// Spawns `command` with JSON logs on stderr and waits until every message in `wanted`
/// was logged (30 s at most); returns the child, the fields of each wanted event, and the
/// rest of the log, forwarded to the test's stderr under `name`.
fn spawn_and_wait(
    mut command: Command,
    name: &'static str,
    wanted: &[&str],
) -> (Child, Vec<Value>) {
    let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut found: Vec<Option<Value>> = vec![None; wanted.len()];
    // A total deadline: a process that keeps logging other lines must not hold the test.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while found.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!("{name} did not log {wanted:?} within 60 s");
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().unwrap();
                panic!("{name} exited ({status}) before logging {wanted:?}; its log is above");
            }
        };
        eprintln!("{name}: {line}");
        let Ok(event) = serde_json::from_str::<Value>(&line) else { continue };
        let message = event["fields"]["message"].as_str().unwrap_or_default();
        if let Some(i) = wanted.iter().position(|w| *w == message) {
            found[i] = Some(event["fields"].clone());
        }
    }
    // Keep draining the log (shown when a test fails) so the process never blocks.
    std::thread::spawn(move || {
        while let Ok(line) = rx.recv() {
            eprintln!("{name}: {line}");
        }
    });
    (child, found.into_iter().map(Option::unwrap_or_default).collect())
}

/// Sends SIGTERM and checks the process exits cleanly within 20 s.
fn terminate(child: &mut Child, name: &str) {
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    for _ in 0..200 {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{name} exited with {status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{name} did not stop within 20 s of SIGTERM");
}

/// A process started as the leader of a new process group, so that whatever it starts is
/// in the group too; dropping the guard kills the whole group (SIGKILL) and reaps the
/// leader, so a test that fails half-way leaves nothing running.
pub struct Group {
    child: Child,
}

impl Group {
    /// Spawns `command` in a process group of its own.
    pub fn spawn(command: &mut Command) -> Group {
        Group { child: command.process_group(0).spawn().unwrap() }
    }

    /// The leader.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Sends SIGTERM to the leader and waits (20 s at most) for its exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("PID {pid} did not stop within 20 s of SIGTERM");
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Ok(pgid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) takes two integers; a negative PID names the process group
            // this guard created (it exists while any of its members does).
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        let _ = self.child.wait();
    }
}

/// A running server process; killed when dropped.
pub struct Server {
    child: Child,
    /// The agent API address, `127.0.0.1:port`.
    pub address: String,
    /// The admin socket.
    pub admin_socket: PathBuf,
    /// The server's trust domain.
    pub trust_domain: String,
}

impl Server {
    /// Starts a server with its state in `dir` on a free port.
    pub fn start(dir: &Path) -> Server {
        Self::start_with(dir, "127.0.0.1:0", None)
    }

    /// Starts a server with its state in `dir`, listening on `bind`, with `config` (TOML
    /// text, written to `dir/server.toml`) when given.
    pub fn start_with(dir: &Path, bind: &str, config: Option<&str>) -> Server {
        Self::start_in("example.org", dir, bind, config)
    }

    /// [`Server::start_with`] for the trust domain `trust_domain`.
    pub fn start_in(trust_domain: &str, dir: &Path, bind: &str, config: Option<&str>) -> Server {
        let admin_socket = dir.join("private").join("admin.sock");
        let mut command = keycard();
        command
            .args(["server", "run", "--trust-domain", trust_domain, "--bind-address", bind])
            .args(["--log-format", "json", "--data-dir"])
            .arg(dir);
        if let Some(text) = config {
            let path = dir.join("server.toml");
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(&path, text).unwrap();
            command.arg("--config").arg(path);
        }
        let (child, fields) =
            spawn_and_wait(command, "server", &["agent API listening", "admin API listening"]);
        let address = fields[0]["address"].as_str().unwrap().to_owned();
        Server { child, address, admin_socket, trust_domain: trust_domain.to_owned() }
    }

    /// Runs an admin command with `--output json` and returns its parsed output.
    pub fn admin(&self, args: &[&str]) -> Value {
        let out = self.admin_raw(args);
        assert!(out.status.success(), "keycard {args:?} failed: {out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Runs an admin command with `--output json`, whatever its outcome.
    pub fn admin_raw(&self, args: &[&str]) -> Output {
        keycard()
            .args(args)
            .arg("--admin-socket")
            .arg(&self.admin_socket)
            .args(["--output", "json"])
            .output()
            .unwrap()
    }

    /// Runs an admin command with text output.
    pub fn admin_text(&self, args: &[&str]) -> String {
        let out = keycard().args(args).arg("--admin-socket").arg(&self.admin_socket).output();
        let out = out.unwrap();
        assert!(out.status.success(), "keycard {args:?} failed: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// A join token for the agent ID `spiffe://<trust domain>/<path>`.
    pub fn token(&self, path: &str) -> String {
        let id = format!("spiffe://{}/{path}", self.trust_domain);
        let token = self.admin(&["token", "generate", "--spiffe-id", &id]);
        token["token"].as_str().unwrap().to_owned()
    }

    /// Stops the server with SIGTERM and checks that it exits cleanly.
    pub fn stop(mut self) {
        terminate(&mut self.child, "server");
    }
}

impl Drop for Server {
    /// A test that fails half-way must not leave a server running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running agent process; killed when dropped.
pub struct Agent {
    child: Child,
    /// The Workload API socket.
    pub socket: PathBuf,
    /// The agent admin socket (for `keycard agent explain`).
    pub admin_socket: PathBuf,
    /// The health address, when the agent was started with one.
    pub health: Option<String>,
}

impl Agent {
    /// Starts an agent with its state in `dir/agent` and its Workload API socket at
    /// `dir/public/api.sock`, attesting to `server` with `extra` flags (a join token, a
    /// trust bundle, ...), and waits until the Workload API (and, with `with_health`, the
    /// health endpoints) listen.
    pub fn start(dir: &Path, server: &str, extra: &[&str], with_health: bool) -> Agent {
        Self::start_in("example.org", dir, server, extra, with_health)
    }

    /// [`Agent::start`] for the trust domain `trust_domain`.
    pub fn start_in(
        trust_domain: &str,
        dir: &Path,
        server: &str,
        extra: &[&str],
        with_health: bool,
    ) -> Agent {
        let socket = dir.join("public").join("api.sock");
        let admin_socket = dir.join("agent").join("private").join("admin.sock");
        let mut command = keycard();
        command
            .args(["agent", "run", "--trust-domain", trust_domain, "--server-address", server])
            .args(["--log-format", "json", "--data-dir"])
            .arg(dir.join("agent"))
            .arg("--socket-path")
            .arg(&socket)
            .args(extra);
        let mut wanted = vec!["Workload API listening"];
        if with_health {
            wanted.push("health and metrics endpoints listening");
        }
        let (child, fields) = spawn_and_wait(command, "agent", &wanted);
        let health = fields.get(1).and_then(|f| f["address"].as_str()).map(str::to_owned);
        Agent { child, socket, admin_socket, health }
    }

    /// Stops the agent with SIGTERM and checks that it exits cleanly.
    pub fn stop(mut self) {
        terminate(&mut self.child, "agent");
    }

    /// The agent's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `keycard agent explain --pid PID` over this agent's admin socket.
    pub fn explain(&self, pid: u32) -> Output {
        keycard()
            .args(["agent", "explain", "--pid", &pid.to_string()])
            .arg("--agent-admin-socket")
            .arg(&self.admin_socket)
            .output()
            .unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `/metrics` text of a health endpoint at `address` (agent or server).
pub fn metrics(address: &str) -> String {
    let mut tcp = std::net::TcpStream::connect(address).unwrap();
    write!(tcp, "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).unwrap();
    text
}

/// The value of the sample `name` (with its labels, as printed) in a `/metrics` text;
/// `None` when it was never set.
pub fn metric(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))?;
    line.rsplit(' ').next()?.parse().ok()
}

/// Whether this process runs as root (the owner of its `/proc` entry is its effective uid).
pub fn is_root() -> bool {
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0
}

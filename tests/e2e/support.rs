//! What the end-to-end tests share: the real `keycard` binary, the example binaries, and
//! `keycard dev` as a process on free ports, waited for by the lines it prints.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long anything the daemons do by themselves may take.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The `keycard` binary under test.
pub fn keycard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keycard"))
}

/// Whether the tests run as root (and so may run workloads as `nobody`).
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    format!("127.0.0.1:{port}")
}

/// Where [`Dev::start`] writes the daemons' log (next to the state directory).
pub fn log_path(dir: &Path) -> PathBuf {
    dir.with_extension("log")
}

fn log_file(dir: &Path) -> Stdio {
    match std::fs::OpenOptions::new().create(true).append(true).open(log_path(dir)) {
        Ok(file) => Stdio::from(file),
        Err(_) => Stdio::null(),
    }
}

/// A running `keycard dev`; stopped with SIGINT (Ctrl-C) by [`Dev::stop`], killed on drop.
pub struct Dev {
    child: Child,
    /// What `dev` printed until it was ready.
    pub printed: Vec<String>,
    /// The Workload API socket as `unix:///path`, from the printed export line.
    pub endpoint: String,
    /// The admin socket.
    pub admin_socket: PathBuf,
    /// The agent's admin socket, from the printed export line.
    pub agent_admin_socket: PathBuf,
    /// Where the daemons' log goes.
    pub log: PathBuf,
    /// When the process was started.
    pub started: Instant,
}

impl Dev {
    /// Starts `keycard dev --dir <dir>` on free ports and waits for its "paste next" text.
    pub fn start(dir: &Path) -> Dev {
        let started = Instant::now();
        let mut child = keycard()
            .args(["dev", "--dir"])
            .arg(dir)
            .args(["--server-address", &free_addr(), "--server-health", &free_addr()])
            .args(["--agent-health", &free_addr()])
            .stdout(Stdio::piped())
            .stderr(log_file(dir))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut printed = Vec::new();
        while !printed.iter().any(|l: &String| l.contains("Ctrl-C stops both")) {
            match rx.recv_timeout(PATIENCE) {
                Ok(line) => printed.push(line),
                Err(_) => {
                    let _ = child.kill();
                    panic!("keycard dev did not get ready: {printed:?}");
                }
            }
        }
        let value = |prefix: &str| {
            printed
                .iter()
                .find_map(|l| l.trim().strip_prefix(prefix).map(str::to_owned))
                .unwrap_or_else(|| panic!("no {prefix:?} line in {printed:?}"))
        };
        let endpoint = value("export SPIFFE_ENDPOINT_SOCKET=");
        let admin_socket = PathBuf::from(value("export KEYCARD_ADMIN_SOCKET="));
        let agent_admin_socket = PathBuf::from(value("export KEYCARD_AGENT_ADMIN_SOCKET="));
        let log = log_path(dir);
        Dev { child, printed, endpoint, admin_socket, agent_admin_socket, log, started }
    }

    /// An admin command with `--output json`, as it came out (status, stdout, stderr).
    pub fn admin_output(&self, args: &[&str]) -> Output {
        keycard()
            .args(args)
            .arg("--admin-socket")
            .arg(&self.admin_socket)
            .args(["--output", "json"])
            .output()
            .unwrap()
    }

    /// What the daemons logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An admin command with `--output json`; panics unless it succeeds.
    pub fn admin(&self, args: &[&str]) -> serde_json::Value {
        let out = keycard()
            .args(args)
            .arg("--admin-socket")
            .arg(&self.admin_socket)
            .args(["--output", "json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "keycard {args:?}: {out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `keycard api <args> --socket <endpoint>` as `uid` (None: as this process).
    pub fn api(&self, uid: Option<u32>, args: &[&str]) -> Output {
        let mut command = keycard();
        command.arg("api").args(args).args(["--socket", &self.endpoint]);
        if let Some(uid) = uid {
            use std::os::unix::process::CommandExt as _;
            command.uid(uid).gid(uid);
        }
        command.output().unwrap()
    }

    /// Retries `api` until it succeeds (the agent may not have synced yet).
    pub fn api_until_ok(&self, uid: Option<u32>, args: &[&str]) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let out = self.api(uid, args);
            if out.status.success() {
                return String::from_utf8(out.stdout).unwrap();
            }
            assert!(Instant::now() < deadline, "keycard api {args:?} kept failing: {out:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Ctrl-C, then checks a clean exit within 20 s.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "keycard dev exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "keycard dev did not stop on Ctrl-C");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

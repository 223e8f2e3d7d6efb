//! Real `keycard server run` and `keycard agent run` processes, and workloads calling the
//! agent's Workload API over its Unix socket: this test process (uid entries), a Python
//! grpcio client, the `keycard api` CLI, and the CLI run as another uid.

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use keycard_workload_api::proto::{
    SECURITY_HEADER, SECURITY_HEADER_VALUE, SpiffeWorkloadApiClient, X509svidRequest,
    X509svidResponse,
};
use keycard_workload_api::{TrustDomain, X509Bundle, X509BundleSet, verify_chain};
use rustls_pki_types::{CertificateDer, UnixTime};
use tonic::transport::Channel;
use tonic::{Code, Request, Streaming};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::procs::{Agent, Server, keycard};

/// Short lifetimes so that renewals happen within a test: SVIDs live 20 s.
const SERVER_CONFIG: &str = r#"
trust_domain = "example.org"
ca_ttl = "10m"
default_x509_svid_ttl = "20s"
default_jwt_svid_ttl = "1m"
agent_svid_ttl = "1m"
"#;

/// SVIDs live 6 s, so they rotate about every 3 s (for tests that need several rotations).
pub const FAST_ROTATION: &str = r#"
trust_domain = "example.org"
ca_ttl = "10m"
default_x509_svid_ttl = "6s"
default_jwt_svid_ttl = "1m"
agent_svid_ttl = "1m"
"#;

/// How long the tests wait for anything the agent should do by itself.
pub const PATIENCE: Duration = Duration::from_secs(40);

/// A server and a temp dir whose `public/` directory anyone may enter (so that a client
/// run as `nobody` reaches the socket and is refused by attestation, not by the mode).
pub struct Setup {
    dir: tempfile::TempDir,
    server: Server,
    uid: u32,
    /// The server's X.509 bundle.
    pub bundle: X509Bundle,
    bundle_file: PathBuf,
    /// A join token for the agent `node/1` (entries may name it as parent at once).
    token: String,
}

impl Setup {
    pub fn start(bind: &str) -> Setup {
        Self::start_with(bind, SERVER_CONFIG)
    }

    /// Like [`Setup::start`] with the server configured by `config` (TOML).
    pub fn start_with(bind: &str, config: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let uid = std::fs::metadata(dir.path()).unwrap().uid();
        let server = Server::start_with(&dir.path().join("server"), bind, Some(config));
        let pem = server.admin_text(&["bundle", "show", "--format", "pem"]);
        let bundle = X509Bundle::parse_pem(TrustDomain::new("example.org").unwrap(), &pem).unwrap();
        let bundle_file = dir.path().join("bundle.pem");
        std::fs::write(&bundle_file, pem).unwrap();
        let token = server.token("node/1");
        Setup { dir, server, uid, bundle, bundle_file, token }
    }

    /// The server process (for admin commands).
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// An entry for workloads of this test's uid under the agent `node/1`.
    pub fn entry(&self, name: &str) -> String {
        self.entry_selecting(name, &[format!("unix:uid:{}", self.uid)])
    }

    /// An entry `spiffe://example.org/workload/<name>` under the agent `node/1` for
    /// workloads with all of `selectors` (`unix:uid:1000`, ...).
    pub fn entry_selecting(&self, name: &str, selectors: &[String]) -> String {
        let id = format!("spiffe://example.org/workload/{name}");
        let mut args = vec!["entry", "create", "--spiffe-id", &id];
        args.extend(["--parent-id", "spiffe://example.org/node/1"]);
        for selector in selectors {
            args.extend(["--selector", selector.as_str()]);
        }
        self.server.admin(&args)["id"].as_str().unwrap().to_owned()
    }

    /// Starts an agent that attests with the join token for `node/1` and syncs often.
    pub fn agent(&self, extra_config: &str) -> Agent {
        self.agent_with(&["--join-token", &self.token], extra_config)
    }

    fn agent_with(&self, flags: &[&str], extra_config: &str) -> Agent {
        let config = self.dir.path().join("agent.toml");
        std::fs::write(&config, format!("sync_interval = \"300ms\"\n{extra_config}")).unwrap();
        let mut args = vec!["--config", config.to_str().unwrap()];
        args.extend(["--trust-bundle", self.bundle_file.to_str().unwrap()]);
        args.extend(flags);
        let with_health = extra_config.contains("health_address");
        Agent::start(self.dir.path(), &self.server.address, &args, with_health)
    }
}

async fn connect(socket: &Path) -> SpiffeWorkloadApiClient<Channel> {
    SpiffeWorkloadApiClient::new(keycard_workload_api::client::unix_channel(socket).await.unwrap())
}

fn with_header<T>(msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(SECURITY_HEADER, SECURITY_HEADER_VALUE.parse().unwrap());
    req
}

/// Opens FetchX509SVID, retrying while the agent has nothing for us yet.
pub async fn open_stream(socket: &Path) -> Streaming<X509svidResponse> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut client = connect(socket).await;
        match client.fetch_x509svid(with_header(X509svidRequest {})).await {
            Ok(stream) => return stream.into_inner(),
            Err(s) if s.code() == Code::PermissionDenied && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("FetchX509SVID: {s:?}"),
        }
    }
}

/// One SVID of a response: its SPIFFE ID (checked against the bundle), serial, expiry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    id: String,
    serial: String,
    not_after: SystemTime,
}

fn seen(response: &X509svidResponse, bundle: &X509Bundle) -> Vec<Seen> {
    let bundles: X509BundleSet = [bundle.clone()].into_iter().collect();
    let mut out: Vec<Seen> = response
        .svids
        .iter()
        .map(|svid| {
            let chain = der_chain(&svid.x509_svid);
            let id = verify_chain(&chain, &bundles, UnixTime::now()).unwrap().to_string();
            assert_eq!(id, svid.spiffe_id);
            let (_, cert) = X509Certificate::from_der(&chain[0]).unwrap();
            let secs = cert.validity().not_after.timestamp() as u64;
            Seen {
                id,
                serial: hex::encode(cert.raw_serial()),
                not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
            }
        })
        .collect();
    out.sort();
    out
}

/// Splits concatenated DER certificates.
fn der_chain(mut der: &[u8]) -> Vec<CertificateDer<'static>> {
    let mut chain = Vec::new();
    while !der.is_empty() {
        let (rest, _) = X509Certificate::from_der(der).unwrap();
        chain.push(CertificateDer::from(der[..der.len() - rest.len()].to_vec()));
        der = rest;
    }
    chain
}

/// Reads the stream until `done` holds for a message, within [`PATIENCE`].
async fn next_until(
    stream: &mut Streaming<X509svidResponse>,
    bundle: &X509Bundle,
    done: impl Fn(&[Seen]) -> bool,
) -> Vec<Seen> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, stream.message())
            .await
            .expect("the stream did not deliver in time")
            .expect("stream error")
            .expect("stream ended");
        let svids = seen(&msg, bundle);
        if done(&svids) {
            return svids;
        }
    }
}

fn ids(svids: &[Seen]) -> BTreeSet<&str> {
    svids.iter().map(|s| s.id.as_str()).collect()
}

/// `GET path` on the health address; returns the status line and the body.
fn http_get(address: &str, path: &str) -> (String, String) {
    let mut tcp = std::net::TcpStream::connect(address).unwrap();
    write!(tcp, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).unwrap();
    let status = text.lines().next().unwrap_or_default().to_owned();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

#[test]
fn workloads_get_renewed_svids_and_lose_deleted_ones_from_a_real_agent() {
    let setup = Setup::start("127.0.0.1:0");
    let a = setup.entry("a");
    let b = setup.entry("b");
    let agent = setup.agent("health_address = \"127.0.0.1:0\"\n");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut stream = open_stream(&agent.socket).await;
        let first = next_until(&mut stream, &setup.bundle, |s| s.len() == 2).await;
        assert_eq!(
            ids(&first),
            BTreeSet::from(["spiffe://example.org/workload/a", "spiffe://example.org/workload/b"])
        );

        // `keycard agent explain` for this process: both entries match, nothing is missing.
        let out = agent.explain(std::process::id());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        assert!(text.contains("MATCH     spiffe://example.org/workload/a"), "{text}");
        assert!(text.contains(&format!("unix:uid:{}", setup.uid)), "{text}");

        // The CLI, as this user, gets both; as `nobody`, PermissionDenied with advice.
        let socket = format!("unix://{}", agent.socket.display());
        let out = keycard().args(["api", "fetch", "x509", "--socket", &socket]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        assert!(text.contains("spiffe://example.org/workload/b"), "{text}");
        if setup.uid == 0 {
            let out = keycard()
                .args(["api", "fetch", "x509", "--socket", &socket])
                .uid(65534)
                .gid(65534)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "nobody got an SVID: {out:?}");
            assert!(err.contains("no identity for this process (uid 65534"), "{err}");
        } else {
            println!("note: not root, cannot run the fetch as another uid; that check is skipped");
        }

        // A JWT-SVID minted by the server through the agent, validated by the agent.
        let out = keycard()
            .args([
                "api",
                "fetch",
                "jwt",
                "--audience",
                "db",
                "--output",
                "json",
                "--socket",
                &socket,
            ])
            .arg("--spiffe-id")
            .arg("spiffe://example.org/workload/a")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(doc["svids"][0]["spiffe_id"], "spiffe://example.org/workload/a");
        let token = doc["svids"][0]["token"].as_str().unwrap().to_owned();
        let validate = |audience: &str| {
            keycard()
                .args(["api", "validate", "jwt", "--audience", audience, "--svid", &token])
                .args(["--socket", &socket])
                .output()
                .unwrap()
        };
        let out = validate("db");
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("spiffe://example.org/workload/a"));
        let out = validate("not-db");
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("not valid"), "{out:?}");

        // A renewed SVID arrives on the open stream before the old one expires.
        let renewed = next_until(&mut stream, &setup.bundle, |s| {
            s.iter().any(|n| first.iter().any(|o| o.id == n.id && o.serial != n.serial))
        })
        .await;
        let old_expiry = first.iter().map(|s| s.not_after).min().unwrap();
        assert!(SystemTime::now() < old_expiry, "renewal came after the old SVID expired");
        assert_eq!(renewed.len(), 2);

        // Deleting an entry redacts its SVID from the stream.
        setup.server.admin(&["entry", "delete", "--id", &b]);
        let after = next_until(&mut stream, &setup.bundle, |s| s.len() == 1).await;
        assert_eq!(ids(&after), BTreeSet::from(["spiffe://example.org/workload/a"]));

        // Ready, with the cache in the metrics.
        let health = agent.health.clone().unwrap();
        let (status, body) = http_get(&health, "/ready");
        assert!(status.contains("200"), "{status} {body}");
        // The gauges are set after each sync round: poll until the deletion shows.
        let deadline = Instant::now() + PATIENCE;
        let metrics = loop {
            let (_, metrics) = http_get(&health, "/metrics");
            if metrics.contains("keycard_agent_cache_svids 1") || Instant::now() > deadline {
                break metrics;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        for needle in [
            "keycard_agent_cache_svids 1",
            "keycard_agent_cache_entries 1",
            "keycard_agent_svids_total{outcome=\"renewed\"}",
            "keycard_agent_agent_svid_expiry_seconds",
            "keycard_agent_workload_attestations_total{result=\"ok\"}",
        ] {
            assert!(metrics.contains(needle), "missing {needle} in {metrics}");
        }

        // Without the security header: InvalidArgument.
        let mut client = connect(&agent.socket).await;
        let err = client.fetch_x509svid(Request::new(X509svidRequest {})).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    });
    let _ = a;

    // Python's grpcio, which sends the socket path as :authority, gets an SVID.
    let out = std::process::Command::new(crate::python::grpcio_python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/fetch_x509svid.py"))
        .arg(&agent.socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("with_header ok "), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("without_header error INVALID_ARGUMENT"), "{text}");

    agent.stop();
}

#[test]
fn the_agent_serves_its_cache_while_the_server_is_down_and_renews_after() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let bind = format!("127.0.0.1:{port}");
    let setup = Setup::start(&bind);
    setup.entry("a");
    let agent = setup.agent("disk_cache = true\n");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Setup { dir, server, bundle, bundle_file, token, .. } = setup;
    let first = runtime.block_on(async {
        let mut stream = open_stream(&agent.socket).await;
        next_until(&mut stream, &bundle, |s| s.len() == 1).await
    });
    server.stop();

    // Server down: a new workload connection still gets the cached, valid SVID.
    runtime.block_on(async {
        let mut stream = open_stream(&agent.socket).await;
        let now = next_until(&mut stream, &bundle, |s| s.len() == 1).await;
        assert_eq!(now[0].id, first[0].id);
        assert!(now[0].not_after > SystemTime::now());
    });

    // The agent restarts while the server is still down: its stored SVID and the on-disk
    // workload cache (checked on load) let it serve the same SVID at once.
    agent.stop();
    let config = dir.path().join("agent.toml");
    let agent = Agent::start(
        dir.path(),
        &bind,
        &[
            "--config",
            config.to_str().unwrap(),
            "--trust-bundle",
            bundle_file.to_str().unwrap(),
            "--join-token",
            &token,
        ],
        false,
    );
    runtime.block_on(async {
        let mut stream = open_stream(&agent.socket).await;
        let restored = next_until(&mut stream, &bundle, |s| s.len() == 1).await;
        assert_eq!(restored[0].serial, first[0].serial, "served from the disk cache");
    });

    // The server returns on the same address: the agent renews by itself.
    let server = Server::start_with(&dir.path().join("server"), &bind, Some(SERVER_CONFIG));
    runtime.block_on(async {
        let mut stream = open_stream(&agent.socket).await;
        let renewed =
            next_until(&mut stream, &bundle, |s| s.len() == 1 && s[0].serial != first[0].serial)
                .await;
        assert_eq!(renewed[0].id, first[0].id);
    });
    agent.stop();
    server.stop();
}

#[test]
fn an_evicted_x509pop_agent_attests_again_by_itself_and_keeps_serving() {
    let nodes = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs-dev/nodes");
    let config = format!("{SERVER_CONFIG}x509pop_ca_bundle = {:?}\n", nodes.join("ca.pem"));
    let dir = tempfile::tempdir().unwrap();
    let uid = std::fs::metadata(dir.path()).unwrap().uid();
    let server = Server::start_with(&dir.path().join("server"), "127.0.0.1:0", Some(&config));
    let pem = server.admin_text(&["bundle", "show", "--format", "pem"]);
    let bundle = X509Bundle::parse_pem(TrustDomain::new("example.org").unwrap(), &pem).unwrap();
    let agent_config = dir.path().join("agent.toml");
    std::fs::write(&agent_config, "sync_interval = \"300ms\"\n").unwrap();
    let agent = Agent::start(
        dir.path(),
        &server.address,
        &[
            "--config",
            agent_config.to_str().unwrap(),
            // No bundle at all: trust the first server (development only; logged).
            "--insecure-bootstrap",
            "--x509pop-cert",
            nodes.join("node1.pem").to_str().unwrap(),
            "--x509pop-key",
            nodes.join("node1.key.pem").to_str().unwrap(),
        ],
        false,
    );
    let agents = server.admin(&["agent", "list"]);
    let agent_id = agents["agents"][0]["id"].as_str().unwrap().to_owned();
    assert!(agent_id.starts_with("spiffe://example.org/keycard/agent/x509pop/"), "{agent_id}");
    server.admin(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/workload/pop",
        "--parent-id",
        &agent_id,
        "--selector",
        &format!("unix:uid:{uid}"),
    ]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut stream = open_stream(&agent.socket).await;
        let first = next_until(&mut stream, &bundle, |s| s.len() == 1).await;

        // Evicted: the server no longer knows the agent's SVID. The agent attests again
        // with its node certificate and goes on renewing, without a restart.
        server.admin(&["agent", "evict", "--id", &agent_id]);
        assert_eq!(server.admin(&["agent", "list"])["agents"].as_array().map(Vec::len), Some(0));
        let renewed =
            next_until(&mut stream, &bundle, |s| s.len() == 1 && s[0].serial != first[0].serial)
                .await;
        assert_eq!(renewed[0].id, "spiffe://example.org/workload/pop");
        let agents = server.admin(&["agent", "list"]);
        assert_eq!(agents["agents"][0]["id"], agent_id.as_str(), "the agent is back: {agents}");
    });
    agent.stop();
    server.stop();
}

#[test]
fn after_a_full_ca_rotation_the_agent_trusts_the_restarted_server_by_the_new_authority() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let bind = format!("127.0.0.1:{port}");
    let setup = Setup::start(&bind);
    setup.entry("a");
    let agent = setup.agent("");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let first = runtime.block_on(async {
        let mut stream = open_stream(&agent.socket).await;
        next_until(&mut stream, &setup.bundle, |s| s.len() == 1).await
    });
    // Rotate the X.509 authority all the way: the old one leaves the bundle.
    let authorities = setup.server.admin(&["authority", "x509", "show"]);
    let old = crate::authority::active_authority_id(&authorities);
    let new =
        setup.server.admin(&["authority", "x509", "prepare"])["id"].as_str().unwrap().to_owned();
    setup.server.admin(&["authority", "x509", "activate", "--id", &new]);
    let agent_id = "spiffe://example.org/node/1";
    let serial_of_agent =
        || setup.server.admin(&["agent", "show", "--id", agent_id])["svid_serial"].clone();
    let before = serial_of_agent();
    setup.server.admin(&["authority", "x509", "taint", "--id", &old]);
    let pem = setup.server.admin_text(&["bundle", "show", "--format", "pem"]);
    let both = X509Bundle::parse_pem(TrustDomain::new("example.org").unwrap(), &pem).unwrap();
    // The taint makes the agent renew the workload SVID and its own onto the new authority.
    let renewed = runtime.block_on(async {
        let mut stream = open_stream(&agent.socket).await;
        next_until(&mut stream, &both, |s| s.len() == 1 && s[0].serial != first[0].serial).await
    });
    let deadline = Instant::now() + PATIENCE;
    while serial_of_agent() == before {
        assert!(Instant::now() < deadline, "the agent did not renew its own SVID after the taint");
        std::thread::sleep(Duration::from_millis(100));
    }
    setup.server.admin(&["authority", "x509", "revoke", "--id", &old]);
    let pem = setup.server.admin_text(&["bundle", "show", "--format", "pem"]);
    let rotated = X509Bundle::parse_pem(TrustDomain::new("example.org").unwrap(), &pem).unwrap();
    // A restarted server presents an SVID from the new authority only; the agent's
    // connection must trust it by the bundle it synced, not the one it started with.
    let Setup { dir, server, .. } = setup;
    server.stop();
    let server = Server::start_with(&dir.path().join("server"), &bind, Some(SERVER_CONFIG));
    runtime.block_on(async {
        let mut stream = open_stream(&agent.socket).await;
        let again =
            next_until(&mut stream, &rotated, |s| s.len() == 1 && s[0].serial != renewed[0].serial)
                .await;
        assert_eq!(again[0].id, "spiffe://example.org/workload/a");
    });
    agent.stop();
    server.stop();
}

//! Secrets hygiene: a whole run of a server and an agent logging at TRACE (every crate:
//! keycard, tonic, h2, hyper, rustls) through join-token attestation, entry creation,
//! X.509 and JWT SVID fetches and validations, and a CA rotation; then every log line and
//! every CLI output that has no business holding a secret is searched for each secret the
//! run produced, in every spelling a log could give it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use keycard_workload_api::WorkloadApiClient;
use keycard_workload_api::proto::X509svidResponse;

use crate::agent::{PATIENCE, open_stream};
use crate::procs::{Group, keycard};

/// A daemon started as its own process group, its stderr (JSON logs) going to a file.
struct Daemon {
    group: Group,
    log: PathBuf,
}

impl Daemon {
    /// Starts `keycard <args>` at TRACE and waits until it logged every message in
    /// `wanted`; returns it and the fields of the first wanted event.
    fn start(args: &[&str], log: PathBuf, wanted: &[&str]) -> (Daemon, serde_json::Value) {
        let file = std::fs::File::create(&log).unwrap();
        let mut command = keycard();
        command.args(args).args(["--log-format", "json", "--log-level", "trace"]);
        command.env_remove("RUST_LOG").stdout(Stdio::null()).stderr(file);
        let daemon = Daemon { group: Group::spawn(&mut command), log };
        let deadline = Instant::now() + PATIENCE;
        loop {
            let events = daemon.events();
            let found: Vec<_> = wanted
                .iter()
                .map(|w| events.iter().find(|e| e["fields"]["message"] == *w))
                .collect();
            if found.iter().all(Option::is_some) {
                let first = found[0].unwrap()["fields"].clone();
                return (daemon, first);
            }
            assert!(Instant::now() < deadline, "{args:?} did not log {wanted:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The log's events so far.
    fn events(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// SIGTERM, and a clean exit (so the log is complete).
    fn stop(mut self) {
        assert!(self.group.terminate().success(), "{} did not exit cleanly", self.log.display());
    }
}

/// Runs `keycard <args>` and returns its stdout; it must succeed.
fn run(args: &[&str]) -> String {
    let out = keycard().args(args).env_remove("RUST_LOG").output().unwrap();
    assert!(out.status.success(), "keycard {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// `args` followed by `more`.
fn with<'a>(more: &[&'a str], args: &[&'a str]) -> Vec<&'a str> {
    [args, more].concat()
}

/// Every spelling of `secret` (bytes) worth looking for: hex, base64 (standard and URL),
/// and, for a PKCS#8 EC key, the same of its private scalar and Rust's `Debug` of a run
/// of its bytes (as `[u8]` and `Vec<u8>` print).
fn spellings(secret: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut add = |bytes: &[u8]| {
        out.extend([hex::encode(bytes), hex::encode_upper(bytes)]);
        out.extend([STANDARD.encode(bytes), URL_SAFE_NO_PAD.encode(bytes)]);
        let run: Vec<String> = bytes.iter().take(12).map(u8::to_string).collect();
        out.push(run.join(", "));
    };
    add(secret);
    // ECPrivateKey: INTEGER 1, then OCTET STRING of the scalar (32 or 48 bytes).
    for len in [0x20u8, 0x30] {
        let marker = [0x02, 0x01, 0x01, 0x04, len];
        if let Some(at) = secret.windows(5).position(|w| w == marker) {
            let start = at + 5;
            if let Some(scalar) = secret.get(start..start + usize::from(len)) {
                add(scalar);
            }
        }
    }
    out
}

/// Every JWT in `text`: `eyJ` + base64url + `.eyJ`.
fn jwts(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("eyJ") {
        let tail = &rest[at..];
        let len = tail[3..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'));
        let end = 3 + len.unwrap_or(tail.len() - 3);
        if end > 3 && tail[end..].starts_with(".eyJ") {
            found.push(tail[..end + 4].to_owned());
        }
        rest = &tail[3..];
    }
    found
}

/// The private keys and other secrets stored under `dir` (PEM "PRIVATE KEY" blocks, and
/// the agent's cache key).
fn stored_secrets(dir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if path.file_name().is_some_and(|n| n == "workload_cache.key") {
            out.push(std::fs::read(&path).unwrap());
        } else if let Ok(text) = std::fs::read_to_string(&path)
            && let Ok(blocks) = pem::parse_many(&text)
        {
            let keys = blocks.into_iter().filter(|b| b.tag().ends_with("PRIVATE KEY"));
            out.extend(keys.map(|b| b.contents().to_vec()));
        }
    }
    out
}

/// Reads the stream until an SVID's serial differs from every one in `seen`.
async fn next_keys(
    stream: &mut tonic::Streaming<X509svidResponse>,
    seen: &[Vec<u8>],
) -> Vec<Vec<u8>> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let msg = tokio::time::timeout_at(deadline, stream.message()).await;
        let msg = msg.expect("no renewed SVID within PATIENCE").unwrap().unwrap();
        let keys: Vec<Vec<u8>> = msg.svids.iter().map(|s| s.x509_svid_key.clone()).collect();
        if keys.iter().all(|k| !seen.contains(k)) {
            return keys;
        }
    }
}

/// The secrets a run produced, and the outputs that must not hold them.
#[derive(Default)]
struct Seen {
    /// Workload keys (PKCS#8 DER) from FetchX509SVID.
    keys: Vec<Vec<u8>>,
    /// JWT-SVIDs from FetchJWTSVID.
    tokens: Vec<String>,
    /// CLI outputs that must hold no secret, by command.
    outputs: Vec<(String, String)>,
    /// Texts that hold a secret by design: the search must find it in each.
    controls: Vec<(String, String)>,
}

impl Seen {
    /// Runs `keycard <args>`, keeping its output for the search.
    fn cli(&mut self, args: &[&str]) -> String {
        let out = run(args);
        self.outputs.push((args.join(" "), out.clone()));
        out
    }
}

#[test]
fn no_secret_reaches_a_trace_log_or_a_cli_output() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let (server_dir, agent_dir, socket) = (path("server"), path("agent"), path("public/api.sock"));
    let mut args = vec!["server", "run", "--trust-domain", "example.org"];
    args.extend(["--bind-address", "127.0.0.1:0", "--data-dir", &server_dir]);
    let wanted = ["agent API listening", "admin API listening"];
    let (server, fields) = Daemon::start(&args, dir.path().join("server.log"), &wanted);
    let address = fields["address"].as_str().unwrap().to_owned();
    let admin_socket = path("server/private/admin.sock");
    let on_admin = ["--admin-socket", admin_socket.as_str()];
    let mut seen = Seen::default();

    // Join token (its own output holds it, by design: not searched), entries, bundle.
    let generated = run(&with(
        &on_admin,
        &["token", "generate", "--spiffe-id", "spiffe://example.org/node/1", "--output", "json"],
    ));
    seen.controls.push(("`token generate`".into(), generated.clone()));
    let generated: serde_json::Value = serde_json::from_str(&generated).unwrap();
    let join_token = generated["token"].as_str().unwrap().to_owned();
    // SAFETY: getuid(2) cannot fail and touches no memory.
    let uid = format!("unix:uid:{}", unsafe { libc::getuid() });
    let parent = ["--parent-id", "spiffe://example.org/node/1", "--selector", &uid];
    for (name, format) in [("a", "text"), ("b", "json")] {
        let id = format!("spiffe://example.org/w/{name}");
        let create = ["entry", "create", "--spiffe-id", &id, "--output", format];
        seen.cli(&with(&on_admin, &[&create[..], &parent].concat()));
    }
    let pem = seen.cli(&with(&on_admin, &["bundle", "show", "--format", "pem"]));
    std::fs::write(path("bundle.pem"), pem).unwrap();
    std::fs::write(path("agent.toml"), "sync_interval = \"300ms\"\n").unwrap();
    let (config, bundle) = (path("agent.toml"), path("bundle.pem"));
    let mut args =
        vec!["agent", "run", "--trust-domain", "example.org", "--server-address", &address];
    args.extend(["--data-dir", &agent_dir, "--socket-path", &socket, "--config", &config]);
    args.extend(["--trust-bundle", &bundle, "--join-token", &join_token]);
    let (agent, _) =
        Daemon::start(&args, dir.path().join("agent.log"), &["Workload API listening"]);

    // A workload: X.509-SVIDs and bundles, JWT-SVIDs validated by the agent.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut stream = runtime.block_on(async {
        let mut stream = open_stream(Path::new(&socket)).await;
        seen.keys = next_keys(&mut stream, &[]).await;
        let mut client = WorkloadApiClient::connect_path(Path::new(&socket)).await.unwrap();
        for audience in [&["db"][..], &["db", "cache"]] {
            let audience: Vec<String> = audience.iter().map(|a| a.to_string()).collect();
            for svid in client.fetch_jwt_svids(&audience, None).await.unwrap() {
                client.validate_jwt_svid("db", &svid.token).await.unwrap();
                seen.tokens.push(svid.token);
            }
        }
        client.fetch_jwt_bundles().await.unwrap();
        client.fetch_x509_bundles().await.unwrap();
        stream
    });
    let on_api = ["--socket", socket.as_str()];
    let files = path("files");
    seen.cli(&with(&on_api, &["api", "fetch", "x509"]));
    seen.cli(&with(&on_api, &["api", "fetch", "x509", "--output", "json"]));
    seen.cli(&with(&on_api, &["api", "fetch", "x509", "--write", &files]));
    seen.cli(&with(&on_api, &["api", "fetch", "bundles", "--output", "json"]));
    seen.cli(&with(&on_api, &["api", "watch", "--max-updates", "1"]));
    let token = seen.tokens[0].clone();
    let jwt = run(&with(&on_api, &["api", "fetch", "jwt", "--audience", "db"]));
    seen.controls.push(("`api fetch jwt`".into(), jwt));
    let key_file = std::fs::read_to_string(dir.path().join("files/svid_key.pem")).unwrap();
    seen.controls.push(("svid_key.pem".into(), key_file));
    seen.cli(&with(&on_api, &["api", "validate", "jwt", "--audience", "db", "--svid", &token]));
    seen.cli(&with(&on_admin, &["agent", "list", "--output", "json"]));
    seen.cli(&with(&on_admin, &["entry", "show", "--output", "json"]));

    // A rotation of both authorities: prepared, activated once the agent holds the new
    // keys, the old ones tainted, so the SVIDs (and their keys) are renewed at once and
    // new tokens come from the new JWT key.
    let show = |kind| run(&with(&on_admin, &["authority", kind, "show", "--output", "json"]));
    let old = ["x509", "jwt"]
        .map(|k| crate::authority::active_authority_id(&serde_json::from_str(&show(k)).unwrap()));
    let new = ["x509", "jwt"].map(|kind| {
        let prepared =
            seen.cli(&with(&on_admin, &["authority", kind, "prepare", "--output", "json"]));
        let prepared: serde_json::Value = serde_json::from_str(&prepared).unwrap();
        prepared["id"].as_str().unwrap().to_owned()
    });
    runtime.block_on(async {
        let mut client = WorkloadApiClient::connect_path(Path::new(&socket)).await.unwrap();
        let td = keycard_workload_api::TrustDomain::new("example.org").unwrap();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let x509 = client.fetch_x509_bundles().await.unwrap();
            let jwt = client.fetch_jwt_bundles().await.unwrap();
            let x509_ready = x509.get(&td).is_some_and(|b| b.len() == 2);
            let jwt_ready = jwt.get(&td).is_some_and(|b| b.authority(&new[1]).is_some());
            if x509_ready && jwt_ready {
                break;
            }
            assert!(Instant::now() < deadline, "the agent did not get the new keys");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    for (i, kind) in ["x509", "jwt"].into_iter().enumerate() {
        seen.cli(&with(&on_admin, &["authority", kind, "activate", "--id", &new[i]]));
        seen.cli(&with(&on_admin, &["authority", kind, "taint", "--id", &old[i]]));
        seen.cli(&with(&on_admin, &["authority", kind, "show"]));
    }
    runtime.block_on(async {
        let renewed = next_keys(&mut stream, &seen.keys).await;
        seen.keys.extend(renewed);
        let mut client = WorkloadApiClient::connect_path(Path::new(&socket)).await.unwrap();
        for svid in client.fetch_jwt_svids(&["after".to_owned()], None).await.unwrap() {
            client.validate_jwt_svid("after", &svid.token).await.unwrap();
            seen.tokens.push(svid.token);
        }
    });
    seen.cli(&with(&on_admin, &["bundle", "show", "--format", "spiffe"]));
    drop(stream);
    agent.stop();
    server.stop();
    check(&dir, &seen, &join_token, &[&server_dir, &agent_dir]);
}

/// Searches the logs and the outputs of `seen` for every secret of the run.
fn check(dir: &tempfile::TempDir, seen: &Seen, join_token: &str, data_dirs: &[&str]) {
    let mut secrets: Vec<Vec<u8>> = seen.keys.clone();
    for data in data_dirs {
        secrets.extend(stored_secrets(Path::new(data)));
    }
    let mut needles: Vec<(String, String)> = Vec::new();
    for (i, secret) in secrets.iter().enumerate() {
        needles.extend(spellings(secret).into_iter().map(|s| (format!("secret {i}"), s)));
    }
    needles.push(("the join token".into(), join_token.to_owned()));
    for (i, token) in seen.tokens.iter().enumerate() {
        needles.push((format!("JWT {i}"), token.clone()));
        let signature = token.rsplit('.').next().unwrap_or_default();
        needles.push((format!("JWT {i}'s signature"), signature.to_owned()));
    }
    needles.push(("a PEM private key".into(), "PRIVATE KEY".into()));
    let search = |source: &str, text: &str| -> Vec<String> {
        let mut hits: Vec<String> = needles
            .iter()
            .filter(|(_, needle)| text.contains(needle.as_str()))
            .map(|(what, _)| format!("{what} in {source}"))
            .collect();
        hits.extend(jwts(text).into_iter().map(|j| format!("a JWT ({j}) in {source}")));
        hits
    };
    // The search finds each spelling where a secret is by design, so 0 hits below means
    // none was there: a key printed by `Debug`, as hex, as base64; its PEM file; the join
    // token's own output; a fetched JWT.
    let key = &seen.keys[0];
    assert_eq!(spellings(key).len(), 10, "the EC scalar of a workload key was not found");
    let mut controls = seen.controls.clone();
    controls.push(("a key's Debug".into(), format!("{key:?}")));
    controls.push(("a key's hex".into(), hex::encode(key)));
    controls.push(("a key's base64".into(), STANDARD.encode(key)));
    for (source, text) in &controls {
        assert!(!search(source, text).is_empty(), "the search misses the secret in {source}");
    }
    let mut texts: Vec<(String, String)> = ["server.log", "agent.log"]
        .iter()
        .map(|n| (n.to_string(), std::fs::read_to_string(dir.path().join(n)).unwrap()))
        .collect();
    texts.extend(seen.outputs.iter().map(|(c, o)| (format!("`keycard {c}`"), o.clone())));
    let hits: Vec<String> = texts.iter().flat_map(|(source, text)| search(source, text)).collect();
    let lines: usize = texts[..2].iter().map(|(_, t)| t.lines().count()).sum();
    // The run must have logged at TRACE (keycard itself has DEBUG lines at most, so the
    // TRACE lines come from tonic, h2, hyper, rustls).
    for (source, text) in &texts[..2] {
        let trace = text.lines().filter(|l| l.contains("\"level\":\"TRACE\"")).count();
        let h2 = text
            .lines()
            .any(|l| l.contains("\"level\":\"TRACE\"") && l.contains("\"target\":\"h2"));
        assert!(trace > 100 && h2, "{source}: {trace} TRACE lines, h2 among them: {h2}");
    }
    assert!(hits.is_empty(), "{} leaks: {hits:#?}", hits.len());
    println!(
        "{lines} log lines at TRACE and {} CLI outputs searched for {} secrets ({} keys, {} JWTs, \
         the join token) in {} spellings: 0 hits",
        texts.len() - 2,
        secrets.len() + seen.tokens.len() + 1,
        secrets.len(),
        seen.tokens.len(),
        needles.len(),
    );
}

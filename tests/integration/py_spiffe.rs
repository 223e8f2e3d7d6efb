//! py-spiffe 0.3.2, the Python SPIFFE library, against a real keycard server and agent
//! (issue 15, defect 1). Python's `cryptography` parses certificates strictly: with the
//! BasicConstraints `cA FALSE` that keycard used to write out, every `fetch_x509_svid()`
//! failed with `ParseError { kind: EncodedDefault, location: ["BasicConstraints::ca"] }`.
//! py-spiffe talks gRPC through grpcio, which sends the socket path as `:authority`: this
//! also exercises the agent's h2fix layer with a real SPIFFE library.
//!
//! The interpreter, with pinned grpcio, py-spiffe and cryptography, comes from
//! [`crate::python::grpcio_python`]; the script is tests/py/py_spiffe_fetch.py.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::agent::{Setup, open_stream};

/// How long a Python script may run before the test kills it and fails.
const PYTHON_DEADLINE: Duration = Duration::from_secs(120);

/// Runs the pinned Python with `args`, killed if it outlives [`PYTHON_DEADLINE`].
async fn python(args: &[&str]) -> Output {
    let python = tokio::task::spawn_blocking(crate::python::grpcio_python).await.unwrap();
    let mut command = tokio::process::Command::new(python);
    command.args(args).kill_on_drop(true);
    match tokio::time::timeout(PYTHON_DEADLINE, command.output()).await {
        Ok(output) => output.unwrap(),
        Err(_) => panic!("python {args:?} ran longer than {PYTHON_DEADLINE:?}; killed"),
    }
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py").join(name)
}

/// The `key value` lines of the script's output.
fn facts(output: &Output) -> BTreeMap<String, String> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "py-spiffe failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .map(|line| {
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            (key.to_owned(), value.to_owned())
        })
        .collect()
}

#[test]
fn py_spiffe_fetches_svids_bundles_and_jwts_from_our_agent() {
    py_spiffe_against_an_entry(false);
}

/// A JWT-SVID bound to the caller's X.509-SVID (`--jwt-svid-binding x509`, issue 21) keeps
/// the standard claims: py-spiffe validates its signature and audience unchanged.
#[test]
fn py_spiffe_validates_a_bound_jwt_svid_unchanged() {
    py_spiffe_against_an_entry(true);
}

fn py_spiffe_against_an_entry(bound: bool) {
    let setup = Setup::start("127.0.0.1:0");
    let entry = setup.entry("py");
    if bound {
        setup.server().admin(&["entry", "update", "--id", &entry, "--jwt-svid-binding", "x509"]);
    }
    let agent = setup.agent("");
    let endpoint = format!("unix://{}", agent.socket.display());
    assert!(endpoint.starts_with("unix:///"), "{endpoint}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let output = runtime.block_on(async {
        // Wait until the agent holds the SVID (one-shot py-spiffe calls do not retry
        // PermissionDenied).
        let mut ours = open_stream(&agent.socket).await;
        ours.message().await.unwrap().unwrap();
        python(&[script("py_spiffe_fetch.py").to_str().unwrap(), &endpoint]).await
    });
    let facts = facts(&output);
    let get = |key: &str| facts.get(key).map(String::as_str).unwrap_or("<missing>");
    let id = "spiffe://example.org/workload/py";
    let bundle: Vec<String> = {
        let mut ders: Vec<String> = setup.bundle.authorities().iter().map(hex::encode).collect();
        ders.sort();
        ders
    };
    for prefix in ["client_svid", "source_svid"] {
        assert_eq!(get(&format!("{prefix}_id")), id, "{facts:#?}");
        let leaf = get(&format!("{prefix}_leaf_spki"));
        assert_eq!(leaf, get(&format!("{prefix}_key_spki")), "{prefix}: key does not match");
        assert!(leaf.len() > 100, "{prefix}: {leaf}");
        assert_eq!(get(&format!("{prefix}_basic_constraints")), "ca=False critical=True");
        assert!(get(&format!("{prefix}_chain_len")).parse::<usize>().unwrap() >= 1);
    }
    assert_eq!(get("client_bundle"), bundle.join(","));
    assert_eq!(get("source_bundle"), bundle.join(","));
    assert_eq!(get("client_jwt_id"), id);
    assert_eq!(get("client_jwt_audience"), "db");
    assert_eq!(get("client_jwt_validated"), id);
    assert!(get("client_jwt_wrong_audience").starts_with("refused"), "{facts:#?}");
    assert_eq!(get("client_jwt_local"), id);
    let cnf = get("client_jwt_cnf");
    if bound {
        assert!(cnf.starts_with(r#"{"x5t#S256": ""#), "{facts:#?}");
    } else {
        assert_eq!(cnf, "null", "{facts:#?}");
    }
    assert_eq!(get("source_jwt_id"), id);
    assert_eq!(get("source_jwt_audience"), "cache,db");
    assert_eq!(get("done"), "");
    agent.stop();
}

/// Python's `cryptography` (what py-spiffe parses with) reads every good certs-dev
/// certificate with all its extensions, and refuses the one vector whose BasicConstraints
/// spell out `cA FALSE`, exactly as the strict DER check in certs-dev does.
#[test]
fn python_cryptography_reads_certs_dev_and_refuses_the_explicit_ca_false_vector() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs-dev");
    let manifest = keycard_certs_dev::Manifest::describe();
    let mut good = Vec::new();
    for td in &manifest.trust_domains {
        good.extend([&td.root, &td.intermediate, &td.bundle, &td.svid]);
    }
    good.push(&manifest.nodes.ca);
    good.extend(manifest.nodes.nodes.iter().map(|n| &n.cert));
    let explicit = manifest.bad.iter().find(|v| v.strict_der_only).expect("the DER vector");
    let mut args = vec![script("read_certs.py").display().to_string()];
    args.extend(good.iter().map(|p| dir.join(p).display().to_string()));
    args.push(dir.join(&explicit.chain).display().to_string());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = runtime.block_on(python(&arg_refs));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), good.len() + 1, "{stdout}");
    for line in &lines[..good.len()] {
        assert!(line.ends_with(" ok"), "cryptography refuses a good certificate: {line}");
    }
    let last = lines[good.len()];
    assert!(last.contains(" error ") && last.contains("EncodedDefault"), "{last}");
}

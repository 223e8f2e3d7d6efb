//! `keycard api` against the agent's real Workload API service on a real Unix socket, its
//! cache filled with SVIDs minted by a real CA for this test process's uid.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;
use std::time::Duration;

use keycard_workload_api::TrustDomain;
use tokio::sync::oneshot;

use super::*;
use crate::agent::attest::UnixAttestorOptions;
use crate::agent::cache::{SvidCache, test_svid};
use crate::ca::CaManager;
use crate::clock::SystemClock;
use crate::server::agent_api::proto as pb;
use crate::telemetry::AgentMetrics;

struct Agent {
    dir: tempfile::TempDir,
    socket: String,
    ca: Arc<CaManager>,
    cache: Arc<SvidCache>,
    _stop: oneshot::Sender<()>,
}

impl Agent {
    /// An agent whose cache holds `web` (selecting this uid) with a fresh SVID, or nothing.
    async fn start(with_entry: bool) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let uid = std::fs::metadata(dir.path()).unwrap().uid();
        let ca = crate::ca::manager::test_ca(TrustDomain::new("example.org").unwrap());
        let cache = Arc::new(SvidCache::new(Arc::new(SystemClock)));
        let mut entries = BTreeMap::new();
        if with_entry {
            let e = pb::Entry {
                id: "web".into(),
                spiffe_id: "spiffe://example.org/web".into(),
                selectors: vec![format!("unix:uid:{uid}")],
                hint: "internal".into(),
                ..Default::default()
            };
            entries.insert(e.id.clone(), e);
        }
        cache.set_entries(&entries, Some(&ca.bundle().unwrap()), &[]).unwrap();
        let path = dir.path().join("agent.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let metrics = Arc::new(AgentMetrics::new());
        tokio::spawn(crate::agent::workload_api::serve(
            listener,
            cache.clone(),
            UnixAttestorOptions::default(),
            metrics,
            None,
            async move {
                let _ = stopped.await;
            },
        ));
        let agent =
            Agent { socket: format!("unix://{}", path.display()), dir, ca, cache, _stop: stop };
        if with_entry {
            agent.mint();
        }
        agent
    }

    fn mint(&self) {
        let svid = test_svid(&self.ca, "web", "spiffe://example.org/web", Duration::from_secs(600));
        self.cache.update_svids(vec![svid]).into_iter().for_each(|r| r.unwrap());
    }

    fn args(&self, output: OutputFormat, command: ApiCommand) -> ApiArgs {
        ApiArgs { socket: Some(self.socket.clone()), output, command }
    }

    async fn run(&self, output: OutputFormat, command: ApiCommand) -> Result<String, CliError> {
        let mut out = Vec::new();
        execute(self.args(output, command), &mut out).await?;
        Ok(String::from_utf8(out).unwrap())
    }
}

#[tokio::test]
async fn fetch_x509_prints_and_writes_the_svid_files() {
    let agent = Agent::start(true).await;
    let dir = agent.dir.path().join("certs");
    let fetch = ApiCommand::Fetch(FetchCommand::X509 { write: Some(dir.clone()) });
    let text = agent.run(OutputFormat::Text, fetch).await.unwrap();
    assert!(text.contains("Received 1 SVID after"), "{text}");
    assert!(text.contains("SPIFFE ID:         spiffe://example.org/web"), "{text}");
    assert!(text.contains("Hint:              internal"), "{text}");
    assert!(text.contains("Bundles:           example.org (1 CA)"), "{text}");
    let mode = |name: &str| std::fs::metadata(dir.join(name)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("svid_key.pem"), 0o600);
    assert_eq!(mode("svid.pem"), 0o644);
    let chain = std::fs::read_to_string(dir.join("svid.pem")).unwrap();
    let key = std::fs::read_to_string(dir.join("svid_key.pem")).unwrap();
    let svid = keycard_workload_api::X509Svid::from_pem(&chain, &key).unwrap();
    assert_eq!(svid.spiffe_id().as_str(), "spiffe://example.org/web");
    let bundle = std::fs::read_to_string(dir.join("svid_bundle.pem")).unwrap();
    assert_eq!(bundle, agent.ca.bundle().unwrap().x509_bundle().unwrap().to_pem());
    // openssl, an independent verifier, accepts the written chain against the written bundle.
    let verify = std::process::Command::new("openssl")
        .args(["verify", "-purpose", "sslclient", "-CAfile"])
        .arg(dir.join("svid_bundle.pem"))
        .arg(dir.join("svid.pem"))
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");

    let json = agent
        .run(OutputFormat::Json, ApiCommand::Fetch(FetchCommand::X509 { write: None }))
        .await
        .unwrap();
    let doc: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["svids"][0]["spiffe_id"], "spiffe://example.org/web");
    assert_eq!(doc["bundles"][0]["trust_domain"], "example.org");
}

#[tokio::test]
async fn fetch_x509_writes_and_lists_the_federated_bundles() {
    use crate::agent::cache::TrustBundle;
    let agent = Agent::start(true).await;
    let uid = std::fs::metadata(agent.dir.path()).unwrap().uid();
    let web = pb::Entry {
        id: "web".into(),
        spiffe_id: "spiffe://example.org/web".into(),
        selectors: vec![format!("unix:uid:{uid}")],
        hint: "internal".into(),
        federates_with: vec!["example.net".into(), "example.com".into()],
        ..Default::default()
    };
    let foreign = |name: &str| {
        let ca = crate::ca::manager::test_ca(TrustDomain::new(name).unwrap());
        let bundle = TrustBundle::of(&ca.bundle().unwrap()).unwrap();
        (TrustDomain::new(name).unwrap(), Arc::new(bundle))
    };
    let held = [foreign("example.com"), foreign("example.net")];
    let entries = BTreeMap::from([("web".to_string(), web)]);
    let bundle = agent.ca.bundle().unwrap();
    agent.cache.set_synced(&entries, Some(&bundle), &[], Some(held.clone().into())).unwrap();

    let dir = agent.dir.path().join("certs");
    let fetch = ApiCommand::Fetch(FetchCommand::X509 { write: Some(dir.clone()) });
    let text = agent.run(OutputFormat::Text, fetch).await.unwrap();
    assert!(text.contains("Bundles:           example.org (1 CA)\n"), "{text}");
    assert!(text.contains("Federated bundles: example.com (1 CA), example.net (1 CA)"), "{text}");
    // SPIRE's names: SVID 0, federated trust domains in name order.
    for (j, (_, b)) in held.iter().enumerate() {
        let written = std::fs::read_to_string(dir.join(format!("federated_bundle.0.{j}.pem")));
        assert_eq!(written.unwrap(), b.x509.to_pem());
    }
    assert!(!dir.join("federated_bundle.0.2.pem").exists());
    // The helper's bundle file: the own bundle first, then the federated ones.
    let all = std::fs::read_to_string(dir.join("svid_bundle.pem")).unwrap();
    let own = bundle.x509_bundle().unwrap().to_pem();
    assert_eq!(all, format!("{own}{}{}", held[0].1.x509.to_pem(), held[1].1.x509.to_pem()));

    let json = agent
        .run(OutputFormat::Json, ApiCommand::Fetch(FetchCommand::X509 { write: None }))
        .await
        .unwrap();
    let doc: Value = serde_json::from_str(&json).unwrap();
    let listed: Vec<(String, bool)> = doc["bundles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["trust_domain"].as_str().unwrap().to_owned(), b["federated"] == true))
        .collect();
    assert_eq!(
        listed,
        [
            ("example.org".to_owned(), false),
            ("example.com".to_owned(), true),
            ("example.net".to_owned(), true)
        ]
    );
}

#[tokio::test]
async fn watch_prints_every_rotation() {
    let agent = Agent::start(true).await;
    let args = agent.args(OutputFormat::Json, ApiCommand::Watch { max_updates: Some(3) });
    let watcher = tokio::spawn(async move {
        let mut out = Vec::new();
        execute(args, &mut out).await.map(|()| String::from_utf8(out).unwrap())
    });
    // Rotate until the watcher has seen three states (bounded: 50 rotations at most).
    for _ in 0..50 {
        if watcher.is_finished() {
            break;
        }
        agent.mint();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = watcher.await.unwrap().unwrap();
    let serials: Vec<String> = serde_json::Deserializer::from_str(&out)
        .into_iter::<Value>()
        .map(|doc| doc.unwrap()["svids"][0]["serial"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(serials.len(), 3, "{out}");
    assert!(serials[0] != serials[1] && serials[1] != serials[2], "{serials:?}");
}

#[tokio::test]
async fn validate_jwt_accepts_a_good_token_and_explains_a_bad_one() {
    let agent = Agent::start(true).await;
    let id = SpiffeId::parse("spiffe://example.org/web").unwrap();
    let minted = agent.ca.sign_jwt_svid(&id, &["db".to_owned()], Duration::from_secs(60)).unwrap();
    let ok = ApiCommand::Validate(ValidateCommand::Jwt {
        audience: "db".into(),
        svid: minted.token.clone().into(),
        bound_to: None,
    });
    let text = agent.run(OutputFormat::Text, ok).await.unwrap();
    assert!(
        text.contains("The JWT-SVID is valid.") && text.contains("spiffe://example.org/web"),
        "{text}"
    );
    assert!(text.contains("\"aud\""), "{text}");
    let wrong = ApiCommand::Validate(ValidateCommand::Jwt {
        audience: "other".into(),
        svid: minted.token.clone().into(),
        bound_to: None,
    });
    let err = agent.run(OutputFormat::Text, wrong).await.unwrap_err().to_string();
    assert!(err.contains("the JWT-SVID is not valid"), "{err}");

    // --bound-to: the token's cnf must name the certificate in the file.
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["a".into()]).unwrap().cert;
    let path = dir.path().join("cert.pem");
    std::fs::write(&path, cert.pem()).unwrap();
    let thumbprint = keycard_workload_api::x5t_s256(cert.der());
    let ttl = Duration::from_secs(60);
    let bound = agent.ca.sign_bound_jwt_svid(&id, &["db".to_owned()], ttl, Some(&thumbprint));
    let validate = |token: &str| {
        ApiCommand::Validate(ValidateCommand::Jwt {
            audience: "db".into(),
            svid: token.to_owned().into(),
            bound_to: Some(path.clone()),
        })
    };
    let text = agent.run(OutputFormat::Text, validate(&bound.unwrap().token)).await.unwrap();
    assert!(text.contains(&format!("Bound to:  x5t#S256={thumbprint}")), "{text}");
    let err = agent.run(OutputFormat::Text, validate(&minted.token)).await.unwrap_err();
    assert!(err.to_string().contains("not bound to a certificate (no cnf claim)"), "{err}");
}

/// `keycard api ...` as the command line parses it.
#[derive(Debug, clap::Parser)]
struct Cli {
    #[command(flatten)]
    api: ApiArgs,
}

#[test]
fn an_empty_svid_is_a_usage_error_naming_the_flag() {
    use clap::Parser as _;
    for empty in ["", "  "] {
        let args = ["api", "validate", "jwt", "--audience", "db", "--svid", empty];
        let err = Cli::try_parse_from(args).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{err}");
        assert_eq!(err.exit_code(), 2, "a usage error");
        let text = err.to_string();
        assert!(text.contains("--svid") && text.contains("the token is empty"), "{text}");
    }
    let args = ["api", "validate", "jwt", "--audience", "db", "--svid", "a.b.c"];
    let parsed = Cli::try_parse_from(args).unwrap();
    assert!(matches!(
        parsed.api.command,
        ApiCommand::Validate(ValidateCommand::Jwt { svid, .. }) if svid.expose() == "a.b.c"
    ));
}

#[tokio::test]
async fn failures_name_the_problem_and_the_fix() {
    let agent = Agent::start(false).await;
    let fetch = || ApiCommand::Fetch(FetchCommand::X509 { write: None });
    let err = agent.run(OutputFormat::Text, fetch()).await.unwrap_err().to_string();
    assert!(
        err.contains("no identity for this process") && err.contains("keycard agent explain --pid"),
        "{err}"
    );

    let missing = ApiArgs {
        socket: Some(format!("unix://{}/nothing.sock", agent.dir.path().display())),
        output: OutputFormat::Text,
        command: fetch(),
    };
    let err = execute(missing, &mut Vec::new()).await.unwrap_err().to_string();
    assert!(err.contains("is the agent running?") && err.contains("keycard agent run"), "{err}");

    let bad = ApiArgs {
        socket: Some("tcp://127.0.0.1:1".into()),
        output: OutputFormat::Text,
        command: fetch(),
    };
    let err = execute(bad, &mut Vec::new()).await.unwrap_err().to_string();
    assert!(err.contains("unix:///"), "{err}");
}

#[tokio::test]
async fn the_x509_source_follows_rotations_and_drops_a_revoked_identity() {
    let agent = Agent::start(true).await;
    let source = keycard_workload_api::X509Source::new(Some(&agent.socket)).await.unwrap();
    let first = source.context().default_svid().unwrap().leaf().to_vec();
    let mut updates = source.updated();
    agent.mint();
    tokio::time::timeout(Duration::from_secs(10), updates.changed()).await.unwrap().unwrap();
    let second = source.context().default_svid().unwrap().leaf().to_vec();
    assert_ne!(first, second, "the source follows a rotation");

    // The entry goes: the agent ends the stream with PermissionDenied, and the source
    // stops offering the SVID (keeping the bundles to verify peers with).
    agent.cache.set_entries(&BTreeMap::new(), Some(&agent.ca.bundle().unwrap()), &[]).unwrap();
    tokio::time::timeout(Duration::from_secs(10), updates.wait_for(|c| c.svids.is_empty()))
        .await
        .unwrap()
        .unwrap();
    assert!(source.context().default_svid().is_none());
    assert_eq!(source.bundles().len(), 1);
}

//! The real `keycard server run` process: admin CLI commands over its socket, an agent
//! attesting and getting SVIDs over mTLS, and a restart that loses nothing.

use keycard::agent::ServerClient;
use keycard::ca::{KeyType, SigningKey};
use keycard_workload_api::{TrustDomain, X509Bundle, X509BundleSet, verify_chain};
use rustls_pki_types::UnixTime;

use crate::procs::{Server, keycard};

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn csr(key: &SigningKey) -> Vec<u8> {
    rcgen::CertificateParams::default().serialize_request(key.key_pair()).unwrap().der().to_vec()
}

#[test]
fn entries_agents_and_authorities_survive_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let token = server.admin(&["token", "generate", "--spiffe-id", "spiffe://example.org/node/a"]);
    let token = token["token"].as_str().unwrap().to_owned();
    let web = server.admin(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/web",
        "--parent-id",
        "spiffe://example.org/node/a",
        "--selector",
        "unix:uid:1000",
        "--dns",
        "web.example.org",
    ]);
    let db = server.admin(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/db",
        "--parent-id",
        "spiffe://example.org/node/a",
        "--selector",
        "unix:uid:1001",
        "--x509-ttl",
        "10m",
    ]);
    let entry_ids = [web["id"].as_str().unwrap(), db["id"].as_str().unwrap()];
    let bundle_pem = server.admin_text(&["bundle", "show", "--format", "pem"]);
    let bundle = X509Bundle::parse_pem(td(), &bundle_pem).unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (identity, svids) = runtime.block_on(async {
        let mut client =
            ServerClient::connect(&server.address, td(), bundle.clone()).await.unwrap();
        let attestation = client.attest_join_token(&token).await.unwrap();
        assert_eq!(attestation.identity.spiffe_id.as_str(), "spiffe://example.org/node/a");
        let synced = client.sync(0, &[] as &[(String, u64)]).await.unwrap();
        let mut got: Vec<&str> = synced.entries.iter().map(|e| e.id.as_str()).collect();
        got.sort();
        let mut want = entry_ids.to_vec();
        want.sort();
        assert_eq!(got, want);
        let key = SigningKey::generate(KeyType::EcP256).unwrap();
        let items: Vec<(String, Vec<u8>)> =
            entry_ids.iter().map(|id| (id.to_string(), csr(&key))).collect();
        let svids = client.batch_new_x509_svid(&items).await.unwrap();
        (attestation.identity, svids)
    });
    let bundles: X509BundleSet = [bundle.clone()].into_iter().collect();
    let ids: Vec<String> = svids
        .into_iter()
        .map(|s| verify_chain(&s.unwrap().chain, &bundles, UnixTime::now()).unwrap().to_string())
        .collect();
    assert_eq!(ids, ["spiffe://example.org/web", "spiffe://example.org/db"]);
    server.stop();

    // Same state directory, new process: entries, agent and CA are all still there.
    let server = Server::start(dir.path());
    let shown = server.admin(&["entry", "show"]);
    let shown = shown.as_array().unwrap_or_else(|| shown["entries"].as_array().unwrap()).clone();
    assert_eq!(shown.len(), 2, "{shown:?}");
    let agents = server.admin(&["agent", "list"]);
    let agents = agents.as_array().unwrap_or_else(|| agents["agents"].as_array().unwrap()).clone();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0]["id"], "spiffe://example.org/node/a");
    let again = server.admin_text(&["bundle", "show", "--format", "pem"]);
    assert_eq!(again, bundle_pem, "the CA changed across the restart");
    runtime.block_on(async {
        let mut client =
            ServerClient::connect_with_identity(&server.address, td(), bundle.clone(), identity)
                .await
                .unwrap();
        let synced = client.sync(0, &[] as &[(String, u64)]).await.unwrap();
        assert_eq!(synced.entries.len(), 2);
        client.renew().await.unwrap();
        // The join token was used up before the restart.
        let mut fresh = ServerClient::connect(&server.address, td(), bundle).await.unwrap();
        let err = fresh.attest_join_token(&token).await.unwrap_err();
        assert!(err.to_string().contains("already used"), "{err}");
    });
    server.stop();
}

#[test]
fn admin_commands_explain_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let out = server.admin_raw(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/web",
        "--parent-id",
        "spiffe://example.org/nobody",
        "--selector",
        "unix:uid:1000",
    ]);
    // A parent that does not exist yet is allowed (declarative registration), with a warning.
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: no agent, join token or entry has the parent ID"),
        "{stderr}"
    );
    let out = server.admin_raw(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/web",
        "--parent-id",
        "spiffe://example.org/keycard/server",
        "--selector",
        "unix",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("type:value"));
    server.stop();
    let missing = dir.path().join("private").join("admin.sock");
    let out = keycard().args(["entry", "count", "--admin-socket"]).arg(&missing).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("keycard server run"));
}

//! SPIFFE Federation between two trust domains on loopback: two real servers (example.org
//! and example.com), each serving its bundle on an `https_spiffe` bundle endpoint, two
//! real agents, and workloads that authenticate each other across the domains.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keycard_workload_api::client::{WorkloadApiClient, X509Context};
use keycard_workload_api::{Authorizer, SpiffeId, TrustDomain, X509Source};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::agent::PATIENCE;
use crate::procs::{Agent, Server};

/// The shortest interval the refresher allows (a bundle's hint is bounded below by it),
/// plus a tick of the refresh loop and an agent sync.
const ONE_REFRESH: Duration = Duration::from_secs(30 + 5 + 5);

/// A free loopback port (the kernel's choice, released for the server to bind).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One trust domain: its server with a bundle endpoint, an agent, and one workload entry
/// (this process's uid) that federates with `other`.
struct Domain {
    td: &'static str,
    server: Server,
    agent: Agent,
    endpoint: String,
    dir: PathBuf,
}

impl Domain {
    fn start(root: &Path, td: &'static str, other: &str) -> Domain {
        let dir = root.join(td);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let uid = std::fs::metadata(&dir).unwrap().uid();
        let port = free_port();
        let config = format!(
            "ca_ttl = \"1h\"\ndefault_x509_svid_ttl = \"5m\"\n\
             [bundle_endpoint]\naddress = \"127.0.0.1:{port}\"\nprofile = \"https_spiffe\"\n\
             refresh_hint = \"30s\"\n"
        );
        let server = Server::start_in(td, &dir.join("server"), "127.0.0.1:0", Some(&config));
        let bundle = dir.join("bundle.pem");
        std::fs::write(&bundle, server.admin_text(&["bundle", "show", "--format", "pem"])).unwrap();
        server.admin(&[
            "entry",
            "create",
            "--spiffe-id",
            &format!("spiffe://{td}/workload"),
            "--parent-id",
            &format!("spiffe://{td}/node"),
            "--selector",
            &format!("unix:uid:{uid}"),
            "--federates-with",
            other,
        ]);
        let token = server.token("node");
        let node = dir.join("node");
        std::fs::create_dir_all(&node).unwrap();
        std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = node.join("agent.toml");
        std::fs::write(&config, "sync_interval = \"500ms\"\n").unwrap();
        let flags = [
            "--config",
            config.to_str().unwrap(),
            "--trust-bundle",
            bundle.to_str().unwrap(),
            "--join-token",
            &token,
        ];
        let agent = Agent::start_in(td, &node, &server.address, &flags, false);
        Domain { td, server, agent, endpoint: format!("https://127.0.0.1:{port}/"), dir }
    }

    fn workload(&self) -> SpiffeId {
        SpiffeId::parse(&format!("spiffe://{}/workload", self.td)).unwrap()
    }

    /// Makes this domain federate with `other` through its bundle endpoint, bootstrapped
    /// with `other`'s bundle as its operator would hand it over.
    fn federate_with(&self, other: &Domain) {
        let bootstrap = self.dir.join(format!("{}.json", other.td));
        let json = other.server.admin_text(&["bundle", "show", "--format", "spiffe"]);
        std::fs::write(&bootstrap, json).unwrap();
        let created = self.server.admin(&[
            "federation",
            "create",
            "--trust-domain",
            other.td,
            "--bundle-endpoint-url",
            &other.endpoint,
            "--bundle-endpoint-profile",
            "https_spiffe",
            "--endpoint-spiffe-id",
            &format!("spiffe://{}/keycard/server", other.td),
            "--trust-domain-bundle",
            bootstrap.to_str().unwrap(),
        ]);
        assert_eq!(created["bundle_held"], true, "{created}");
        let refreshed = self.server.admin(&["federation", "refresh", "--trust-domain", other.td]);
        assert_eq!(refreshed["last_error"], serde_json::Value::Null, "{refreshed}");
        assert!(refreshed["last_success_at"].is_string(), "{refreshed}");
    }
}

/// Waits until the workload's X.509 context satisfies `ready`.
async fn context_where(
    source: &X509Source,
    what: &str,
    patience: Duration,
    ready: impl Fn(&X509Context) -> bool,
) -> Arc<X509Context> {
    let mut updates = source.updated();
    let deadline = Instant::now() + patience;
    loop {
        let current = updates.borrow_and_update().clone();
        if ready(&current) {
            return current;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "{what}: not within {patience:?}");
        let _ = tokio::time::timeout(left, updates.changed()).await;
    }
}

fn authorities(context: &X509Context, td: &str) -> Option<usize> {
    context.bundles.get(&TrustDomain::new(td).unwrap()).map(|b| b.authorities().len())
}

/// One mTLS exchange over loopback: `server` presents its SVID and accepts only
/// `client_id`; `client` presents its SVID and accepts only `server_id`.
async fn exchange(
    server: &X509Source,
    server_id: &SpiffeId,
    client: &X509Source,
    client_id: &SpiffeId,
) -> Result<(), String> {
    let server_config =
        keycard_workload_api::server_config(server, None, Authorizer::Exact(client_id.clone()))
            .map_err(|e| e.to_string())?;
    let client_config =
        keycard_workload_api::client_config(client, None, Authorizer::Exact(server_id.clone()))
            .map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let accepting = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = acceptor.accept(tcp).await.map_err(|e| format!("server side: {e}"))?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("workload").unwrap();
    let client_side = async {
        let mut tls =
            connector.connect(name, tcp).await.map_err(|e| format!("client side: {e}"))?;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(buf)
    };
    let client_result = tokio::time::timeout(Duration::from_secs(10), client_side)
        .await
        .map_err(|_| "handshake timed out".to_owned())?;
    accepting.abort();
    assert_eq!(client_result?, *b"pong");
    Ok(())
}

#[test]
fn two_trust_domains_federate_over_their_bundle_endpoints() {
    let root = tempfile::tempdir().unwrap();
    let org = Domain::start(root.path(), "example.org", "example.com");
    let com = Domain::start(root.path(), "example.com", "example.org");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let address = |a: &Agent| format!("unix:{}", a.socket.display());
        let org_source = X509Source::new(Some(&address(&org.agent))).await.unwrap();
        let com_source = X509Source::new(Some(&address(&com.agent))).await.unwrap();

        // Before federation, neither side can authenticate the other.
        let refused = exchange(&com_source, &com.workload(), &org_source, &org.workload()).await;
        assert!(refused.is_err(), "a handshake across unfederated domains succeeded");

        org.federate_with(&com);
        com.federate_with(&org);
        for (source, foreign) in [(&org_source, "example.com"), (&com_source, "example.org")] {
            context_where(source, "the foreign bundle reaches the workload", PATIENCE, |c| {
                authorities(c, foreign).is_some()
            })
            .await;
        }
        // Each authorizes the other by its foreign SPIFFE ID.
        exchange(&com_source, &com.workload(), &org_source, &org.workload()).await.unwrap();
        exchange(&org_source, &org.workload(), &com_source, &com.workload()).await.unwrap();

        // A JWT-SVID of example.org validates in example.com.
        let mut org_client = WorkloadApiClient::connect_path(&org.agent.socket).await.unwrap();
        let token = org_client.fetch_jwt_svids(&["billing".into()], None).await.unwrap();
        let mut com_client = WorkloadApiClient::connect_path(&com.agent.socket).await.unwrap();
        let (subject, _) = com_client.validate_jwt_svid("billing", &token[0].token).await.unwrap();
        assert_eq!(subject, org.workload());
        let jwt_bundles = com_client.fetch_jwt_bundles().await.unwrap();
        assert!(jwt_bundles.get(&TrustDomain::new("example.org").unwrap()).is_some());

        // A rotation in example.com (a prepared authority is published at once) reaches
        // example.org's workloads within one refresh.
        let before = authorities(&org_source.updated().borrow(), "example.com").unwrap();
        com.server.admin(&["authority", "x509", "prepare"]);
        context_where(&org_source, "the foreign rotation reaches the workload", ONE_REFRESH, |c| {
            authorities(c, "example.com") == Some(before + 1)
        })
        .await;

        // An endpoint that presents another SPIFFE ID than configured is refused, and the
        // last good bundle is kept.
        org.server.admin(&[
            "federation",
            "update",
            "--trust-domain",
            "example.com",
            "--bundle-endpoint-url",
            &com.endpoint,
            "--bundle-endpoint-profile",
            "https_spiffe",
            "--endpoint-spiffe-id",
            "spiffe://example.com/somebody-else",
        ]);
        let out = org.server.admin_raw(&["federation", "refresh", "--trust-domain", "example.com"]);
        assert!(!out.status.success(), "a refresh from an impostor endpoint succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("spiffe://example.com/somebody-else"), "{stderr}");
        let shown = org.server.admin(&["federation", "show", "--trust-domain", "example.com"]);
        assert!(shown["last_error"].is_string(), "{shown}");
        assert_eq!(shown["x509_authorities"], before + 1, "the last good bundle is kept: {shown}");

        // A bundle a relationship keeps fresh is not deleted on its own.
        let out = org.server.admin_raw(&["bundle", "delete", "--trust-domain", "example.com"]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("keycard federation delete"), "{stderr}");

        // Static federation: a bundle set by hand (PEM), listed, deleted.
        let pem = root.path().join("net.pem");
        std::fs::write(&pem, com.server.admin_text(&["bundle", "show", "--format", "pem"]))
            .unwrap();
        let set = org.server.admin(&[
            "bundle",
            "set",
            "--trust-domain",
            "example.net",
            "--path",
            pem.to_str().unwrap(),
        ]);
        assert_eq!(
            (&set["trust_domain"], &set["federated"]),
            (&"example.net".into(), &false.into())
        );
        let listed = org.server.admin(&["bundle", "list"]);
        let names: Vec<&str> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["trust_domain"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["example.com", "example.net"], "{listed}");
        org.server.admin(&["bundle", "delete", "--trust-domain", "example.net"]);

        // Deleting the relationship takes the bundle away from the workloads.
        org.server.admin(&["federation", "delete", "--trust-domain", "example.com"]);
        context_where(&org_source, "the deleted bundle leaves the workload", PATIENCE, |c| {
            authorities(c, "example.com").is_none()
        })
        .await;
        let listed = org.server.admin(&["bundle", "list"]);
        assert_eq!(listed, serde_json::json!([]), "{listed}");
    });
    drop(runtime);
    org.agent.stop();
    com.agent.stop();
    org.server.stop();
    com.server.stop();
}

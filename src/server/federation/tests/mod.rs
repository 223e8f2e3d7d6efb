//! Federation transport tests: real TLS on loopback between the bundle endpoint (or a
//! scripted server) and the fetch client. This file holds the harness; [`spiffe`],
//! [`web`] and [`http`] the tests of each part.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keycard_workload_api::{SpiffeBundle, SpiffeId, TrustDomain};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::endpoint::{self, BundleEndpoint};
use super::endpoint_tls::{load_web_identity, web_resolver, with_resolver};
use super::{EndpointProfile, FetchError, fetch_bundle};
use crate::ca::CaManager;
use crate::clock::SystemClock;
use crate::server::agent_api::server_svid::ServerSvid;
use crate::shutdown::Shutdown;
use crate::telemetry::ServerMetrics;

mod http;
mod refresh;
mod spiffe;
mod web;

/// What every fetch in these tests may take at most.
const TIMEOUT: Duration = Duration::from_secs(10);

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn server_id() -> SpiffeId {
    crate::wire::server_id(&td())
}

/// A bundle endpoint serving a CA's bundle on loopback; stopped when dropped.
struct Running {
    addr: SocketAddr,
    ca: Arc<CaManager>,
    metrics: Arc<ServerMetrics>,
    shutdown: Shutdown,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    fn url(&self) -> String {
        format!("https://{}/", self.addr)
    }

    fn requests(&self, code: &str) -> u64 {
        let labels = crate::telemetry::metrics::HttpCodeLabels { code: code.into() };
        self.metrics.bundle_endpoint_requests.get_or_create(&labels).get()
    }

    /// Stops the endpoint and waits until it has.
    async fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(TIMEOUT, task).await.expect("the endpoint stops").unwrap();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Starts an endpoint for `ca` presenting what `resolver` picks.
async fn start(
    ca: Arc<CaManager>,
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
) -> Running {
    let listener = endpoint::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = Arc::new(ServerMetrics::new());
    let tls = with_resolver(resolver).unwrap();
    let served = Arc::new(BundleEndpoint::new(ca.clone(), metrics.clone()));
    let shutdown = Shutdown::new();
    let task = tokio::spawn(endpoint::serve(listener, tls, served, shutdown.wait()));
    Running { addr, ca, metrics, shutdown, task: Some(task) }
}

/// A CA of example.org and its server SVID (`spiffe://example.org/keycard/server`).
fn ca_and_svid() -> (Arc<CaManager>, Arc<ServerSvid>) {
    svid_for(crate::ca::manager::test_ca(td()), server_id())
}

fn svid_for(ca: Arc<CaManager>, id: SpiffeId) -> (Arc<CaManager>, Arc<ServerSvid>) {
    let svid = ServerSvid::mint(ca.clone(), id, Duration::from_secs(600), Arc::new(SystemClock));
    (ca, Arc::new(svid.unwrap()))
}

/// An `https_spiffe` endpoint presenting the server SVID of a new CA.
async fn start_spiffe() -> (Running, Arc<ServerSvid>) {
    let (ca, svid) = ca_and_svid();
    (start(ca, svid.clone()).await, svid)
}

async fn fetch_spiffe(url: &str, held: Option<&SpiffeBundle>) -> Result<SpiffeBundle, FetchError> {
    let profile = EndpointProfile::HttpsSpiffe { endpoint_id: server_id() };
    fetch_bundle(&td(), url, &profile, held, TIMEOUT).await
}

/// A Web PKI for tests: a CA, and a server certificate for some names, in PEM files.
struct WebPki {
    dir: tempfile::TempDir,
    ca_pem: String,
}

impl WebPki {
    /// A CA and a certificate for `names` (DNS names or IP addresses).
    fn new(names: &[&str]) -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "keycard test web CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*n).try_into().unwrap()),
            })
            .collect();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("web.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("web-key.pem"), key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        Self { dir, ca_pem: ca_cert.pem() }
    }

    fn resolver(&self) -> Arc<dyn rustls::server::ResolvesServerCert> {
        let (cert, key) = (self.dir.path().join("web.pem"), self.dir.path().join("web-key.pem"));
        web_resolver(load_web_identity(&cert, &key).unwrap())
    }

    fn ca_file(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn profile(&self) -> EndpointProfile {
        EndpointProfile::HttpsWeb { ca_pem: Some(self.ca_pem.clone().into_bytes()) }
    }
}

/// A scripted HTTPS server (the [`WebPki`]'s certificate): answers every connection
/// with `reply(request head)` written as raw bytes, until dropped.
struct Scripted {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn scripted(
    pki: &WebPki,
    reply: impl Fn(&str, SocketAddr) -> Vec<u8> + Send + Sync + 'static,
) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(with_resolver(pki.resolver()).unwrap());
    let reply = Arc::new(reply);
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, reply) = (acceptor.clone(), reply.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = reply(&String::from_utf8_lossy(&head), addr);
                let _ = tls.write_all(&answer).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    Scripted { addr, task }
}

/// A raw HTTP/1.1 response with a body and its length.
fn http_response(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

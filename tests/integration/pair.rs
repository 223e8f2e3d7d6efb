//! Two workloads doing mutual TLS through the rustls configs of `keycard_workload_api::tls`
//! with SVIDs from a real agent, in the background, while a test does something to keycard
//! (rotates its CA, stops its server, restarts its agent): [`MtlsLoad`] counts every
//! handshake and every failure, and which SVIDs each side presented.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keycard_workload_api::tls::{Authorizer, client_config, peer_spiffe_id, server_config};
use keycard_workload_api::{SpiffeId, X509Source};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::agent::PATIENCE;

/// What an [`MtlsLoad`] saw, from its start until [`MtlsLoad::stop`].
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    /// Handshakes the client attempted.
    pub handshakes: u64,
    /// Every failed handshake or echo, with its error.
    pub failures: Vec<String>,
    /// The distinct leaf certificates (DER) the server presented to the client.
    pub server_leaves: BTreeSet<Vec<u8>>,
    /// The distinct leaf certificates (DER) the client presented to the server.
    pub client_leaves: BTreeSet<Vec<u8>>,
    /// The SPIFFE IDs the server workload saw its clients present (empty string: none).
    pub client_ids: BTreeSet<String>,
    /// Why the server workload refused a connection (its side of a failed handshake, such
    /// as a client certificate it did not accept), to explain a client's failure.
    pub accept_errors: Vec<String>,
}

/// A client workload (`front`) connecting to a server workload (`back`) over mTLS every
/// `pause`, each authorizing only the other, both fed by one `X509Source` on the agent's
/// socket; runs on its own runtime until stopped or dropped.
pub struct MtlsLoad {
    runtime: Option<tokio::runtime::Runtime>,
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<LoadReport>>,
    handshakes: Arc<AtomicU64>,
}

impl MtlsLoad {
    /// Starts the pair on the agent socket `socket` with the SPIFFE IDs `front` (client) and
    /// `back` (server); returns once the source holds both SVIDs and one handshake worked.
    pub fn start(socket: &Path, front: &str, back: &str, pause: Duration) -> MtlsLoad {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (front, back) = (SpiffeId::parse(front).unwrap(), SpiffeId::parse(back).unwrap());
        let endpoint = format!("unix://{}", socket.display());
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(LoadReport::default()));
        let handshakes = Arc::new(AtomicU64::new(0));
        let (connector, address) = runtime.block_on(async {
            let source = tokio::time::timeout(PATIENCE, X509Source::new(Some(&endpoint)))
                .await
                .expect("no X509Source within PATIENCE")
                .unwrap();
            let mut updates = source.updated();
            let (f, b) = (front.clone(), back.clone());
            tokio::time::timeout(
                PATIENCE,
                updates.wait_for(|c| {
                    c.svids.iter().any(|s| s.spiffe_id() == &f)
                        && c.svids.iter().any(|s| s.spiffe_id() == &b)
                }),
            )
            .await
            .expect("the agent did not serve both SVIDs within PATIENCE")
            .unwrap();
            let server =
                server_config(&source, Some(back.clone()), Authorizer::Exact(front.clone()))
                    .unwrap();
            let client =
                client_config(&source, Some(front.clone()), Authorizer::Exact(back.clone()))
                    .unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            tokio::spawn(serve(listener, TlsAcceptor::from(Arc::new(server)), report.clone()));
            // Keep the source alive as long as the runtime runs.
            tokio::spawn(async move {
                let _source = source;
                std::future::pending::<()>().await
            });
            (TlsConnector::from(Arc::new(client)), address)
        });
        let load = MtlsLoad { runtime: Some(runtime), stop, report, handshakes };
        let first = load.runtime().block_on(handshake(&connector, address, &back));
        first.expect("the first handshake failed");
        load.runtime().spawn(client_loop(
            connector,
            address,
            back,
            pause,
            load.stop.clone(),
            load.report.clone(),
            load.handshakes.clone(),
        ));
        load
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("the runtime lives until drop")
    }

    /// Handshakes attempted so far (to wait for progress).
    pub fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::Relaxed)
    }

    /// Failures so far.
    pub fn failures(&self) -> Vec<String> {
        self.report.lock().unwrap().failures.clone()
    }

    /// Stops the client loop and returns everything seen.
    pub fn stop(mut self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
        let mut report = self.report.lock().unwrap().clone();
        report.handshakes = self.handshakes.load(Ordering::Relaxed);
        report
    }
}

impl Drop for MtlsLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The server workload: echoes four bytes per connection and records the client's leaf.
async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    report: Arc<Mutex<LoadReport>>,
) {
    while let Ok((tcp, _)) = listener.accept().await {
        let (acceptor, report) = (acceptor.clone(), report.clone());
        tokio::spawn(async move {
            let mut tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(e) => {
                    report.lock().unwrap().accept_errors.push(format!("accept: {e}"));
                    return;
                }
            };
            let (_, conn) = tls.get_ref();
            let peer = peer_spiffe_id(conn).map(|i| i.to_string()).unwrap_or_default();
            let leaf = conn.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
            {
                let mut seen = report.lock().unwrap();
                seen.client_ids.insert(peer);
                seen.client_leaves.extend(leaf);
            }
            let mut buf = [0u8; 4];
            if tls.read_exact(&mut buf).await.is_ok() {
                let _ = tls.write_all(&buf).await;
                let _ = tls.shutdown().await;
            }
        });
    }
}

/// The client workload's loop: one handshake and echo per `pause` until stopped.
async fn client_loop(
    connector: TlsConnector,
    address: std::net::SocketAddr,
    back: SpiffeId,
    pause: Duration,
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<LoadReport>>,
    handshakes: Arc<AtomicU64>,
) {
    while !stop.load(Ordering::Relaxed) {
        handshakes.fetch_add(1, Ordering::Relaxed);
        match handshake(&connector, address, &back).await {
            Ok(leaf) => {
                report.lock().unwrap().server_leaves.insert(leaf);
            }
            Err(e) => report.lock().unwrap().failures.push(e),
        }
        tokio::time::sleep(pause).await;
    }
}

/// One connection: handshake, check the server's SPIFFE ID, echo four bytes; returns the
/// server's leaf certificate.
async fn handshake(
    connector: &TlsConnector,
    address: std::net::SocketAddr,
    back: &SpiffeId,
) -> Result<Vec<u8>, String> {
    let tcp = tokio::net::TcpStream::connect(address).await.map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from("back").unwrap();
    let mut tls = connector.connect(name, tcp).await.map_err(|e| format!("handshake: {e}"))?;
    let (_, conn) = tls.get_ref();
    let peer = peer_spiffe_id(conn);
    if peer.as_ref() != Some(back) {
        return Err(format!("the server presented {peer:?}, not {back}"));
    }
    let leaf = conn.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
    tls.write_all(b"ping").await.map_err(|e| format!("write: {e}"))?;
    let mut echo = [0u8; 4];
    tls.read_exact(&mut echo).await.map_err(|e| format!("echo: {e}"))?;
    if &echo != b"ping" {
        return Err(format!("echo {echo:?}"));
    }
    leaf.ok_or_else(|| "no server certificate".to_owned())
}

//! TLS for the agent API: the rustls server configuration, the verifier of agents' client
//! certificates, and the accepted connections that carry the verified peer chain to the
//! gRPC handlers.
//!
//! Client certificates are optional at the handshake (attestation happens without one);
//! when one is presented it must be an X.509-SVID with an agent ID that chains to the CA's
//! current bundle. Session resumption and tickets are off: a resumed session would skip
//! verification and keep a replaced certificate alive.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use keycard_workload_api::tls::{Authorizer, SpiffePeerVerifier};
use keycard_workload_api::{TrustDomain, X509BundleSet};
use rustls::pki_types::CertificateDer;
use rustls::server::{NoServerSessionStorage, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use super::error::AgentApiError;
use super::server_svid::ServerSvid;
use crate::ca::CaManager;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub use crate::wire::tls_provider as provider;

/// Verifies agents' client certificates against the CA's current bundle (read at each
/// handshake). Any SVID of our trust domain may complete the handshake (agent IDs chosen
/// for join tokens need not sit under /keycard/agent/); each call then requires an agent
/// record whose current serial is this certificate's. Attestation needs no certificate.
pub fn agent_cert_verifier(ca: Arc<CaManager>, trust_domain: &TrustDomain) -> SpiffePeerVerifier {
    let bundles = move || -> X509BundleSet { [ca.x509_bundle()].into_iter().collect() };
    SpiffePeerVerifier::new(bundles, Authorizer::MemberOf(trust_domain.clone()))
        .optional_client_auth()
}

/// The server configuration: TLS 1.3 and 1.2, the rotating server SVID, optional agent
/// client certificates, HTTP/2 only, no resumption.
pub fn server_config(
    ca: Arc<CaManager>,
    svid: Arc<ServerSvid>,
    trust_domain: &TrustDomain,
) -> Result<Arc<ServerConfig>, AgentApiError> {
    let verifier = Arc::new(agent_cert_verifier(ca, trust_domain));
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| AgentApiError::Setup(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(svid);
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// What a handler learns about its connection (a request extension).
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The client's address.
    pub remote_addr: SocketAddr,
    /// The verified client certificate chain (leaf first), when one was presented.
    pub chain: Option<Arc<Vec<CertificateDer<'static>>>>,
}

/// An accepted TLS connection that hands its [`PeerInfo`] to tonic.
#[derive(Debug)]
pub struct AgentConnection {
    stream: TlsStream<TcpStream>,
    info: PeerInfo,
}

impl tonic::transport::server::Connected for AgentConnection {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for AgentConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for AgentConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Accepts TCP connections on `listener` and completes each TLS handshake in its own task
/// (a slow client never holds up others); yields the established connections until `stop`.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> ReceiverStream<Result<AgentConnection, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stop.changed() => return,
            };
            let (tcp, remote_addr) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "agent API accept failed");
                    continue;
                }
            };
            // gRPC messages are small and answered at once: without this, Nagle's
            // algorithm holds a reply until the agent's delayed ACK (about 40 ms a call).
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(%remote_addr, error = %e, "cannot set TCP_NODELAY");
            }
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                let stream = match handshake.await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(%remote_addr, error = %e, "agent API TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%remote_addr, "agent API TLS handshake timed out");
                        return;
                    }
                };
                let chain =
                    stream.get_ref().1.peer_certificates().map(|certs| {
                        Arc::new(certs.iter().map(|c| c.clone().into_owned()).collect())
                    });
                let info = PeerInfo { remote_addr, chain };
                let _ = tx.send(Ok(AgentConnection { stream, info })).await;
            });
        }
    });
    ReceiverStream::new(rx)
}

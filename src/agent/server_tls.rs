//! The TLS pieces the agent connects to the server with: the workload library's SPIFFE
//! verifier, authenticating the server by SPIFFE ID (`spiffe://<td>/keycard/server`)
//! against a trust bundle (no DNS name involved), and a connector that gives tonic a
//! rustls stream.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use keycard_workload_api::tls::{Authorizer, SpiffePeerVerifier};
use keycard_workload_api::{TrustDomain, X509Bundle, X509BundleSet};
use rustls::ClientConfig;
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

use super::identity::{AgentIdentity, ClientError};
use crate::wire::proto::agent_client::AgentClient;
use crate::wire::{KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, MAX_MESSAGE_SIZE, server_id};

/// Opens TCP to the URI's host and port, then TLS with `config`: what tonic's channel
/// calls for each connection.
#[derive(Debug, Clone)]
pub struct TlsConnectorService {
    config: Arc<ClientConfig>,
}

impl TlsConnectorService {
    /// A connector using `config`.
    pub fn new(config: Arc<ClientConfig>) -> Self {
        Self { config }
    }
}

type ConnectFuture =
    Pin<Box<dyn Future<Output = Result<TokioIo<TlsStream<TcpStream>>, std::io::Error>> + Send>>;

impl tower::Service<Uri> for TlsConnectorService {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.config.clone();
        Box::pin(async move {
            let invalid =
                |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, m.to_owned());
            let host = uri.host().ok_or_else(|| invalid("server address has no host"))?;
            let port = uri.port_u16().ok_or_else(|| invalid("server address has no port"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            // The verifier checks the SPIFFE ID, not this name; SNI is off.
            let name =
                ServerName::try_from("keycard-server").map_err(|_| invalid("server name"))?;
            let tls = TlsConnector::from(config).connect(name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// The bundle the agent trusts for the server, shared by the client (which updates it
/// after every sync) and the verifier of its open channel (which reads it at every
/// handshake, so a reconnection after a CA rotation trusts the new authority).
pub type TrustCell = Arc<RwLock<X509Bundle>>;

/// Opens a gRPC channel to `addr` over TLS: the server must present an SVID with the ID
/// `spiffe://<td>/keycard/server` chaining to the bundle in `trust`; `identity`, when
/// given, is the client certificate. No resumption, no SNI, HTTP/2 by ALPN, HTTP/2
/// keepalive ([`KEEPALIVE_INTERVAL`], [`KEEPALIVE_TIMEOUT`]).
pub async fn open_channel(
    addr: &str,
    trust_domain: &TrustDomain,
    trust: &TrustCell,
    identity: Option<&AgentIdentity>,
) -> Result<AgentClient<Channel>, ClientError> {
    open_channel_within(addr, trust_domain, trust, identity, CONNECT_TIMEOUT).await
}

/// Longest a dial (TCP and the TLS handshake) may take by default.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Like [`open_channel`], giving each dial `connect_timeout` instead of [`CONNECT_TIMEOUT`]:
/// an agent that lists several servers leaves one that accepts TCP but never finishes the
/// handshake within it.
pub async fn open_channel_within(
    addr: &str,
    trust_domain: &TrustDomain,
    trust: &TrustCell,
    identity: Option<&AgentIdentity>,
    connect_timeout: Duration,
) -> Result<AgentClient<Channel>, ClientError> {
    let trust = trust.clone();
    let bundles = move || -> X509BundleSet {
        let bundle = trust.read().unwrap_or_else(PoisonError::into_inner).clone();
        [bundle].into_iter().collect()
    };
    let verifier = SpiffePeerVerifier::new(bundles, Authorizer::Exact(server_id(trust_domain)));
    open_with_verifier(addr, verifier, identity, connect_timeout).await
}

/// Like [`open_channel`] without checking the server's chain (only its SPIFFE ID), and
/// without a client certificate: an insecure bootstrap, before the agent has a bundle.
pub async fn open_insecure_channel(
    addr: &str,
    trust_domain: &TrustDomain,
    connect_timeout: Duration,
) -> Result<AgentClient<Channel>, ClientError> {
    let verifier =
        SpiffePeerVerifier::dangerous_without_chain(Authorizer::Exact(server_id(trust_domain)));
    open_with_verifier(addr, verifier, None, connect_timeout).await
}

async fn open_with_verifier(
    addr: &str,
    verifier: SpiffePeerVerifier,
    identity: Option<&AgentIdentity>,
    connect_timeout: Duration,
) -> Result<AgentClient<Channel>, ClientError> {
    let fail = |reason: String| ClientError::Connect { addr: addr.to_owned(), reason };
    let verifier = Arc::new(verifier);
    let builder = ClientConfig::builder_with_provider(crate::wire::tls_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| fail(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some(id) => {
            let key =
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key.key_pair().serialize_der()));
            builder.with_client_auth_cert(id.chain.clone(), key).map_err(|e| fail(e.to_string()))?
        }
        None => builder.with_no_client_auth(),
    };
    config.resumption = Resumption::disabled();
    config.enable_sni = false;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| fail(e.to_string()))?
        .connect_timeout(connect_timeout)
        // PINGs, idle or not, so that a half-open connection is closed (and dialled again)
        // rather than holding the agent's calls until their deadlines.
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let connector = TlsConnectorService::new(Arc::new(config));
    // With an agent SVID the channel connects on first use (and again after every drop),
    // so an agent restarted while the server is down starts and serves from its cache;
    // without one (attestation) the server must answer now.
    let channel = if identity.is_some() {
        endpoint.connect_with_connector_lazy(connector)
    } else {
        endpoint.connect_with_connector(connector).await.map_err(|e| {
            fail(format!(
                "{e}: {}",
                std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default()
            ))
        })?
    };
    Ok(AgentClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE))
}

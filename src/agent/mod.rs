//! The node agent.
//!
//! So far: [`client`], the agent's client of the server's agent API (attest, renew, sync,
//! sign, bundle), and here the TLS pieces it connects with: a verifier that authenticates
//! the server by SPIFFE ID (`spiffe://<td>/keycard/server`) against a trust bundle (no DNS
//! name involved), and a connector that gives tonic a rustls stream.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use keycard_workload_api::{SpiffeId, X509BundleSet, verify_chain};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::codegen::http::Uri;

pub mod client;

pub use client::{
    AgentIdentity, Attestation, ClientError, IssuedX509Svid, ServerClient, SyncedEntries,
};

/// Authenticates the server: its chain must verify against the bundle and its leaf must
/// carry exactly the expected SPIFFE ID.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    bundles: X509BundleSet,
    expected: SpiffeId,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    /// Trusts `bundles` and accepts only `expected`.
    pub fn new(bundles: X509BundleSet, expected: SpiffeId) -> Self {
        let algorithms = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        Self { bundles, expected, algorithms }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.clone()];
        chain.extend(intermediates.iter().cloned());
        let id = verify_chain(&chain, &self.bundles, now)
            .map_err(|e| rustls::Error::General(format!("server certificate: {e}")))?;
        if id != self.expected {
            return Err(rustls::Error::General(format!(
                "server presented {id}, expected {}",
                self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

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

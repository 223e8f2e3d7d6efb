//! TLS for the fetch client: how each endpoint profile authenticates the bundle endpoint,
//! and how a refused handshake becomes a [`FetchError`] that names what failed.
//!
//! - `https_spiffe`: [`SpiffeEndpointVerifier`] verifies the endpoint's chain as an
//!   X509-SVID against one bundle (the one held for the endpoint's trust domain), then
//!   requires the configured endpoint SPIFFE ID exactly. The host name is not checked
//!   (the SPIFFE ID is the identity), so no SNI is sent either.
//! - `https_web`: rustls' WebPKI verifier against Mozilla's roots (`webpki-roots`, built
//!   in, so nothing needs to be installed) or the CA certificates given; the URL's host
//!   must be in the certificate.
//!
//! Session resumption is off: every fetch verifies the endpoint's current certificate.

use std::sync::{Arc, Mutex, PoisonError};

use keycard_workload_api::{SpiffeId, X509BundleSet, X509SvidError, spiffe_id_of, verify_chain};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::endpoint_tls::pem_certificates;
use super::error::FetchError;

/// Why the SPIFFE verifier refused the endpoint, kept for the error message (rustls only
/// carries a generic certificate error out of the handshake).
#[derive(Debug, Clone)]
enum Refusal {
    /// The chain is not a valid X509-SVID of the held bundle.
    Chain(X509SvidError),
    /// The chain is valid but names another ID.
    WrongId(SpiffeId),
}

/// Verifies a `https_spiffe` endpoint: its chain against `bundles`, then its ID.
#[derive(Debug)]
pub struct SpiffeEndpointVerifier {
    bundles: X509BundleSet,
    expected: SpiffeId,
    algorithms: WebPkiSupportedAlgorithms,
    refusal: Mutex<Option<Refusal>>,
}

impl SpiffeEndpointVerifier {
    /// Trusts `bundles` (the held bundle of `expected`'s trust domain) and accepts only
    /// `expected`.
    pub fn new(bundles: X509BundleSet, expected: SpiffeId) -> Self {
        Self {
            bundles,
            expected,
            algorithms: crate::wire::tls_provider().signature_verification_algorithms,
            refusal: Mutex::new(None),
        }
    }

    fn refuse(&self, refusal: Refusal, error: CertificateError) -> rustls::Error {
        *self.refusal.lock().unwrap_or_else(PoisonError::into_inner) = Some(refusal);
        rustls::Error::InvalidCertificate(error)
    }

    /// The error for a refused handshake with `url`, when this verifier refused it.
    fn explain(&self, url: &str) -> Option<FetchError> {
        let refusal = self.refusal.lock().unwrap_or_else(PoisonError::into_inner).clone()?;
        let url = url.to_owned();
        Some(match refusal {
            Refusal::WrongId(presented) => {
                FetchError::WrongSpiffeId { url, expected: self.expected.clone(), presented }
            }
            Refusal::Chain(
                e @ (X509SvidError::UntrustedChain(_)
                | X509SvidError::SignedByOtherTrustDomain { .. }),
            ) => FetchError::UnknownIssuer {
                url,
                trusted: format!("the bundle held for {}", self.expected.trust_domain()),
                reason: e.to_string(),
            },
            Refusal::Chain(e) => FetchError::BadCertificate { url, reason: e.to_string() },
        })
    }
}

impl ServerCertVerifier for SpiffeEndpointVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.clone().into_owned()];
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        let id = match verify_chain(&chain, &self.bundles, now) {
            Ok(id) => id,
            // An ID of another trust domain than the held bundle's: not the endpoint.
            Err(X509SvidError::NoBundleForTrustDomain(_)) => match spiffe_id_of(end_entity) {
                Ok(id) => {
                    return Err(self.refuse(
                        Refusal::WrongId(id),
                        CertificateError::ApplicationVerificationFailure,
                    ));
                }
                Err(e) => return Err(self.refuse(Refusal::Chain(e), CertificateError::BadEncoding)),
            },
            Err(e) => {
                let kind = match e {
                    X509SvidError::UntrustedChain(_)
                    | X509SvidError::SignedByOtherTrustDomain { .. } => {
                        CertificateError::UnknownIssuer
                    }
                    X509SvidError::Expired { .. } => CertificateError::Expired,
                    X509SvidError::NotYetValid { .. } => CertificateError::NotValidYet,
                    X509SvidError::BadSignature(_) => CertificateError::BadSignature,
                    _ => CertificateError::ApplicationVerificationFailure,
                };
                return Err(self.refuse(Refusal::Chain(e), kind));
            }
        };
        if id != self.expected {
            return Err(
                self.refuse(Refusal::WrongId(id), CertificateError::ApplicationVerificationFailure)
            );
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

/// A client configuration and what it needs to explain a refused handshake.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// The rustls configuration.
    pub config: Arc<ClientConfig>,
    /// Set for `https_spiffe`.
    spiffe: Option<Arc<SpiffeEndpointVerifier>>,
    /// What `https_web` trusts, for messages.
    trusted: &'static str,
}

fn builder() -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, rustls::Error> {
    ClientConfig::builder_with_provider(crate::wire::tls_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
}

fn finish(mut config: ClientConfig) -> Arc<ClientConfig> {
    config.resumption = Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

impl ClientTls {
    /// `https_spiffe`: trusts `bundles`, accepts only `endpoint_id`.
    pub fn spiffe(bundles: X509BundleSet, endpoint_id: SpiffeId) -> Result<Self, FetchError> {
        let verifier = Arc::new(SpiffeEndpointVerifier::new(bundles, endpoint_id));
        let mut config = builder()
            .map_err(tls_setup)?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
        config.enable_sni = false;
        Ok(Self { config: finish(config), spiffe: Some(verifier), trusted: "" })
    }

    /// `https_web`: trusts the certificates of `ca_pem`, or Mozilla's roots when `None`.
    pub fn web(ca_pem: Option<&[u8]>) -> Result<Self, FetchError> {
        let mut roots = RootCertStore::empty();
        let trusted = match ca_pem {
            Some(pem) => {
                for cert in pem_certificates(pem).map_err(FetchError::BadCaPem)? {
                    roots.add(cert).map_err(|e| FetchError::BadCaPem(e.to_string()))?;
                }
                "the CA certificates configured for the endpoint"
            }
            None => {
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                "the public Web PKI roots (Mozilla's, built into keycard)"
            }
        };
        let verifier = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            crate::wire::tls_provider(),
        )
        .build()
        .map_err(|e| FetchError::BadCaPem(e.to_string()))?;
        let config =
            builder().map_err(tls_setup)?.with_webpki_verifier(verifier).with_no_client_auth();
        Ok(Self { config: finish(config), spiffe: None, trusted })
    }

    /// The error for a failed TLS handshake with `url` (whose host is `host`).
    pub fn handshake_error(&self, url: &str, host: &str, e: std::io::Error) -> FetchError {
        if let Some(explained) = self.spiffe.as_ref().and_then(|v| v.explain(url)) {
            return explained;
        }
        let url = url.to_owned();
        let rustls_error = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>());
        match rustls_error {
            Some(rustls::Error::InvalidCertificate(cert)) => match cert {
                CertificateError::UnknownIssuer => FetchError::UnknownIssuer {
                    url,
                    trusted: self.trusted.to_owned(),
                    reason: format!("{cert:?}"),
                },
                // webpki picks the issuer by name: a trusted CA of the same name whose key
                // did not sign the certificate is an impostor's, so also an unknown issuer.
                CertificateError::BadSignature => FetchError::UnknownIssuer {
                    url,
                    trusted: self.trusted.to_owned(),
                    reason: "a trusted CA of the issuer's name did not sign it".into(),
                },
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => FetchError::WrongHostName {
                    url,
                    host: host.to_owned(),
                    reason: format!("{cert:?}"),
                },
                other => FetchError::BadCertificate { url, reason: format!("{other:?}") },
            },
            Some(other) => FetchError::Tls { url, reason: other.to_string() },
            None => FetchError::Tls { url, reason: e.to_string() },
        }
    }
}

fn tls_setup(e: rustls::Error) -> FetchError {
    FetchError::Tls { url: String::new(), reason: format!("configuration: {e}") }
}

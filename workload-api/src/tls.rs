//! SPIFFE mutual TLS with rustls: configs whose certificate follows an [`X509Source`] and
//! whose peer verification is SPIFFE's.
//!
//! - The own certificate comes from a resolver that reads the source at every handshake
//!   (a rotation takes effect for the next connection; listeners are never rebuilt).
//! - The peer's chain is verified against the bundle of the peer's own trust domain
//!   (federated bundles included), then its SPIFFE ID is checked by an [`Authorizer`].
//! - Session resumption and tickets are off: every connection verifies the peer's
//!   current certificate (a resumed session would keep a rotated-away one).
//!
//! [`peer_spiffe_id`] gives the authenticated peer's ID from an established connection.
//! Configs work with tokio-rustls as they are.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, CommonState, DigitallySignedStruct, DistinguishedName, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::sync::watch;

use crate::client::X509Context;
use crate::source::{X509Source, pick};
use crate::{SpiffeId, TrustDomain, X509BundleSet, spiffe_id_of, verify_chain};

/// Why a config could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the settings.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Which peers are accepted, by SPIFFE ID (after the chain verified).
#[derive(Clone)]
pub enum Authorizer {
    /// Any SPIFFE ID whose chain verifies.
    Any,
    /// Exactly this ID.
    Exact(SpiffeId),
    /// One of these IDs.
    OneOf(Vec<SpiffeId>),
    /// Any ID in this trust domain.
    MemberOf(TrustDomain),
    /// A rule of your own: `true` accepts.
    Custom(Arc<dyn Fn(&SpiffeId) -> bool + Send + Sync>),
}

impl fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("Any"),
            Self::Exact(id) => write!(f, "Exact({id})"),
            Self::OneOf(ids) => f.debug_tuple("OneOf").field(ids).finish(),
            Self::MemberOf(td) => write!(f, "MemberOf({td})"),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

impl Authorizer {
    /// Accepts `id`, or says why not.
    pub fn authorize(&self, id: &SpiffeId) -> Result<(), String> {
        let ok = match self {
            Self::Any => true,
            Self::Exact(want) => id == want,
            Self::OneOf(ids) => ids.contains(id),
            Self::MemberOf(td) => id.trust_domain() == *td,
            Self::Custom(rule) => rule(id),
        };
        if ok { Ok(()) } else { Err(format!("peer {id} is not authorized ({self:?})")) }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The own certificate, read from the source at each handshake; the parsed key is kept
/// until the SVID changes.
struct SvidResolver {
    source: watch::Receiver<Arc<X509Context>>,
    id: Option<SpiffeId>,
    provider: Arc<CryptoProvider>,
    cached: Mutex<Option<(Vec<u8>, Arc<CertifiedKey>)>>,
}

impl fmt::Debug for SvidResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SvidResolver").field("id", &self.id).finish_non_exhaustive()
    }
}

impl SvidResolver {
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        let context = self.source.borrow().clone();
        let svid = pick(&context, self.id.as_ref())?;
        let leaf = svid.leaf().to_vec();
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((cached_leaf, key)) = cached.as_ref()
            && *cached_leaf == leaf
        {
            return Some(key.clone());
        }
        let der = PrivateKeyDer::Pkcs8(svid.private_key().clone_key());
        let key = self.provider.key_provider.load_private_key(der).ok()?;
        let certified = Arc::new(CertifiedKey::new(svid.cert_chain().to_vec(), key));
        *cached = Some((leaf, certified.clone()));
        Some(certified)
    }
}

impl ResolvesServerCert for SvidResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for SvidResolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Where a verifier reads the bundles from, at each handshake.
pub type BundleFn = Arc<dyn Fn() -> X509BundleSet + Send + Sync>;

/// Verifies a peer's SVID: its chain against the bundle of the peer's own trust domain
/// (read at each handshake), then its SPIFFE ID with an [`Authorizer`]. Serves as both a
/// rustls server-certificate and client-certificate verifier.
pub struct SpiffePeerVerifier {
    /// `None` only for [`SpiffePeerVerifier::dangerous_without_chain`].
    bundles: Option<BundleFn>,
    authorizer: Authorizer,
    algorithms: WebPkiSupportedAlgorithms,
    client_auth_mandatory: bool,
}

impl fmt::Debug for SpiffePeerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffePeerVerifier")
            .field("authorizer", &self.authorizer)
            .field("checks_chain", &self.bundles.is_some())
            .finish_non_exhaustive()
    }
}

impl SpiffePeerVerifier {
    /// A verifier trusting what `bundles` returns at each handshake.
    pub fn new(
        bundles: impl Fn() -> X509BundleSet + Send + Sync + 'static,
        authorizer: Authorizer,
    ) -> Self {
        Self {
            bundles: Some(Arc::new(bundles)),
            authorizer,
            algorithms: provider().signature_verification_algorithms,
            client_auth_mandatory: true,
        }
    }

    /// A verifier trusting the bundles of an [`X509Source`]-like stream of contexts.
    pub fn from_updates(
        updates: watch::Receiver<Arc<X509Context>>,
        authorizer: Authorizer,
    ) -> Self {
        Self::new(move || updates.borrow().bundles.clone(), authorizer)
    }

    /// As a client-certificate verifier: let clients without a certificate in too (the
    /// application then decides what they may do). A certificate that is sent is still
    /// verified in full.
    pub fn optional_client_auth(mut self) -> Self {
        self.client_auth_mandatory = false;
        self
    }

    /// DANGEROUS: checks the peer's SPIFFE ID but not its chain, so anyone can pass. Only
    /// for an explicitly insecure bootstrap, before any bundle is known.
    pub fn dangerous_without_chain(authorizer: Authorizer) -> Self {
        Self {
            bundles: None,
            authorizer,
            algorithms: provider().signature_verification_algorithms,
            client_auth_mandatory: true,
        }
    }

    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<SpiffeId, rustls::Error> {
        let id = match &self.bundles {
            Some(bundles) => {
                let mut chain = vec![end_entity.clone().into_owned()];
                chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
                verify_chain(&chain, &bundles(), now)
            }
            None => spiffe_id_of(end_entity),
        }
        .map_err(|e| rustls::Error::General(format!("peer SVID refused: {e}")))?;
        self.authorizer.authorize(&id).map_err(rustls::Error::General)?;
        Ok(id)
    }

    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }
}

impl ServerCertVerifier for SpiffePeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now).map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for SpiffePeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        self.client_auth_mandatory
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now).map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The parts both configs share.
fn parts(
    updates: watch::Receiver<Arc<X509Context>>,
    own_id: Option<SpiffeId>,
    authorizer: Authorizer,
) -> (Arc<CryptoProvider>, Arc<SvidResolver>, Arc<SpiffePeerVerifier>) {
    let provider = provider();
    let resolver = Arc::new(SvidResolver {
        source: updates.clone(),
        id: own_id,
        provider: provider.clone(),
        cached: Mutex::new(None),
    });
    let verifier = Arc::new(SpiffePeerVerifier::from_updates(updates, authorizer));
    (provider, resolver, verifier)
}

/// A server config presenting the source's SVID (`own_id`, or the default one) and
/// requiring a client SVID the `authorizer` accepts.
pub fn server_config(
    source: &X509Source,
    own_id: Option<SpiffeId>,
    authorizer: Authorizer,
) -> Result<ServerConfig, TlsError> {
    server_config_from(source.updated(), own_id, authorizer)
}

/// [`server_config`] from any stream of contexts (for tests and custom sources).
pub fn server_config_from(
    updates: watch::Receiver<Arc<X509Context>>,
    own_id: Option<SpiffeId>,
    authorizer: Authorizer,
) -> Result<ServerConfig, TlsError> {
    let (provider, resolver, verifier) = parts(updates, own_id, authorizer);
    spiffe_server_config(provider, verifier, resolver)
}

/// A server config with these parts, TLS 1.3 and 1.2, and no session resumption (a
/// resumed handshake would skip verifying a rotated peer certificate).
fn spiffe_server_config(
    provider: Arc<CryptoProvider>,
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    resolver: Arc<SvidResolver>,
) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// [`server_config`] that also lets clients without a certificate complete the handshake
/// (a certificate that is sent is verified in full): for servers that answer such clients
/// themselves, such as a resource server explaining that its bearer tokens are bound to a
/// client certificate ([`crate::bound_bearer`]).
pub fn server_config_optional_client(
    source: &X509Source,
    own_id: Option<SpiffeId>,
    authorizer: Authorizer,
) -> Result<ServerConfig, TlsError> {
    let updates = source.updated();
    let verifier = SpiffePeerVerifier::from_updates(updates.clone(), authorizer.clone());
    let verifier = Arc::new(verifier.optional_client_auth());
    let (provider, resolver, _) = parts(updates, own_id, authorizer);
    spiffe_server_config(provider, verifier, resolver)
}

/// A client config presenting the source's SVID (`own_id`, or the default one) and
/// accepting a server SVID the `authorizer` accepts. The server name given to the
/// connector is not checked (SPIFFE IDs are); any valid name will do.
pub fn client_config(
    source: &X509Source,
    own_id: Option<SpiffeId>,
    authorizer: Authorizer,
) -> Result<ClientConfig, TlsError> {
    client_config_from(source.updated(), own_id, authorizer)
}

/// [`client_config`] from any stream of contexts (for tests and custom sources).
pub fn client_config_from(
    updates: watch::Receiver<Arc<X509Context>>,
    own_id: Option<SpiffeId>,
    authorizer: Authorizer,
) -> Result<ClientConfig, TlsError> {
    let (provider, resolver, verifier) = parts(updates, own_id, authorizer);
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(resolver);
    config.resumption = Resumption::disabled();
    config.enable_sni = false;
    Ok(config)
}

/// The SPIFFE ID of the peer of an established connection (its verified leaf).
pub fn peer_spiffe_id(conn: &CommonState) -> Option<SpiffeId> {
    let leaf = conn.peer_certificates()?.first()?;
    spiffe_id_of(leaf).ok()
}

#[cfg(test)]
mod tests;

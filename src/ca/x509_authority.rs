//! The X.509 authority: a CA certificate and key that mint X.509-SVIDs.
//!
//! An authority is either self-signed (its certificate is the trust anchor) or an
//! intermediate signed by an [`UpstreamAuthority`] (the upstream root is the trust anchor
//! and the authority's certificate travels in every SVID chain). [`X509Authority::load`]
//! rebuilds one from its stored certificate and key after a restart.
//!
//! All time comes from a [`Clock`]. SVIDs are backdated by [`AuthorityOptions::backdate`]
//! for clock skew, never outlive the authority, and their TTL is capped at
//! [`max_svid_ttl`] of the authority's lifetime.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keycard_workload_api::{SpiffeId, TrustDomain};
use rcgen::{Issuer, PublicKeyData, SignatureAlgorithm};
use rustls_pki_types::{CertificateDer, SubjectPublicKeyInfoDer};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::csr::check_public_key;
use super::keys::SigningKey;
use super::template::{self, CaCertInfo, cert_time};
use super::upstream::UpstreamAuthority;
use super::{CaError, max_svid_ttl};
use crate::clock::Clock;

/// Default backdating of `notBefore`, to tolerate clocks that run behind ours.
pub const DEFAULT_BACKDATE: Duration = Duration::from_secs(30);

/// Default common name of a keycard CA certificate.
pub const DEFAULT_CA_COMMON_NAME: &str = "keycard CA";

/// How to create an authority.
#[derive(Debug, Clone)]
pub struct AuthorityOptions {
    /// The trust domain the authority issues for; its certificate's URI SAN.
    pub trust_domain: TrustDomain,
    /// Lifetime of the CA certificate, counted from now.
    pub ca_ttl: Duration,
    /// How far `notBefore` is set in the past, for the CA and for SVIDs.
    pub backdate: Duration,
    /// Common name of the CA subject (a random serialNumber attribute is added to it).
    pub common_name: String,
}

impl AuthorityOptions {
    /// Options with the defaults: 30 s backdate and common name "keycard CA".
    pub fn new(trust_domain: TrustDomain, ca_ttl: Duration) -> Self {
        Self {
            trust_domain,
            ca_ttl,
            backdate: DEFAULT_BACKDATE,
            common_name: DEFAULT_CA_COMMON_NAME.to_string(),
        }
    }
}

/// What an SVID should certify. Every field comes from the registration entry, except the
/// public key, which comes from a [`super::VerifiedCsr`] or the caller's own key.
#[derive(Debug, Clone)]
pub struct SvidRequest {
    /// The subject's public key, DER SubjectPublicKeyInfo.
    pub public_key: SubjectPublicKeyInfoDer<'static>,
    /// The SVID's SPIFFE ID; must have a path and be in the authority's trust domain.
    pub spiffe_id: SpiffeId,
    /// DNS SANs (a leading `*.` wildcard label is allowed).
    pub dns_names: Vec<String>,
    /// Requested lifetime; capped at [`max_svid_ttl`] and at the CA's `notAfter`.
    pub ttl: Duration,
}

/// A freshly minted X.509-SVID.
#[derive(Debug, Clone)]
pub struct SignedSvid {
    /// The SVID certificate.
    pub leaf: CertificateDer<'static>,
    /// The leaf followed by every intermediate up to, not including, the trust anchor:
    /// what the Workload API sends as `x509_svid`.
    pub chain_without_root: Vec<CertificateDer<'static>>,
    /// The serial number, big-endian (16 bytes, positive).
    pub serial: Vec<u8>,
    /// Start of validity (backdated).
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

/// The authority's key as rcgen sees it, owned so the [`Issuer`] can live in the authority.
struct IssuerKey(Arc<SigningKey>);

impl PublicKeyData for IssuerKey {
    fn der_bytes(&self) -> &[u8] {
        self.0.key_pair().der_bytes()
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.0.key_pair().algorithm()
    }
}

impl rcgen::SigningKey for IssuerKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        rcgen::SigningKey::sign(self.0.key_pair(), msg)
    }
}

/// A CA that signs X.509-SVIDs for one trust domain.
pub struct X509Authority {
    trust_domain: TrustDomain,
    cert: CertificateDer<'static>,
    /// Certificates above `cert`, root last; empty when `cert` is self-signed.
    upstream_chain: Vec<CertificateDer<'static>>,
    /// `cert` and the upstream intermediates: what follows a leaf in its chain.
    intermediates: Vec<CertificateDer<'static>>,
    info: CaCertInfo,
    key: Arc<SigningKey>,
    issuer: Issuer<'static, IssuerKey>,
    backdate: Duration,
}

impl std::fmt::Debug for X509Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509Authority")
            .field("trust_domain", &self.trust_domain)
            .field("key", &self.key)
            .field("not_before", &self.info.not_before)
            .field("not_after", &self.info.not_after)
            .field("upstream", &!self.upstream_chain.is_empty())
            .finish_non_exhaustive()
    }
}

impl X509Authority {
    /// Creates a self-signed authority valid from now minus the backdate to now plus
    /// `ca_ttl`.
    pub fn self_signed(
        opts: &AuthorityOptions,
        key: Arc<SigningKey>,
        clock: &dyn Clock,
    ) -> Result<Self, CaError> {
        let validity = ca_validity(opts, clock.now(), None)?;
        let params = template::ca_params(&opts.trust_domain, &opts.common_name, validity, false)?;
        let cert =
            params.self_signed(key.key_pair()).map_err(|e| CaError::Signing(e.to_string()))?;
        Self::load(cert.der().clone(), Vec::new(), key, opts.backdate)
    }

    /// Creates an intermediate authority whose certificate is signed by `upstream`. It
    /// never outlives the upstream certificate.
    pub fn signed_by_upstream(
        opts: &AuthorityOptions,
        key: Arc<SigningKey>,
        upstream: &UpstreamAuthority,
        clock: &dyn Clock,
    ) -> Result<Self, CaError> {
        let up = upstream.info();
        let validity = ca_validity(opts, clock.now(), Some((up.not_before, up.not_after)))?;
        let params = template::ca_params(&opts.trust_domain, &opts.common_name, validity, true)?;
        let issuer = Issuer::from_ca_cert_der(upstream.certificate(), upstream.key().key_pair())
            .map_err(|e| CaError::InvalidCaCertificate(e.to_string()))?;
        let cert = params
            .signed_by(key.key_pair(), &issuer)
            .map_err(|e| CaError::Signing(e.to_string()))?;
        Self::load(cert.der().clone(), upstream.chain().to_vec(), key, opts.backdate)
    }

    /// Rebuilds an authority from its certificate, the certificates above it (root last;
    /// empty when self-signed) and its key. The certificate must be a CA whose only URI
    /// SAN is a trust domain ID and whose public key is `key`'s.
    pub fn load(
        cert: CertificateDer<'static>,
        upstream_chain: Vec<CertificateDer<'static>>,
        key: Arc<SigningKey>,
        backdate: Duration,
    ) -> Result<Self, CaError> {
        let info = CaCertInfo::parse(&cert)?;
        if info.spki != key.public_key_der() {
            return Err(CaError::KeyMismatch);
        }
        let trust_domain = match info.uris.as_slice() {
            [uri] => TrustDomain::new(uri)
                .map_err(|e| CaError::InvalidCaCertificate(format!("URI SAN {uri:?}: {e}")))?,
            _ => {
                return Err(CaError::InvalidCaCertificate(
                    "a CA certificate needs exactly one URI SAN, spiffe://<trust domain>".into(),
                ));
            }
        };
        match upstream_chain.first() {
            None if !info.is_self_issued() => return Err(CaError::UpstreamChainWithoutRoot),
            Some(parent) if CaCertInfo::parse(parent)?.subject != info.issuer => {
                return Err(CaError::InvalidCaCertificate(
                    "the certificate is not issued by the first upstream certificate".into(),
                ));
            }
            _ => {}
        }
        let mut intermediates = Vec::new();
        if !upstream_chain.is_empty() {
            intermediates.push(cert.clone());
            intermediates.extend_from_slice(&upstream_chain[..upstream_chain.len() - 1]);
        }
        let issuer = Issuer::from_ca_cert_der(&cert, IssuerKey(key.clone()))
            .map_err(|e| CaError::InvalidCaCertificate(e.to_string()))?;
        Ok(Self { trust_domain, cert, upstream_chain, intermediates, info, key, issuer, backdate })
    }

    /// The trust domain this authority issues for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The authority's own certificate.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The certificates above this one, root last (empty when self-signed): store them to
    /// pass back to [`X509Authority::load`].
    pub fn upstream_chain(&self) -> &[CertificateDer<'static>] {
        &self.upstream_chain
    }

    /// The trust anchor to publish in the bundle: this certificate when self-signed, the
    /// upstream root otherwise.
    pub fn root(&self) -> &CertificateDer<'static> {
        self.upstream_chain.last().unwrap_or(&self.cert)
    }

    /// The certificates between an SVID and the root: empty when self-signed, else this
    /// certificate followed by the upstream intermediates.
    pub fn chain_without_root(&self) -> &[CertificateDer<'static>] {
        &self.intermediates
    }

    /// The signing key.
    pub fn key(&self) -> &Arc<SigningKey> {
        &self.key
    }

    /// Start of the certificate's validity.
    pub fn not_before(&self) -> SystemTime {
        self.info.not_before
    }

    /// End of the certificate's validity.
    pub fn not_after(&self) -> SystemTime {
        self.info.not_after
    }

    /// The certificate's lifetime, `notAfter - notBefore`.
    pub fn ttl(&self) -> Duration {
        self.info.not_after.duration_since(self.info.not_before).unwrap_or_default()
    }

    /// The subject key identifier, which SVIDs carry as their authority key identifier.
    pub fn subject_key_id(&self) -> Option<&[u8]> {
        self.info.subject_key_id.as_deref()
    }

    /// Mints an X.509-SVID. The TTL is capped at [`max_svid_ttl`] of this CA's lifetime
    /// (with a warning) and `notAfter` at this CA's `notAfter`.
    pub fn sign_x509_svid(
        &self,
        req: &SvidRequest,
        clock: &dyn Clock,
    ) -> Result<SignedSvid, CaError> {
        check_public_key(&req.public_key)?;
        if req.spiffe_id.is_root() {
            return Err(CaError::RootPathId(req.spiffe_id.to_string()));
        }
        if !req.spiffe_id.is_member_of(&self.trust_domain) {
            return Err(CaError::ForeignTrustDomain {
                id: req.spiffe_id.to_string(),
                trust_domain: self.trust_domain.to_string(),
            });
        }
        if req.ttl.is_zero() {
            return Err(CaError::ZeroTtl);
        }
        let max_ttl = max_svid_ttl(self.ttl());
        let ttl = if req.ttl > max_ttl {
            tracing::warn!(
                spiffe_id = %req.spiffe_id,
                requested_secs = req.ttl.as_secs(),
                capped_secs = max_ttl.as_secs(),
                "X.509-SVID TTL exceeds a sixth of the CA lifetime; capping it"
            );
            max_ttl
        } else {
            req.ttl
        };

        let now = clock.now();
        if now < self.info.not_before || now >= self.info.not_after {
            return Err(self.not_valid_now());
        }
        let not_before = now.checked_sub(self.backdate).unwrap_or(now).max(self.info.not_before);
        let not_after =
            now.checked_add(ttl).map_or(self.info.not_after, |t| t.min(self.info.not_after));
        let validity = (
            cert_time(not_before).ok_or(CaError::TtlOutOfRange(self.backdate))?,
            cert_time(not_after).ok_or(CaError::TtlOutOfRange(ttl))?,
        );
        let serial = template::random_serial();
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(&req.public_key)
            .map_err(|e| CaError::UnsupportedKey(e.to_string()))?;
        let params =
            template::svid_params(&req.spiffe_id, &req.dns_names, validity, &serial, &public_key)?;
        let leaf = params
            .signed_by(&public_key, &self.issuer)
            .map_err(|e| CaError::Signing(e.to_string()))?
            .der()
            .clone();
        self.check_minted(&leaf, &req.public_key)?;

        let mut chain_without_root = vec![leaf.clone()];
        chain_without_root.extend(self.intermediates.iter().cloned());
        Ok(SignedSvid {
            leaf,
            chain_without_root,
            serial: serial.to_vec(),
            not_before: template::system_time(validity.0),
            not_after: template::system_time(validity.1),
        })
    }

    /// Checks a minted leaf before it leaves the authority: it must name this CA as issuer
    /// byte for byte (chain building compares raw names) and carry exactly the public key
    /// asked for.
    fn check_minted(&self, leaf: &[u8], public_key: &[u8]) -> Result<(), CaError> {
        let (_, cert) =
            X509Certificate::from_der(leaf).map_err(|e| CaError::Signing(e.to_string()))?;
        if cert.issuer().as_raw() != self.info.subject.as_slice() {
            return Err(CaError::Signing("leaf issuer does not match the CA subject".into()));
        }
        if cert.public_key().raw != public_key {
            return Err(CaError::Signing("leaf public key differs from the one requested".into()));
        }
        Ok(())
    }

    fn not_valid_now(&self) -> CaError {
        CaError::not_valid_now(self.info.not_before, self.info.not_after)
    }
}

/// Validity of a new CA certificate: from now minus the backdate to now plus the TTL,
/// clamped inside the parent's validity when there is a parent.
fn ca_validity(
    opts: &AuthorityOptions,
    now: SystemTime,
    parent: Option<(SystemTime, SystemTime)>,
) -> Result<(time::OffsetDateTime, time::OffsetDateTime), CaError> {
    if opts.ca_ttl.is_zero() {
        return Err(CaError::ZeroTtl);
    }
    let mut not_before = now.checked_sub(opts.backdate).unwrap_or(now);
    let mut not_after = now.checked_add(opts.ca_ttl).ok_or(CaError::TtlOutOfRange(opts.ca_ttl))?;
    if let Some((parent_nb, parent_na)) = parent {
        if now < parent_nb || now >= parent_na {
            return Err(CaError::InvalidCaCertificate(
                "the upstream certificate is not valid now".into(),
            ));
        }
        not_before = not_before.max(parent_nb);
        not_after = not_after.min(parent_na);
    }
    Ok((
        cert_time(not_before).ok_or(CaError::TtlOutOfRange(opts.backdate))?,
        cert_time(not_after).ok_or(CaError::TtlOutOfRange(opts.ca_ttl))?,
    ))
}

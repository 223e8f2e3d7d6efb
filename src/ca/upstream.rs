//! A disk upstream authority: an operator's existing CA (certificate chain and key in PEM
//! files) that signs keycard's CA as an intermediate.
//!
//! The certificate file holds the upstream signing certificate first, then any
//! certificates above it, ending with the self-signed root. That root is what relying
//! parties trust (the bundle); everything below it travels in SVID chains.

use std::fs;
use std::path::Path;

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::CaError;
use super::keys::SigningKey;
use super::template::CaCertInfo;

/// An upstream CA loaded from disk: its chain (signing certificate first, root last) and
/// its private key.
#[derive(Debug)]
pub struct UpstreamAuthority {
    chain: Vec<CertificateDer<'static>>,
    info: CaCertInfo,
    key: SigningKey,
}

impl UpstreamAuthority {
    /// Loads the upstream CA from a PEM certificate chain file and a PEM PKCS#8 key file.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, CaError> {
        let cert_text = fs::read_to_string(cert_path).map_err(CaError::io(cert_path))?;
        let key_text = fs::read_to_string(key_path).map_err(CaError::io(key_path))?;
        let blocks = pem::parse_many(&cert_text)
            .map_err(|e| CaError::InvalidCaCertificate(format!("{}: {e}", cert_path.display())))?;
        let chain = blocks
            .into_iter()
            .filter(|b| b.tag() == "CERTIFICATE")
            .map(|b| CertificateDer::from(b.into_contents()))
            .collect();
        Self::new(chain, SigningKey::from_pkcs8_pem(&key_text)?)
    }

    /// Builds an upstream CA from its chain (signing certificate first, self-signed root
    /// last; one certificate if the upstream is itself the root) and its key. Checks that
    /// each certificate is signed by the next, the last is a self-signed root, and the key
    /// belongs to the first.
    pub fn new(chain: Vec<CertificateDer<'static>>, key: SigningKey) -> Result<Self, CaError> {
        let first = chain
            .first()
            .ok_or_else(|| CaError::InvalidCaCertificate("no certificate in the chain".into()))?;
        let info = CaCertInfo::parse(first)?;
        if info.spki != key.public_key_der() {
            return Err(CaError::KeyMismatch);
        }
        let parsed = chain
            .iter()
            .map(|der| {
                X509Certificate::from_der(der)
                    .map(|(_, c)| c)
                    .map_err(|e| CaError::InvalidCaCertificate(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (i, pair) in parsed.windows(2).enumerate() {
            CaCertInfo::parse(&chain[i + 1])?;
            if pair[0].issuer().as_raw() != pair[1].subject().as_raw()
                || pair[0].verify_signature(Some(pair[1].public_key())).is_err()
            {
                return Err(CaError::InvalidCaCertificate(format!(
                    "certificate {i} of the upstream chain is not signed by certificate {}",
                    i + 1
                )));
            }
        }
        let root = parsed.last().ok_or(CaError::UpstreamChainWithoutRoot)?;
        if root.subject().as_raw() != root.issuer().as_raw() || root.verify_signature(None).is_err()
        {
            return Err(CaError::UpstreamChainWithoutRoot);
        }
        Ok(Self { chain, info, key })
    }

    /// The upstream signing certificate.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    /// The whole chain, signing certificate first, root last.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The self-signed root at the top of the chain: the trust anchor to publish.
    pub fn root(&self) -> &CertificateDer<'static> {
        // `new` refuses an empty chain, so there is always a last element.
        &self.chain[self.chain.len() - 1]
    }

    pub(crate) fn info(&self) -> &CaCertInfo {
        &self.info
    }

    pub(crate) fn key(&self) -> &SigningKey {
        &self.key
    }
}

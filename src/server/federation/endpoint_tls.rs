//! The bundle endpoint's TLS server configurations, one per profile.
//!
//! - `https_spiffe`: the server's own X509-SVID, through the resolver that the agent API
//!   uses too ([`crate::server::agent_api::server_svid::ServerSvid`]): one identity, and a
//!   re-minted certificate is presented at the next handshake.
//! - `https_web`: a certificate chain and key read from PEM files at start-up.
//!
//! Neither asks for a client certificate (the standard forbids requiring one), both speak
//! TLS 1.3 and 1.2 with HTTP/1.1, and neither issues session tickets, so every client
//! sees, and verifies, the current certificate.

use std::path::Path;
use std::sync::Arc;

use rustls::server::{NoServerSessionStorage, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
};

use super::error::EndpointError;

/// The `https_web` resolver: always the chain and key read by [`load_web_identity`].
pub fn web_resolver(key: CertifiedKey) -> Arc<dyn ResolvesServerCert> {
    Arc::new(rustls::sign::SingleCertAndKey::from(key))
}

/// A configuration that presents what `resolver` picks (the server's SVID for
/// `https_spiffe`, [`web_resolver`] for `https_web`) and asks for no client certificate.
pub fn with_resolver(
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<Arc<ServerConfig>, EndpointError> {
    let mut config = ServerConfig::builder_with_provider(crate::wire::tls_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Reads the `https_web` certificate chain and key, and checks that they belong together.
pub fn load_web_identity(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, EndpointError> {
    let fail = |key: &'static str, path: &Path, reason: String| EndpointError::File {
        key,
        path: path.display().to_string(),
        reason,
    };
    let chain = crate::pemfile::read_certificates(cert_file)
        .map_err(|e| fail("cert_file", cert_file, e.reason))?;
    let text = std::fs::read(key_file).map_err(|e| fail("key_file", key_file, e.to_string()))?;
    let der = private_key(&text).map_err(|reason| fail("key_file", key_file, reason))?;
    let signer = crate::wire::tls_provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| fail("key_file", key_file, format!("unusable key: {e}")))?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|e| {
        fail("key_file", key_file, format!("is not the key of the certificate in cert_file ({e})"))
    })?;
    Ok(certified)
}

/// The first private key block of a PEM file: PKCS#8, SEC1 (EC) or PKCS#1 (RSA).
fn private_key(text: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    let blocks = pem::parse_many(text).map_err(|e| format!("not PEM: {e}"))?;
    for block in blocks {
        let der = block.contents().to_vec();
        match block.tag() {
            "PRIVATE KEY" => return Ok(PrivatePkcs8KeyDer::from(der).into()),
            "EC PRIVATE KEY" => return Ok(PrivateSec1KeyDer::from(der).into()),
            "RSA PRIVATE KEY" => return Ok(PrivatePkcs1KeyDer::from(der).into()),
            _ => {}
        }
    }
    Err("no PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY block in the file".into())
}

/// The certificates of a PEM text (for tests and the fetch client's CA file).
pub(crate) fn pem_certificates(text: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = pem::parse_many(text)
        .map_err(|e| format!("not PEM: {e}"))?
        .into_iter()
        .filter(|block| block.tag() == "CERTIFICATE")
        .map(|block| CertificateDer::from(block.into_contents()))
        .collect();
    if certs.is_empty() {
        return Err("no CERTIFICATE block".into());
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_identity_files_are_read_and_bad_ones_named() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        load_web_identity(&cert_path, &key_path).unwrap();

        let missing = dir.path().join("missing.pem");
        let e = load_web_identity(&missing, &key_path).unwrap_err().to_string();
        assert!(e.contains("bundle_endpoint.cert_file") && e.contains("missing.pem"), "{e}");
        let e = load_web_identity(&cert_path, &cert_path).unwrap_err().to_string();
        assert!(e.contains("bundle_endpoint.key_file") && e.contains("no PRIVATE KEY"), "{e}");
        let other = rcgen::KeyPair::generate().unwrap();
        let other_path = dir.path().join("other.pem");
        std::fs::write(&other_path, other.serialize_pem()).unwrap();
        let e = load_web_identity(&cert_path, &other_path).unwrap_err().to_string();
        assert!(e.contains("not the key of the certificate"), "{e}");
    }

    #[test]
    fn sec1_keys_are_read() {
        let key = rcgen::KeyPair::generate().unwrap();
        // PKCS#8 for P-256 embeds the SEC1 ECPrivateKey; rcgen writes PKCS#8 only, so the
        // SEC1 form is taken from it.
        let pkcs8 = key.serialize_der();
        let sec1 = sec1_from_pkcs8(&pkcs8);
        let pem = pem::encode(&pem::Pem::new("EC PRIVATE KEY", sec1));
        let der = private_key(pem.as_bytes()).unwrap();
        assert!(matches!(der, PrivateKeyDer::Sec1(_)));
        crate::wire::tls_provider().key_provider.load_private_key(der).unwrap();
    }

    /// The OCTET STRING privateKey of a PKCS#8 EC key: the SEC1 ECPrivateKey.
    fn sec1_from_pkcs8(pkcs8: &[u8]) -> Vec<u8> {
        // The SEC1 structure starts with SEQUENCE, INTEGER 1: `30 xx 02 01 01`.
        let start = pkcs8.windows(3).position(|w| w == [0x02, 0x01, 0x01]).unwrap() - 2;
        pkcs8[start..].to_vec()
    }
}

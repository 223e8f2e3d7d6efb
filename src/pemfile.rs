//! Reading PEM files an operator points keycard at (bundles, node certificates, keys),
//! with errors that name the file and what was expected in it.

use std::path::Path;

use rustls_pki_types::CertificateDer;

use crate::ca::SigningKey;

/// Why a PEM file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct PemFileError {
    /// The file.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

fn fail(path: &Path, reason: impl Into<String>) -> PemFileError {
    PemFileError { path: path.display().to_string(), reason: reason.into() }
}

/// Every `CERTIFICATE` block of the file, in order; at least one.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemFileError> {
    let text = std::fs::read(path).map_err(|e| fail(path, e.to_string()))?;
    let certs: Vec<CertificateDer<'static>> = pem::parse_many(&text)
        .map_err(|e| fail(path, format!("not PEM: {e}")))?
        .into_iter()
        .filter(|block| block.tag() == "CERTIFICATE")
        .map(|block| CertificateDer::from(block.into_contents()))
        .collect();
    if certs.is_empty() {
        return Err(fail(path, "no CERTIFICATE block in the file"));
    }
    Ok(certs)
}

/// The file's PKCS#8 `PRIVATE KEY`.
pub fn read_private_key(path: &Path) -> Result<SigningKey, PemFileError> {
    let text = std::fs::read_to_string(path).map_err(|e| fail(path, e.to_string()))?;
    SigningKey::from_pkcs8_pem(&text).map_err(|e| fail(path, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::KeyType;

    #[test]
    fn certificates_and_keys_are_read_and_bad_files_named() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate(KeyType::EcP256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["node".into()])
            .unwrap()
            .self_signed(key.key_pair())
            .unwrap();
        let pem_path = dir.path().join("node.pem");
        std::fs::write(&pem_path, format!("{}{}", cert.pem(), cert.pem())).unwrap();
        assert_eq!(read_certificates(&pem_path).unwrap().len(), 2);
        let key_path = dir.path().join("node.key");
        std::fs::write(&key_path, key.key_pair().serialize_pem()).unwrap();
        assert_eq!(read_private_key(&key_path).unwrap().public_key_der(), key.public_key_der());

        let e = read_certificates(&key_path).unwrap_err().to_string();
        assert!(e.contains("node.key") && e.contains("no CERTIFICATE"), "{e}");
        let e = read_private_key(&pem_path).unwrap_err().to_string();
        assert!(e.contains("node.pem"), "{e}");
        let e = read_certificates(&dir.path().join("missing.pem")).unwrap_err().to_string();
        assert!(e.contains("missing.pem"), "{e}");
    }
}

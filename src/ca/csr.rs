//! Checking certificate signing requests and the public keys the CA certifies.
//!
//! A CSR chooses nothing but its public key: the SPIFFE ID, DNS names and TTL of an SVID
//! come from the registration entry. So [`verify_csr`] checks the request (size, encoding,
//! proof of possession by its self-signature, key type and strength) and returns a
//! [`VerifiedCsr`] that exposes the public key and nothing else.

use rustls_pki_types::SubjectPublicKeyInfoDer;
use x509_cert::der::Decode as _;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS1_SHA1WITHRSA, OID_SHA1_WITH_RSA, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::CaError;

/// Default cap on the size of a DER CSR, in bytes.
pub const DEFAULT_MAX_CSR_LEN: usize = 8 * 1024;

/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;

/// A CSR whose signature verified and whose key is acceptable. Only its public key is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCsr {
    public_key: SubjectPublicKeyInfoDer<'static>,
}

impl VerifiedCsr {
    /// The requester's public key, DER SubjectPublicKeyInfo.
    pub fn public_key(&self) -> &SubjectPublicKeyInfoDer<'static> {
        &self.public_key
    }

    /// Takes the public key out.
    pub fn into_public_key(self) -> SubjectPublicKeyInfoDer<'static> {
        self.public_key
    }
}

/// Checks a DER PKCS#10 CSR of at most `max_len` bytes: it must parse with nothing after
/// it, be signed by its own key with a non-SHA-1 algorithm, and carry a key that
/// [`check_public_key`] accepts.
pub fn verify_csr(der: &[u8], max_len: usize) -> Result<VerifiedCsr, CaError> {
    if der.len() > max_len {
        return Err(CaError::CsrTooLarge { len: der.len(), max: max_len });
    }
    let (rest, csr) = X509CertificationRequest::from_der(der)
        .map_err(|e| CaError::CsrMalformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CaError::CsrMalformed(format!("{} bytes after the CSR", rest.len())));
    }
    // x509-parser reads some encodings DER forbids (the csr fuzz target found one with
    // another outer tag than SEQUENCE): the strict decoder has the last word.
    x509_cert::request::CertReq::from_der(der)
        .map_err(|e| CaError::CsrMalformed(format!("not DER: {e}")))?;
    // A signature or key BIT STRING that ends inside a byte is not one any algorithm we
    // take produces; x509-parser ignores the count (found by the agent_api fuzz target).
    let spki = &csr.certification_request_info.subject_pki;
    if csr.signature_value.unused_bits != 0 || spki.subject_public_key.unused_bits != 0 {
        return Err(CaError::CsrMalformed("a BIT STRING with unused bits".into()));
    }
    let sig_alg = &csr.signature_algorithm.algorithm;
    if *sig_alg == OID_PKCS1_SHA1WITHRSA || *sig_alg == OID_SHA1_WITH_RSA {
        return Err(CaError::CsrUnsupportedSignature("SHA-1 with RSA".into()));
    }
    // Check the key first, so a weak key is reported as such rather than as a bad signature.
    check_spki(spki)?;
    csr.verify_signature().map_err(|e| match e {
        x509_parser::error::X509Error::SignatureUnsupportedAlgorithm => {
            CaError::CsrUnsupportedSignature(sig_alg.to_id_string())
        }
        _ => CaError::CsrBadSignature,
    })?;
    Ok(VerifiedCsr { public_key: SubjectPublicKeyInfoDer::from(spki.raw.to_vec()) })
}

/// Checks that a DER SubjectPublicKeyInfo is a key the CA signs for: EC P-256 or P-384
/// (uncompressed point), Ed25519, or RSA of at least 2048 bits.
pub fn check_public_key(spki_der: &[u8]) -> Result<(), CaError> {
    let (rest, spki) = SubjectPublicKeyInfo::from_der(spki_der)
        .map_err(|e| CaError::UnsupportedKey(format!("not a SubjectPublicKeyInfo: {e}")))?;
    if !rest.is_empty() {
        return Err(CaError::UnsupportedKey("bytes after the SubjectPublicKeyInfo".into()));
    }
    check_spki(&spki)
}

fn check_spki(spki: &SubjectPublicKeyInfo<'_>) -> Result<(), CaError> {
    let alg = &spki.algorithm.algorithm;
    let key = spki.subject_public_key.data.as_ref();
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
        let point_len = match curve {
            Some(c) if c == OID_EC_P256 => 65,
            Some(c) if c == OID_NIST_EC_P384 => 97,
            Some(c) => return Err(CaError::UnsupportedKey(format!("EC curve {c}"))),
            None => return Err(CaError::UnsupportedKey("EC key without a named curve".into())),
        };
        if key.len() != point_len || key.first() != Some(&4) {
            return Err(CaError::UnsupportedKey(
                "EC point is not uncompressed or wrong size".into(),
            ));
        }
        Ok(())
    } else if *alg == OID_SIG_ED25519 {
        if spki.algorithm.parameters.is_some() || key.len() != 32 {
            return Err(CaError::UnsupportedKey("malformed Ed25519 key".into()));
        }
        Ok(())
    } else if *alg == OID_PKCS1_RSAENCRYPTION {
        let bits = rsa_modulus_bits(spki)?;
        if bits < MIN_RSA_BITS {
            return Err(CaError::WeakRsaKey { bits });
        }
        Ok(())
    } else {
        Err(CaError::UnsupportedKey(format!("key algorithm {alg}")))
    }
}

fn rsa_modulus_bits(spki: &SubjectPublicKeyInfo<'_>) -> Result<usize, CaError> {
    let parsed = spki.parsed().map_err(|e| CaError::UnsupportedKey(format!("RSA key: {e}")))?;
    let x509_parser::public_key::PublicKey::RSA(rsa) = parsed else {
        return Err(CaError::UnsupportedKey("malformed RSA key".into()));
    };
    let modulus = rsa.modulus;
    let first = modulus.iter().position(|&b| b != 0).unwrap_or(modulus.len());
    let significant = &modulus[first..];
    Ok(match significant.first() {
        Some(&top) => significant.len() * 8 - top.leading_zeros() as usize,
        None => 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::keys::{KeyType, SigningKey};
    use std::process::Command;

    fn csr_for(key: &SigningKey) -> Vec<u8> {
        let params = rcgen::CertificateParams::new(vec!["ignored.example".to_string()]).unwrap();
        params.serialize_request(key.key_pair()).unwrap().der().to_vec()
    }

    /// A CSR made by the openssl binary (for RSA keys, which ring cannot generate).
    fn openssl_csr(key_args: &[&str], digest: &str) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("csr.der");
        let status = Command::new("openssl")
            .args(["req", "-new", "-nodes", "-subj", "/CN=x", digest])
            .args(key_args)
            .args(["-keyout", dir.path().join("k.pem").to_str().unwrap()])
            .args(["-outform", "DER", "-out", out.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
        std::fs::read(out).unwrap()
    }

    #[test]
    fn good_csrs_yield_exactly_their_public_key() {
        for t in [KeyType::EcP256, KeyType::EcP384, KeyType::Ed25519] {
            let key = SigningKey::generate(t).unwrap();
            let verified = verify_csr(&csr_for(&key), DEFAULT_MAX_CSR_LEN).unwrap();
            assert_eq!(verified.public_key().as_ref(), key.public_key_der().as_slice());
        }
    }

    #[test]
    fn oversized_csr_is_refused_before_parsing() {
        let der = vec![0u8; DEFAULT_MAX_CSR_LEN + 1];
        assert!(matches!(verify_csr(&der, DEFAULT_MAX_CSR_LEN), Err(CaError::CsrTooLarge { .. })));
        let key = SigningKey::generate(KeyType::EcP256).unwrap();
        let csr = csr_for(&key);
        assert!(matches!(verify_csr(&csr, csr.len() - 1), Err(CaError::CsrTooLarge { .. })));
    }

    #[test]
    fn garbage_and_trailing_bytes_are_malformed() {
        assert!(matches!(verify_csr(b"\x30\x03abc", 100), Err(CaError::CsrMalformed(_))));
        let mut csr = csr_for(&SigningKey::generate(KeyType::EcP256).unwrap());
        csr.push(0);
        assert!(matches!(verify_csr(&csr, 9000), Err(CaError::CsrMalformed(_))));
    }

    #[test]
    fn a_csr_that_is_not_der_is_malformed() {
        // A good CSR whose outer SEQUENCE tag is replaced by [APPLICATION 16]: x509-parser
        // reads it and the signature still verifies, but it is not DER (found by the csr
        // fuzz target, tests/fuzz/artifacts/csr/).
        let mut csr = csr_for(&SigningKey::generate(KeyType::EcP256).unwrap());
        assert!(verify_csr(&csr, 9000).is_ok());
        csr[0] = 0x50;
        let err = verify_csr(&csr, 9000).unwrap_err();
        assert!(matches!(&err, CaError::CsrMalformed(m) if m.starts_with("not DER")), "{err}");
    }

    #[test]
    fn a_signature_with_unused_bits_is_malformed() {
        // The signature BIT STRING (the CSR's last element) declares its trailing zero bits
        // unused: still DER, same length, and x509-parser verifies the bytes, but no
        // signature ends inside a byte (found by the agent_api fuzz target).
        let csr = loop {
            let csr = csr_for(&SigningKey::generate(KeyType::Ed25519).unwrap());
            if csr[csr.len() - 1] & 1 == 0 {
                break csr;
            }
        };
        let mut bad = csr.clone();
        let unused_at = bad.len() - 65;
        assert_eq!(&bad[unused_at - 2..=unused_at], &[0x03, 0x41, 0x00]);
        bad[unused_at] = 1;
        assert!(verify_csr(&csr, 9000).is_ok());
        let err = verify_csr(&bad, 9000).unwrap_err();
        assert!(matches!(&err, CaError::CsrMalformed(m) if m.contains("unused bits")), "{err}");
    }

    #[test]
    fn tampered_csr_fails_its_signature_check() {
        let key = SigningKey::generate(KeyType::EcP256).unwrap();
        let mut csr = csr_for(&key);
        // Flip a byte inside the DNS name the CSR asks for: still parses, no longer verifies.
        let pos = csr.windows(7).position(|w| w == b"ignored").unwrap();
        csr[pos] = b'J';
        assert!(matches!(verify_csr(&csr, 9000), Err(CaError::CsrBadSignature)));
    }

    #[test]
    fn rsa_keys_need_2048_bits_and_sha1_is_refused() {
        let ok = verify_csr(&openssl_csr(&["-newkey", "rsa:2048"], "-sha256"), 9000).unwrap();
        assert!(check_public_key(ok.public_key()).is_ok());
        let weak = verify_csr(&openssl_csr(&["-newkey", "rsa:1024"], "-sha256"), 9000);
        assert!(matches!(weak, Err(CaError::WeakRsaKey { bits: 1024 })), "{weak:?}");
        let sha1 = verify_csr(&openssl_csr(&["-newkey", "rsa:2048"], "-sha1"), 9000);
        assert!(matches!(sha1, Err(CaError::CsrUnsupportedSignature(_))), "{sha1:?}");
    }

    #[test]
    fn unsupported_curves_are_refused() {
        let args = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp256k1"];
        let err = verify_csr(&openssl_csr(&args, "-sha256"), 9000).unwrap_err();
        assert!(matches!(err, CaError::UnsupportedKey(_)), "{err}");
        assert!(matches!(check_public_key(b"\x30\x00"), Err(CaError::UnsupportedKey(_))));
    }
}

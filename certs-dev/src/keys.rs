//! Deterministic ECDSA P-256 keys and signatures, so that running the generator again
//! writes byte-for-byte the same files (see README.md, "Regenerating").
//!
//! Each key is derived from a fixed seed and a label naming its use (the key file's path):
//! the private scalar is SHA-256 of the seed and the label. Signatures are deterministic by
//! RFC 6979 (the `p256` crate), where ring's are randomised. Nothing here is secret: every
//! private key of the development PKI is published anyway.

use anyhow::{Context, Result, anyhow};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use rcgen::{PublicKeyData, SignatureAlgorithm};

/// The seed every key is derived from. Changing it changes every key and certificate.
const SEED: &str = "keycard certs-dev v1 (public development keys, never for production)";

/// A P-256 key derived from a label; it signs certificates for rcgen.
pub struct DevKey {
    secret: SigningKey,
    /// The uncompressed public point, as rcgen wants it for the SubjectPublicKeyInfo.
    public: Vec<u8>,
}

impl DevKey {
    /// The key for `label`. A digest that is no valid scalar (zero, or not below the group
    /// order: odds about 2^-32) is hashed again with a counter until one is.
    pub fn derive(label: &str) -> Result<DevKey> {
        for counter in 0u8..=u8::MAX {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            ctx.update(SEED.as_bytes());
            ctx.update(&[0]);
            ctx.update(label.as_bytes());
            ctx.update(&[counter]);
            if let Ok(secret) = SigningKey::from_slice(ctx.finish().as_ref()) {
                let public = secret.verifying_key().to_encoded_point(false).as_bytes().to_vec();
                return Ok(DevKey { secret, public });
            }
        }
        Err(anyhow!("no valid P-256 scalar derived for {label:?}"))
    }

    /// The private key as PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), public key included.
    pub fn pkcs8_pem(&self) -> Result<String> {
        let pem = self.secret.to_pkcs8_pem(LineEnding::LF).context("encoding a PKCS#8 key")?;
        Ok(pem.to_string())
    }
}

impl PublicKeyData for DevKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl rcgen::SigningKey for DevKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let signature: Signature = self.secret.sign(msg);
        Ok(signature.to_der().as_bytes().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_label_gives_the_same_key_and_signature() {
        let a = DevKey::derive("example.org/root.key.pem").unwrap();
        let b = DevKey::derive("example.org/root.key.pem").unwrap();
        let c = DevKey::derive("example.com/root.key.pem").unwrap();
        assert_eq!(a.pkcs8_pem().unwrap(), b.pkcs8_pem().unwrap());
        assert_ne!(a.der_bytes(), c.der_bytes());
        use rcgen::SigningKey as _;
        assert_eq!(a.sign(b"tbs").unwrap(), b.sign(b"tbs").unwrap());
    }

    #[test]
    fn keys_load_in_ring_and_signatures_verify() {
        let key = DevKey::derive("test").unwrap();
        // rcgen's KeyPair is ring underneath: it must accept the PKCS#8 file as written.
        let pair = rcgen::KeyPair::from_pem(&key.pkcs8_pem().unwrap()).unwrap();
        assert_eq!(pair.der_bytes(), key.der_bytes());
        use rcgen::SigningKey as _;
        let sig = key.sign(b"message").unwrap();
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            key.der_bytes(),
        );
        public.verify(b"message", &sig).unwrap();
    }
}

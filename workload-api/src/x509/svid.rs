//! The X509-SVID: a SPIFFE ID's certificate chain and its private key.

use std::fmt;

use ring::signature::{self, KeyPair as _};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer, UnixTime};
use x509_parser::certificate::X509Certificate;

use super::bundle::X509BundleSet;
use super::error::X509SvidError;
use super::rules::check_certificates;
use super::{PemProblem, pem_certificates, verify_chain};
use crate::spiffe_id::SpiffeId;

/// An X509-SVID: a certificate chain (leaf first) whose leaf carries a SPIFFE ID, and the
/// PKCS#8 private key of the leaf.
///
/// A value can only be built through a constructor that applies every rule that needs
/// no bundle and no clock, and checks that the key matches the leaf. [`X509Svid::validate`]
/// adds the validity period and the chain to a bundle. `Debug` never shows the key.
pub struct X509Svid {
    spiffe_id: SpiffeId,
    cert_chain: Vec<CertificateDer<'static>>,
    private_key: PrivatePkcs8KeyDer<'static>,
    /// Operator-chosen name that tells SVIDs of one workload apart (Workload API `hint`).
    hint: Option<String>,
}

impl X509Svid {
    /// Builds an SVID from a DER chain (leaf first) and an unencrypted PKCS#8 DER key.
    pub fn from_der(
        cert_chain: Vec<CertificateDer<'static>>,
        private_key: PrivatePkcs8KeyDer<'static>,
    ) -> Result<Self, X509SvidError> {
        let (parsed, spiffe_id) = check_certificates(&cert_chain)?;
        check_key_match(&parsed[0], &private_key)?;
        drop(parsed);
        Ok(Self { spiffe_id, cert_chain, private_key, hint: None })
    }

    /// Builds an SVID from concatenated DER certificates (the Workload API `x509_svid`
    /// field) and a PKCS#8 DER key (`x509_svid_key`).
    pub fn parse_der(chain_der: &[u8], key_der: &[u8]) -> Result<Self, X509SvidError> {
        let mut chain = Vec::new();
        let mut rest = chain_der;
        while !rest.is_empty() {
            let index = chain.len();
            let (after, _) = x509_parser::parse_x509_certificate(rest)
                .map_err(|e| X509SvidError::Der { index, reason: e.to_string() })?;
            let (one, after) = rest.split_at(rest.len() - after.len());
            chain.push(CertificateDer::from(one.to_vec()));
            rest = after;
        }
        Self::from_der(chain, PrivatePkcs8KeyDer::from(key_der.to_vec()))
    }

    /// Builds an SVID from PEM text: `CERTIFICATE` blocks (leaf first) and one
    /// `PRIVATE KEY` (PKCS#8) block.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Self, X509SvidError> {
        let chain = pem_certificates(chain_pem).map_err(|p| match p {
            PemProblem::Decode(reason) => X509SvidError::Pem(reason),
            PemProblem::Label { index, label } => X509SvidError::Pem(format!(
                "block {index} of the certificate chain is {label:?}, expected \"CERTIFICATE\""
            )),
        })?;
        let key = pem::parse(key_pem).map_err(|e| X509SvidError::Pem(e.to_string()))?;
        if key.tag() != "PRIVATE KEY" {
            return Err(X509SvidError::Pem(format!(
                "key block is {:?}, expected \"PRIVATE KEY\" (unencrypted PKCS#8)",
                key.tag()
            )));
        }
        Self::from_der(chain, PrivatePkcs8KeyDer::from(key.into_contents()))
    }

    /// Sets the hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The SPIFFE ID of the leaf.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// The chain, leaf first.
    pub fn cert_chain(&self) -> &[CertificateDer<'static>] {
        &self.cert_chain
    }

    /// The leaf certificate.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        // Constructors reject empty chains, so the chain always has a first element.
        &self.cert_chain[0]
    }

    /// The PKCS#8 private key of the leaf.
    pub fn private_key(&self) -> &PrivatePkcs8KeyDer<'static> {
        &self.private_key
    }

    /// The hint, if any.
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }

    /// The chain as PEM `CERTIFICATE` blocks, leaf first.
    pub fn chain_pem(&self) -> String {
        let blocks: Vec<pem::Pem> =
            self.cert_chain.iter().map(|c| pem::Pem::new("CERTIFICATE", c.to_vec())).collect();
        pem::encode_many_config(&blocks, lf())
    }

    /// The private key as a PEM `PRIVATE KEY` block. This is a secret: write it only to
    /// private (0600) files.
    pub fn key_pem(&self) -> String {
        let block = pem::Pem::new("PRIVATE KEY", self.private_key.secret_pkcs8_der().to_vec());
        pem::encode_config(&block, lf())
    }

    /// Validates the whole SVID at `now`: every rule of [`verify_chain`] against `bundles`,
    /// then that the private key matches the leaf.
    pub fn validate(&self, bundles: &X509BundleSet, now: UnixTime) -> Result<(), X509SvidError> {
        verify_chain(&self.cert_chain, bundles, now)?;
        let leaf = super::rules::parse_cert(self.leaf().as_ref(), 0)?;
        check_key_match(&leaf, &self.private_key)
    }
}

impl Clone for X509Svid {
    fn clone(&self) -> Self {
        Self {
            spiffe_id: self.spiffe_id.clone(),
            cert_chain: self.cert_chain.clone(),
            private_key: self.private_key.clone_key(),
            hint: self.hint.clone(),
        }
    }
}

impl fmt::Debug for X509Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("cert_chain_len", &self.cert_chain.len())
            .field("private_key", &"<redacted>")
            .field("hint", &self.hint)
            .finish()
    }
}

fn lf() -> pem::EncodeConfig {
    pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF)
}

/// Checks that `key` is the private half of the leaf's public key.
fn check_key_match(
    leaf: &X509Certificate<'_>,
    key: &PrivatePkcs8KeyDer<'_>,
) -> Result<(), X509SvidError> {
    let public = public_key_of(key.secret_pkcs8_der())?;
    if public.as_slice() != leaf.public_key().subject_public_key.data.as_ref() {
        return Err(X509SvidError::KeyMismatch);
    }
    Ok(())
}

/// The public key (as the bytes of an SPKI's `subjectPublicKey` BIT STRING) of a PKCS#8
/// ECDSA P-256/P-384, Ed25519 or RSA private key.
fn public_key_of(pkcs8: &[u8]) -> Result<Vec<u8>, X509SvidError> {
    let rng = ring::rand::SystemRandom::new();
    for alg in
        [&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &signature::ECDSA_P384_SHA384_ASN1_SIGNING]
    {
        if let Ok(pair) = signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8, &rng) {
            return Ok(pair.public_key().as_ref().to_vec());
        }
    }
    // `maybe_unchecked` also accepts PKCS#8 v1 (no embedded public key, as OpenSSL writes
    // it); the public key is then derived from the seed, which is what we compare.
    if let Ok(pair) = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8) {
        return Ok(pair.public_key().as_ref().to_vec());
    }
    if let Ok(pair) = signature::RsaKeyPair::from_pkcs8(pkcs8) {
        return Ok(pair.public_key().as_ref().to_vec());
    }
    Err(X509SvidError::BadPrivateKey(
        "not an unencrypted PKCS#8 ECDSA P-256/P-384, Ed25519 or RSA key".to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x509::test_support::*;

    fn svid(w: &World) -> X509Svid {
        X509Svid::from_der(w.chain(), w.leaf.key.clone_key()).unwrap()
    }

    #[test]
    fn valid_svid_validates() {
        let w = world();
        let s = svid(&w).with_hint("internal");
        assert_eq!(s.spiffe_id().as_str(), "spiffe://example.org/web");
        assert_eq!(s.hint(), Some("internal"));
        assert_eq!(s.leaf(), &w.leaf.cert);
        s.validate(&w.bundles, now()).unwrap();
    }

    #[test]
    fn ed25519_and_p384_keys_match() {
        let r = root(ca_params("example.org", "root"));
        for alg in [&rcgen::PKCS_ED25519, &rcgen::PKCS_ECDSA_P384_SHA384] {
            let l = leaf_with_alg(leaf_params("spiffe://example.org/x"), &r, alg);
            let s = X509Svid::from_der(vec![l.cert], l.key).unwrap();
            s.validate(&bundles(&[("example.org", &r)]), now()).unwrap();
        }
    }

    #[test]
    fn pem_round_trip() {
        let w = world();
        let s = svid(&w);
        let back = X509Svid::from_pem(&s.chain_pem(), &s.key_pem()).unwrap();
        assert_eq!(back.cert_chain(), s.cert_chain());
        assert_eq!(back.private_key().secret_pkcs8_der(), s.private_key().secret_pkcs8_der());
    }

    #[test]
    fn concatenated_der_parses() {
        let w = world();
        let der: Vec<u8> = w.chain().iter().flat_map(|c| c.to_vec()).collect();
        let s = X509Svid::parse_der(&der, w.leaf.key.secret_pkcs8_der()).unwrap();
        assert_eq!(s.cert_chain(), w.chain().as_slice());
    }

    #[test]
    fn pem() {
        let w = world();
        let key = svid(&w).key_pem();
        let e = X509Svid::from_pem("-----BEGIN CERTIFICATE-----\n%%%\n", &key).unwrap_err();
        assert!(matches!(e, X509SvidError::Pem(_)), "{e:?}");
        let chain = svid(&w).chain_pem();
        let e = X509Svid::from_pem(&chain, &chain).unwrap_err();
        assert!(matches!(e, X509SvidError::Pem(_)), "{e:?}");
    }

    #[test]
    fn bad_private_key() {
        let w = world();
        let e = X509Svid::from_der(w.chain(), PrivatePkcs8KeyDer::from(vec![0x30, 0x03, 1, 2, 3]))
            .unwrap_err();
        assert!(matches!(e, X509SvidError::BadPrivateKey(_)), "{e:?}");
    }

    #[test]
    fn key_mismatch() {
        let w = world();
        let other = leaf(leaf_params("spiffe://example.org/web"), &w.intermediate);
        let e = X509Svid::from_der(w.chain(), other.key).unwrap_err();
        assert_eq!(e, X509SvidError::KeyMismatch);
    }

    #[test]
    fn debug_does_not_contain_key_bytes() {
        let w = world();
        let s = svid(&w);
        let text = format!("{s:?}");
        assert!(text.contains("spiffe://example.org/web"), "{text}");
        assert!(text.contains("redacted"), "{text}");
        let key = s.private_key().secret_pkcs8_der();
        // Neither the bytes (as decimal list or hex) nor any long run of them leaks.
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!text.contains(&hex[hex.len() - 32..]), "{text}");
        assert!(!text.contains(&format!("{:?}", &key[key.len() - 8..])[1..20]), "{text}");
    }
}

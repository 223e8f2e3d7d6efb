//! Signing keys and the key manager that creates, stores and deletes them.
//!
//! A [`SigningKey`] is one private key that can sign certificates (through rcgen) and raw
//! bytes (for JWTs). A [`KeyManager`] keeps keys by [`KeyId`]; [`MemoryKeyManager`] keeps
//! them in memory only, [`super::DiskKeyManager`] in PKCS#8 files. No type here prints key
//! material in its `Debug` output.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519, PublicKeyData};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair};
use rustls_pki_types::PrivatePkcs8KeyDer;

use super::CaError;

/// The kind of a signing key. Names (serde and [`FromStr`]) are SPIRE's: `ec-p256`
/// (the default), `ec-p384`, `ed25519`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum KeyType {
    /// ECDSA on NIST P-256 with SHA-256 (JWT `ES256`).
    #[default]
    EcP256,
    /// ECDSA on NIST P-384 with SHA-384 (JWT `ES384`).
    EcP384,
    /// Ed25519 (JWT `EdDSA`).
    Ed25519,
}

impl KeyType {
    /// The configuration name: `ec-p256`, `ec-p384` or `ed25519`.
    pub fn name(self) -> &'static str {
        match self {
            KeyType::EcP256 => "ec-p256",
            KeyType::EcP384 => "ec-p384",
            KeyType::Ed25519 => "ed25519",
        }
    }

    fn rcgen_algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyType::EcP256 => &PKCS_ECDSA_P256_SHA256,
            KeyType::EcP384 => &PKCS_ECDSA_P384_SHA384,
            KeyType::Ed25519 => &PKCS_ED25519,
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KeyType {
    type Err = CaError;
    fn from_str(s: &str) -> Result<Self, CaError> {
        [KeyType::EcP256, KeyType::EcP384, KeyType::Ed25519]
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| CaError::UnknownKeyType(s.to_string()))
    }
}

/// The name of a key in a [`KeyManager`]: 1 to 128 bytes of `[A-Za-z0-9._-]`, not starting
/// with `.`. Because it becomes a file name, it can never name a path outside the key
/// directory (no `/`, no `..`, no hidden files).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    /// Parses a key id.
    pub fn new(id: &str) -> Result<Self, CaError> {
        let ok_char = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
        let valid =
            !id.is_empty() && id.len() <= 128 && !id.starts_with('.') && id.bytes().all(ok_char);
        if valid { Ok(Self(id.to_string())) } else { Err(CaError::InvalidKeyId(id.to_string())) }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The signer for raw bytes: ring key pairs whose ECDSA output is fixed-length `r || s`
/// (what JWS wants), unlike the ASN.1 signatures rcgen puts in certificates.
enum RawSigner {
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// One private key. Signs certificates through [`SigningKey::key_pair`] and raw bytes
/// through [`SigningKey::sign`]. Its `Debug` output shows only the key type and the public
/// key.
pub struct SigningKey {
    key_type: KeyType,
    key_pair: KeyPair,
    raw: RawSigner,
    rng: SystemRandom,
}

impl SigningKey {
    /// Generates a new random key.
    pub fn generate(key_type: KeyType) -> Result<Self, CaError> {
        let key_pair = KeyPair::generate_for(key_type.rcgen_algorithm())
            .map_err(|e| CaError::Signing(format!("key generation failed: {e}")))?;
        Self::from_key_pair(key_type, key_pair)
    }

    /// Loads a key from unencrypted PKCS#8 DER, working out its type.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, CaError> {
        let key_pair = KeyPair::try_from(der).map_err(|e| CaError::KeyMalformed(e.to_string()))?;
        let alg = key_pair.algorithm();
        let key_type = [KeyType::EcP256, KeyType::EcP384, KeyType::Ed25519]
            .into_iter()
            .find(|t| t.rcgen_algorithm() == alg)
            .ok_or_else(|| CaError::KeyMalformed(format!("unsupported key algorithm {alg:?}")))?;
        Self::from_key_pair(key_type, key_pair)
    }

    /// Loads a key from a PEM `PRIVATE KEY` (PKCS#8) block.
    pub fn from_pkcs8_pem(pem_text: &str) -> Result<Self, CaError> {
        let block = pem::parse(pem_text).map_err(|e| CaError::KeyMalformed(e.to_string()))?;
        if block.tag() != "PRIVATE KEY" {
            return Err(CaError::KeyMalformed(format!(
                "expected a PEM \"PRIVATE KEY\" (PKCS#8) block, found {:?}",
                block.tag()
            )));
        }
        Self::from_pkcs8_der(block.contents())
    }

    fn from_key_pair(key_type: KeyType, key_pair: KeyPair) -> Result<Self, CaError> {
        let rng = SystemRandom::new();
        let der = key_pair.serialized_der();
        let bad = |e: ring::error::KeyRejected| CaError::KeyMalformed(e.to_string());
        let raw = match key_type {
            KeyType::EcP256 => RawSigner::Ecdsa(
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
                    .map_err(bad)?,
            ),
            KeyType::EcP384 => RawSigner::Ecdsa(
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, der, &rng)
                    .map_err(bad)?,
            ),
            KeyType::Ed25519 => {
                RawSigner::Ed25519(Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(bad)?)
            }
        };
        Ok(Self { key_type, key_pair, raw, rng })
    }

    /// The key's type.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The rcgen key pair, to sign certificates with.
    pub fn key_pair(&self) -> &KeyPair {
        &self.key_pair
    }

    /// The public key as DER SubjectPublicKeyInfo.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.key_pair.subject_public_key_info()
    }

    /// Signs `msg`: ECDSA keys give fixed-length `r || s` (64 bytes for P-256, 96 for
    /// P-384, as JWS ES256/ES384 want); Ed25519 keys give the 64-byte signature.
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, CaError> {
        match &self.raw {
            RawSigner::Ecdsa(k) => k
                .sign(&self.rng, msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| CaError::Signing("ECDSA signing failed".into())),
            RawSigner::Ed25519(k) => Ok(k.sign(msg).as_ref().to_vec()),
        }
    }

    /// The private key as PKCS#8 DER, for storage. Handle with care.
    pub(crate) fn pkcs8_der(&self) -> PrivatePkcs8KeyDer<'_> {
        PrivatePkcs8KeyDer::from(self.key_pair.serialized_der())
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_type", &self.key_type)
            .field("public_key", &hex::encode(self.key_pair.public_key_raw()))
            .finish_non_exhaustive()
    }
}

/// Creates, finds and deletes signing keys by id.
pub trait KeyManager: Send + Sync + fmt::Debug {
    /// Generates a new key under `id`, replacing any key already there.
    fn generate(&self, id: &KeyId, key_type: KeyType) -> Result<Arc<SigningKey>, CaError>;
    /// The key stored under `id`, if any.
    fn get(&self, id: &KeyId) -> Result<Option<Arc<SigningKey>>, CaError>;
    /// Deletes the key under `id`; deleting a missing key is not an error.
    fn delete(&self, id: &KeyId) -> Result<(), CaError>;
}

/// A key manager that keeps keys in memory only: they are lost when the process exits.
#[derive(Debug, Default)]
pub struct MemoryKeyManager {
    keys: Mutex<HashMap<KeyId, Arc<SigningKey>>>,
}

impl MemoryKeyManager {
    /// An empty key manager.
    pub fn new() -> Self {
        Self::default()
    }
}

impl KeyManager for MemoryKeyManager {
    fn generate(&self, id: &KeyId, key_type: KeyType) -> Result<Arc<SigningKey>, CaError> {
        let key = Arc::new(SigningKey::generate(key_type)?);
        self.keys.lock().unwrap_or_else(PoisonError::into_inner).insert(id.clone(), key.clone());
        Ok(key)
    }

    fn get(&self, id: &KeyId) -> Result<Option<Arc<SigningKey>>, CaError> {
        Ok(self.keys.lock().unwrap_or_else(PoisonError::into_inner).get(id).cloned())
    }

    fn delete(&self, id: &KeyId) -> Result<(), CaError> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner).remove(id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use ring::signature::UnparsedPublicKey;

    const ALL: [KeyType; 3] = [KeyType::EcP256, KeyType::EcP384, KeyType::Ed25519];

    #[test]
    fn key_type_names_round_trip_through_fromstr_and_serde() {
        for t in ALL {
            assert_eq!(t.name().parse::<KeyType>().unwrap(), t);
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.name()));
            assert_eq!(serde_json::from_str::<KeyType>(&json).unwrap(), t);
        }
        assert_eq!(KeyType::default(), KeyType::EcP256);
        assert!(matches!("rsa-2048".parse::<KeyType>(), Err(CaError::UnknownKeyType(_))));
    }

    #[test]
    fn key_ids_cannot_escape_a_directory() {
        for bad in ["", ".", "..", "../x", "a/b", ".hidden", "a\\b", "a b", "x\0", "é"] {
            assert!(KeyId::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(KeyId::new(&"k".repeat(129)).is_err());
        for good in ["x509-ca-a", "jwt.1", "A_b-9", &"k".repeat(128)] {
            assert_eq!(KeyId::new(good).unwrap().as_str(), good);
        }
    }

    #[test]
    fn raw_signatures_are_fixed_length_and_verify() {
        let cases: [(KeyType, usize, &dyn signature::VerificationAlgorithm); 3] = [
            (KeyType::EcP256, 64, &signature::ECDSA_P256_SHA256_FIXED),
            (KeyType::EcP384, 96, &signature::ECDSA_P384_SHA384_FIXED),
            (KeyType::Ed25519, 64, &signature::ED25519),
        ];
        for (t, len, alg) in cases {
            let key = SigningKey::generate(t).unwrap();
            let sig = key.sign(b"header.payload").unwrap();
            assert_eq!(sig.len(), len, "{t}");
            let pk = UnparsedPublicKey::new(alg, key.key_pair().public_key_raw());
            pk.verify(b"header.payload", &sig).unwrap();
            assert!(pk.verify(b"header.payloaD", &sig).is_err());
        }
    }

    #[test]
    fn pkcs8_round_trip_keeps_type_and_public_key() {
        for t in ALL {
            let key = SigningKey::generate(t).unwrap();
            let pem_text = key.key_pair().serialize_pem();
            let back = SigningKey::from_pkcs8_pem(&pem_text).unwrap();
            assert_eq!(back.key_type(), t);
            assert_eq!(back.public_key_der(), key.public_key_der());
        }
        assert!(matches!(SigningKey::from_pkcs8_der(b"junk"), Err(CaError::KeyMalformed(_))));
    }

    #[test]
    fn debug_output_never_shows_key_material() {
        let manager = MemoryKeyManager::new();
        for t in ALL {
            let key = manager.generate(&KeyId::new(t.name()).unwrap(), t).unwrap();
            let der = key.key_pair().serialized_der().to_vec();
            let secrets = [
                hex::encode(&der),
                base64::engine::general_purpose::STANDARD.encode(&der),
                key.key_pair().serialize_pem(),
                format!("{der:?}"),
            ];
            let outputs = [
                format!("{key:?}"),
                format!("{key:#?}"),
                format!("{manager:?}"),
                format!("{manager:#?}"),
                format!("{:?}", key.pkcs8_der()),
                format!("{:#?}", key.pkcs8_der()),
            ];
            for out in &outputs {
                for secret in &secrets {
                    assert!(!out.contains(secret.trim()), "key material in {out}");
                }
                // No 12-byte run of the private key in hex, except runs that are part of
                // the public key (which PKCS#8 also carries and Debug may show).
                let public = key.key_pair().public_key_raw();
                for w in der.windows(12) {
                    if !public.windows(12).any(|p| p == w) {
                        assert!(!out.contains(&hex::encode(w)), "key material in {out}");
                    }
                }
            }
        }
    }

    #[test]
    fn memory_manager_generates_gets_replaces_and_deletes() {
        let m = MemoryKeyManager::new();
        let id = KeyId::new("a").unwrap();
        assert!(m.get(&id).unwrap().is_none());
        let k1 = m.generate(&id, KeyType::EcP256).unwrap();
        assert_eq!(m.get(&id).unwrap().unwrap().public_key_der(), k1.public_key_der());
        let k2 = m.generate(&id, KeyType::Ed25519).unwrap();
        assert_ne!(k1.public_key_der(), k2.public_key_der());
        assert_eq!(m.get(&id).unwrap().unwrap().key_type(), KeyType::Ed25519);
        m.delete(&id).unwrap();
        m.delete(&id).unwrap();
        assert!(m.get(&id).unwrap().is_none());
    }
}

//! JWS compact serialization (RFC 7515 §7.1): splitting and decoding a token, and signing
//! one with a [`JwsSigner`]. No algorithm policy lives here; see [`crate::jwt_svid`].

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Map, Value};

use crate::jwk::{EcCurve, Jwk};

mod low_s;
pub use low_s::{normalize_low_s, require_low_s};

/// JWS signature algorithms (RFC 7518 §3 names). JWT-SVIDs allow all but `EdDSA`.
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JwsAlg {
    RS256,
    RS384,
    RS512,
    ES256,
    ES384,
    ES512,
    PS256,
    PS384,
    PS512,
    EdDSA,
}

impl JwsAlg {
    /// The `alg` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::ES512 => "ES512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::EdDSA => "EdDSA",
        }
    }

    /// Whether the JWT-SVID standard allows this algorithm (RS*, ES*, PS*).
    pub fn is_jwt_svid_alg(self) -> bool {
        self != Self::EdDSA
    }
}

impl fmt::Display for JwsAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl JwsAlg {
    /// Parses an `alg` header value; case-sensitive, and `none`/`HS*` are not known here.
    pub fn parse(s: &str) -> Option<Self> {
        const ALL: [JwsAlg; 10] = [
            JwsAlg::RS256,
            JwsAlg::RS384,
            JwsAlg::RS512,
            JwsAlg::ES256,
            JwsAlg::ES384,
            JwsAlg::ES512,
            JwsAlg::PS256,
            JwsAlg::PS384,
            JwsAlg::PS512,
            JwsAlg::EdDSA,
        ];
        ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// What can go wrong reading or writing a compact JWS.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwsError {
    /// A compact JWS has exactly three dot-separated parts.
    #[error("a compact JWS has three dot-separated parts, found {0}")]
    PartCount(usize),
    /// A part is not unpadded base64url (padding `=` is not allowed in JWS).
    #[error("the {0} is not unpadded base64url")]
    BadBase64(&'static str),
    /// The header or payload is not a JSON object.
    #[error("the {0} is not a JSON object")]
    NotJsonObject(&'static str),
    /// A private key could not be loaded.
    #[error("private key rejected: {0}")]
    KeyRejected(String),
    /// The signer failed.
    #[error("signing failed")]
    Signing,
    /// An ECDSA signature whose `s` is in the upper half of the curve order. `(r, n - s)`
    /// verifies whenever `(r, s)` does, so accepting both would give every token a second
    /// valid spelling (a replay cache keyed by token text would miss it); keycard signs
    /// low-S only and accepts low-S only.
    #[error("ECDSA signature has a high S value (s > n/2); only low-S signatures are accepted")]
    HighS,
}

/// A compact JWS split into its parts; nothing is verified yet.
#[derive(Clone, Debug)]
pub struct CompactJws {
    /// The decoded protected header.
    pub header: Map<String, Value>,
    /// The decoded payload (a JWT claims set).
    pub payload: Map<String, Value>,
    /// The bytes the signature covers: `base64url(header) "." base64url(payload)`.
    pub signing_input: String,
    /// The decoded signature.
    pub signature: Vec<u8>,
}

impl CompactJws {
    /// Splits and decodes a compact JWS whose header and payload are JSON objects.
    pub fn decode(token: &str) -> Result<Self, JwsError> {
        let parts: Vec<&str> = token.split('.').collect();
        let &[h, p, s] = parts.as_slice() else {
            return Err(JwsError::PartCount(parts.len()));
        };
        let header = json_object(h, "header")?;
        let payload = json_object(p, "payload")?;
        let signature = URL_SAFE_NO_PAD.decode(s).map_err(|_| JwsError::BadBase64("signature"))?;
        Ok(Self { header, payload, signing_input: format!("{h}.{p}"), signature })
    }

    /// Serializes `header` and `payload` and signs them; `header` should already carry
    /// `alg` (see [`sign_compact`] for the usual path).
    pub fn encode(
        header: &Map<String, Value>,
        payload: &Map<String, Value>,
        signer: &dyn JwsSigner,
    ) -> Result<String, JwsError> {
        let h = URL_SAFE_NO_PAD.encode(Value::Object(header.clone()).to_string());
        let p = URL_SAFE_NO_PAD.encode(Value::Object(payload.clone()).to_string());
        let input = format!("{h}.{p}");
        let mut sig = signer.sign(input.as_bytes())?;
        // ring (like Go's crypto/ecdsa) returns either `s` or `n - s`; publish the low one.
        if let Some(alg) = JwsAlg::parse(signer.alg()) {
            normalize_low_s(alg, &mut sig);
        }
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }
}

/// Signs `payload` with a header `{"alg": signer.alg(), "kid": kid, "typ": "JWT"}`.
pub fn sign_compact(
    payload: &Map<String, Value>,
    kid: &str,
    signer: &dyn JwsSigner,
) -> Result<String, JwsError> {
    let mut header = Map::new();
    header.insert("alg".into(), signer.alg().into());
    header.insert("kid".into(), kid.into());
    header.insert("typ".into(), "JWT".into());
    CompactJws::encode(&header, payload, signer)
}

fn json_object(part: &str, name: &'static str) -> Result<Map<String, Value>, JwsError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| JwsError::BadBase64(name))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(JwsError::NotJsonObject(name)),
    }
}

/// Something that signs a JWS signing input with one algorithm.
pub trait JwsSigner {
    /// The JWS `alg` this signer produces, for example `ES256`.
    fn alg(&self) -> &str;
    /// Signs `msg`, returning the signature bytes in their JWS form.
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, JwsError>;
}

/// An ES256 signer (P-256, SHA-256, fixed-length `r || s` signatures) on a ring key.
pub struct Es256Signer {
    key_pair: EcdsaKeyPair,
    /// The public half, computed once at load.
    public: Jwk,
    rng: SystemRandom,
}

impl Es256Signer {
    /// Makes a new private key and returns it as unencrypted PKCS#8 DER, for storage.
    pub fn generate_pkcs8() -> Result<Vec<u8>, JwsError> {
        let rng = SystemRandom::new();
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map(|doc| doc.as_ref().to_vec())
            .map_err(|_| JwsError::Signing)
    }

    /// Loads a P-256 private key from PKCS#8 DER.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, JwsError> {
        let rng = SystemRandom::new();
        let key_pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|e| JwsError::KeyRejected(e.to_string()))?;
        let public = Jwk::ec_from_uncompressed_point(EcCurve::P256, key_pair.public_key().as_ref())
            .map_err(|e| JwsError::KeyRejected(e.to_string()))?;
        Ok(Self { key_pair, public, rng })
    }

    /// Makes a signer with a fresh key (for tests and short-lived authorities).
    pub fn generate() -> Result<Self, JwsError> {
        Self::from_pkcs8(&Self::generate_pkcs8()?)
    }

    /// The public key, for publishing in a JWT bundle.
    pub fn public_jwk(&self) -> &Jwk {
        &self.public
    }
}

impl JwsSigner for Es256Signer {
    fn alg(&self) -> &str {
        JwsAlg::ES256.as_str()
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, JwsError> {
        let sig = self.key_pair.sign(&self.rng, msg).map_err(|_| JwsError::Signing)?;
        Ok(sig.as_ref().to_vec())
    }
}

impl fmt::Debug for Es256Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Es256Signer").field("public_key", &self.public).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("sub".into(), "spiffe://example.org/w".into());
        m
    }

    #[test]
    fn signed_token_decodes_and_verifies() {
        let signer = Es256Signer::generate().unwrap();
        let token = sign_compact(&claims(), "k1", &signer).unwrap();
        assert!(!token.contains('='), "no padding in compact JWS");
        let jws = CompactJws::decode(&token).unwrap();
        assert_eq!(jws.payload, claims());
        assert_eq!(jws.header["alg"], "ES256");
        assert_eq!(jws.header["kid"], "k1");
        assert_eq!(jws.signature.len(), 64);
        signer
            .public_jwk()
            .verify(JwsAlg::ES256, jws.signing_input.as_bytes(), &jws.signature)
            .unwrap();
    }

    #[test]
    fn pkcs8_round_trip_keeps_the_key() {
        let der = Es256Signer::generate_pkcs8().unwrap();
        let a = Es256Signer::from_pkcs8(&der).unwrap();
        let b = Es256Signer::from_pkcs8(&der).unwrap();
        assert_eq!(a.public_jwk(), b.public_jwk());
        assert!(matches!(Es256Signer::from_pkcs8(b"junk"), Err(JwsError::KeyRejected(_))));
        assert!(!format!("{a:?}").contains("private"));
    }

    #[test]
    fn malformed_compact_forms_are_refused() {
        let signer = Es256Signer::generate().unwrap();
        let token = sign_compact(&claims(), "k1", &signer).unwrap();
        let (h, rest) = token.split_once('.').unwrap();
        assert_eq!(CompactJws::decode(rest).unwrap_err(), JwsError::PartCount(2));
        assert_eq!(CompactJws::decode(&format!("{token}.x")).unwrap_err(), JwsError::PartCount(4));
        assert_eq!(
            CompactJws::decode(&format!("{h}=.{rest}")).unwrap_err(),
            JwsError::BadBase64("header")
        );
        let array = URL_SAFE_NO_PAD.encode("[1]");
        assert_eq!(
            CompactJws::decode(&format!("{h}.{array}.AA")).unwrap_err(),
            JwsError::NotJsonObject("payload")
        );
        assert_eq!(
            CompactJws::decode(&format!("{token}=")).unwrap_err(),
            JwsError::BadBase64("signature")
        );
    }
}

//! Public keys as JSON Web Keys (RFC 7517/7518): EC P-256 and P-384, RSA, and Ed25519.
//!
//! A [`Jwk`] can only hold a well-formed key: coordinates of the right length for their
//! curve, RSA integers without leading zeros. It converts to and from the JWK JSON members
//! ([`JwkParams`]), a DER `SubjectPublicKeyInfo`, and ring's uncompressed EC point, and it
//! verifies JWS signatures for a [`JwsAlg`].

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature;

use crate::jws::JwsAlg;

mod spki;

/// What can be wrong with a key or a signature check.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwkError {
    /// A JWK member that the key type needs is absent.
    #[error("JWK member `{0}` is missing")]
    MissingField(&'static str),
    /// A JWK member is not unpadded base64url.
    #[error("JWK member `{0}` is not unpadded base64url")]
    BadBase64(&'static str),
    /// A member has the wrong length for its key type (EC coordinates, Ed25519 key).
    #[error("JWK member `{field}` must be {expected} bytes, got {actual}")]
    BadLength {
        /// The member.
        field: &'static str,
        /// The length the curve demands.
        expected: usize,
        /// The decoded length.
        actual: usize,
    },
    /// An RSA modulus or exponent is zero.
    #[error("RSA member `{0}` is zero")]
    ZeroInteger(&'static str),
    /// The `kty` is not one of `EC`, `RSA`, `OKP`.
    #[error("unsupported key type `{0}`")]
    UnsupportedKeyType(String),
    /// The `crv` is not P-256, P-384 (EC) or Ed25519 (OKP).
    #[error("unsupported curve `{0}`")]
    UnsupportedCurve(String),
    /// The bytes are not a DER SubjectPublicKeyInfo, or an EC point is not uncompressed.
    #[error("malformed public key encoding")]
    BadEncoding,
    /// The SubjectPublicKeyInfo holds a key algorithm this type does not support.
    #[error("unsupported public key algorithm {0}")]
    UnsupportedAlgorithm(String),
    /// The JWS algorithm does not fit this key (for example ES256 with an RSA key).
    #[error("algorithm {alg} cannot be used with a {kty} key")]
    AlgKeyMismatch {
        /// The JWS algorithm asked for.
        alg: JwsAlg,
        /// The key's `kty`.
        kty: &'static str,
    },
    /// The signature does not verify under this key (ring also refuses RSA keys under
    /// 2048 bits here).
    #[error("signature does not verify")]
    BadSignature,
}

impl JwkError {
    /// True when the key is well formed but of a type or curve we do not know; the SPIFFE
    /// bundle format says such entries are ignored rather than rejected.
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Self::UnsupportedKeyType(_) | Self::UnsupportedCurve(_))
    }
}

/// The NIST curves an EC [`Jwk`] may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EcCurve {
    /// P-256 (secp256r1), for ES256.
    P256,
    /// P-384 (secp384r1), for ES384.
    P384,
}

impl EcCurve {
    /// The JWK `crv` name.
    pub fn name(self) -> &'static str {
        match self {
            Self::P256 => "P-256",
            Self::P384 => "P-384",
        }
    }

    /// Bytes per coordinate.
    pub fn coordinate_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
        }
    }
}

/// The raw JWK JSON members that carry a public key, each optional and still base64url.
/// Other members (`use`, `kid`, `x5c`, ...) belong to the containing document.
#[allow(missing_docs)]
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JwkParams {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kty: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
}

/// A public key that can verify JWS signatures. Serializes as its JWK members.
#[derive(Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "JwkParams", into = "JwkParams")]
pub struct Jwk {
    key: Key,
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    Ec {
        curve: EcCurve,
        x: Vec<u8>,
        y: Vec<u8>,
    },
    /// Big-endian, no leading zero bytes.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    Ed25519 {
        x: Vec<u8>,
    },
}

impl Jwk {
    /// An EC key from its affine coordinates (each exactly the curve's size).
    pub fn ec(curve: EcCurve, x: &[u8], y: &[u8]) -> Result<Self, JwkError> {
        let want = curve.coordinate_len();
        for (field, v) in [("x", x), ("y", y)] {
            if v.len() != want {
                return Err(JwkError::BadLength { field, expected: want, actual: v.len() });
            }
        }
        Ok(Self { key: Key::Ec { curve, x: x.to_vec(), y: y.to_vec() } })
    }

    /// An EC key from an uncompressed point `04 || x || y`, as ring's `public_key()` gives.
    pub fn ec_from_uncompressed_point(curve: EcCurve, point: &[u8]) -> Result<Self, JwkError> {
        let len = curve.coordinate_len();
        match point.split_first() {
            Some((0x04, xy)) if xy.len() == 2 * len => Self::ec(curve, &xy[..len], &xy[len..]),
            _ => Err(JwkError::BadEncoding),
        }
    }

    /// An RSA key from its big-endian modulus and exponent (leading zeros are dropped).
    pub fn rsa(n: &[u8], e: &[u8]) -> Result<Self, JwkError> {
        let n = strip_zeros(n);
        let e = strip_zeros(e);
        if n.is_empty() {
            return Err(JwkError::ZeroInteger("n"));
        }
        if e.is_empty() {
            return Err(JwkError::ZeroInteger("e"));
        }
        Ok(Self { key: Key::Rsa { n: n.to_vec(), e: e.to_vec() } })
    }

    /// An Ed25519 key from its 32 raw bytes.
    pub fn ed25519(x: &[u8]) -> Result<Self, JwkError> {
        if x.len() != 32 {
            return Err(JwkError::BadLength { field: "x", expected: 32, actual: x.len() });
        }
        Ok(Self { key: Key::Ed25519 { x: x.to_vec() } })
    }

    /// The JWK `kty`: `EC`, `RSA` or `OKP`.
    pub fn kty(&self) -> &'static str {
        match self.key {
            Key::Ec { .. } => "EC",
            Key::Rsa { .. } => "RSA",
            Key::Ed25519 { .. } => "OKP",
        }
    }

    /// The JWK `crv`, for EC and OKP keys.
    pub fn crv(&self) -> Option<&'static str> {
        match &self.key {
            Key::Ec { curve, .. } => Some(curve.name()),
            Key::Rsa { .. } => None,
            Key::Ed25519 { .. } => Some("Ed25519"),
        }
    }

    /// The uncompressed point `04 || x || y` of an EC key.
    pub fn uncompressed_point(&self) -> Option<Vec<u8>> {
        match &self.key {
            Key::Ec { x, y, .. } => Some([&[0x04][..], x, y].concat()),
            _ => None,
        }
    }

    /// Reads a key from its JWK members.
    pub fn from_params(p: &JwkParams) -> Result<Self, JwkError> {
        let kty = p.kty.as_deref().ok_or(JwkError::MissingField("kty"))?;
        let crv = || p.crv.as_deref().ok_or(JwkError::MissingField("crv"));
        match kty {
            "EC" => {
                let curve = match crv()? {
                    "P-256" => EcCurve::P256,
                    "P-384" => EcCurve::P384,
                    other => return Err(JwkError::UnsupportedCurve(other.to_owned())),
                };
                Self::ec(curve, &member(&p.x, "x")?, &member(&p.y, "y")?)
            }
            "RSA" => Self::rsa(&member(&p.n, "n")?, &member(&p.e, "e")?),
            "OKP" => match crv()? {
                "Ed25519" => Self::ed25519(&member(&p.x, "x")?),
                other => Err(JwkError::UnsupportedCurve(other.to_owned())),
            },
            other => Err(JwkError::UnsupportedKeyType(other.to_owned())),
        }
    }

    /// The JWK members of this key.
    pub fn to_params(&self) -> JwkParams {
        let b64 = |v: &[u8]| Some(URL_SAFE_NO_PAD.encode(v));
        let mut p = JwkParams {
            kty: Some(self.kty().to_owned()),
            crv: self.crv().map(str::to_owned),
            ..JwkParams::default()
        };
        match &self.key {
            Key::Ec { x, y, .. } => (p.x, p.y) = (b64(x), b64(y)),
            Key::Rsa { n, e } => (p.n, p.e) = (b64(n), b64(e)),
            Key::Ed25519 { x } => p.x = b64(x),
        }
        p
    }

    /// Whether `alg` can be verified with this key.
    pub fn fits(&self, alg: JwsAlg) -> bool {
        self.ring_algorithm(alg).is_some()
    }

    /// Verifies a JWS signature (`sig`) over `msg` with this key. ECDSA signatures are the
    /// fixed-length `r || s` form JWS uses.
    pub fn verify(&self, alg: JwsAlg, msg: &[u8], sig: &[u8]) -> Result<(), JwkError> {
        let mismatch = || JwkError::AlgKeyMismatch { alg, kty: self.kty() };
        let result = match (&self.key, self.ring_algorithm(alg).ok_or_else(mismatch)?) {
            (Key::Rsa { n, e }, Verifier::Rsa(params)) => {
                signature::RsaPublicKeyComponents { n, e }.verify(params, msg, sig)
            }
            (Key::Ec { .. }, Verifier::Other(a)) => {
                let point = self.uncompressed_point().unwrap_or_default();
                signature::UnparsedPublicKey::new(a, point).verify(msg, sig)
            }
            (Key::Ed25519 { x }, Verifier::Other(a)) => {
                signature::UnparsedPublicKey::new(a, x).verify(msg, sig)
            }
            _ => return Err(mismatch()),
        };
        result.map_err(|_| JwkError::BadSignature)
    }

    fn ring_algorithm(&self, alg: JwsAlg) -> Option<Verifier> {
        use JwsAlg::*;
        match (&self.key, alg) {
            (Key::Ec { curve: EcCurve::P256, .. }, ES256) => {
                Some(Verifier::Other(&signature::ECDSA_P256_SHA256_FIXED))
            }
            (Key::Ec { curve: EcCurve::P384, .. }, ES384) => {
                Some(Verifier::Other(&signature::ECDSA_P384_SHA384_FIXED))
            }
            (Key::Ed25519 { .. }, EdDSA) => Some(Verifier::Other(&signature::ED25519)),
            (Key::Rsa { .. }, RS256) => Some(Verifier::Rsa(&signature::RSA_PKCS1_2048_8192_SHA256)),
            (Key::Rsa { .. }, RS384) => Some(Verifier::Rsa(&signature::RSA_PKCS1_2048_8192_SHA384)),
            (Key::Rsa { .. }, RS512) => Some(Verifier::Rsa(&signature::RSA_PKCS1_2048_8192_SHA512)),
            (Key::Rsa { .. }, PS256) => Some(Verifier::Rsa(&signature::RSA_PSS_2048_8192_SHA256)),
            (Key::Rsa { .. }, PS384) => Some(Verifier::Rsa(&signature::RSA_PSS_2048_8192_SHA384)),
            (Key::Rsa { .. }, PS512) => Some(Verifier::Rsa(&signature::RSA_PSS_2048_8192_SHA512)),
            _ => None,
        }
    }
}

enum Verifier {
    Rsa(&'static signature::RsaParameters),
    Other(&'static dyn signature::VerificationAlgorithm),
}

impl TryFrom<JwkParams> for Jwk {
    type Error = JwkError;
    fn try_from(p: JwkParams) -> Result<Self, JwkError> {
        Self::from_params(&p)
    }
}

impl From<Jwk> for JwkParams {
    fn from(k: Jwk) -> Self {
        k.to_params()
    }
}

impl fmt::Debug for Jwk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.to_params();
        let mut d = f.debug_struct("Jwk");
        d.field("kty", &self.kty());
        for (name, v) in [("crv", &p.crv), ("x", &p.x), ("y", &p.y), ("n", &p.n), ("e", &p.e)] {
            if let Some(v) = v {
                d.field(name, v);
            }
        }
        d.finish()
    }
}

fn member(v: &Option<String>, field: &'static str) -> Result<Vec<u8>, JwkError> {
    let s = v.as_deref().ok_or(JwkError::MissingField(field))?;
    URL_SAFE_NO_PAD.decode(s).map_err(|_| JwkError::BadBase64(field))
}

fn strip_zeros(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| b != 0).unwrap_or(v.len());
    &v[start..]
}

#[cfg(test)]
pub(crate) mod tests;

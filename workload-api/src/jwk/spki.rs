//! Conversion of a [`Jwk`] to and from a DER `SubjectPublicKeyInfo` (RFC 5280 §4.1.2.7),
//! the form certificates and ring carry public keys in: EC keys (RFC 5480) with a named
//! P-256 or P-384 curve, RSA keys (RFC 8017, `rsaEncryption` with NULL parameters) and
//! Ed25519 keys (RFC 8410).
//!
//! Reading goes through x509-parser; writing is a small hand-made DER encoder, since the
//! structures are fixed and tiny.

use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::{EcCurve, Jwk, JwkError, Key, strip_zeros};

const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_RSA_ENCRYPTION: &[u8] =
    &[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00];
const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

impl EcCurve {
    /// DER of the named-curve OID (tag and length included).
    fn oid_der(self) -> &'static [u8] {
        match self {
            Self::P256 => &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
            Self::P384 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
        }
    }
}

impl Jwk {
    /// Reads a key from a DER `SubjectPublicKeyInfo`.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, JwkError> {
        let (rest, spki) =
            SubjectPublicKeyInfo::from_der(der).map_err(|_| JwkError::BadEncoding)?;
        if !rest.is_empty() {
            return Err(JwkError::BadEncoding);
        }
        let key_bits: &[u8] = &spki.subject_public_key.data;
        let alg = spki.algorithm.algorithm.to_id_string();
        match alg.as_str() {
            "1.2.840.10045.2.1" => {
                let curve_oid = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .map(|o| o.to_id_string())
                    .ok_or(JwkError::BadEncoding)?;
                let curve = match curve_oid.as_str() {
                    "1.2.840.10045.3.1.7" => EcCurve::P256,
                    "1.3.132.0.34" => EcCurve::P384,
                    other => return Err(JwkError::UnsupportedCurve(other.to_owned())),
                };
                Self::ec_from_uncompressed_point(curve, key_bits)
            }
            "1.2.840.113549.1.1.1" => match spki.parsed() {
                Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => {
                    Self::rsa(rsa.modulus, rsa.exponent)
                }
                _ => Err(JwkError::BadEncoding),
            },
            "1.3.101.112" => Self::ed25519(key_bits),
            other => Err(JwkError::UnsupportedAlgorithm(other.to_owned())),
        }
    }

    /// The DER `SubjectPublicKeyInfo` of this key.
    pub fn to_spki_der(&self) -> Vec<u8> {
        let (alg_id, key_bits) = match &self.key {
            Key::Ec { curve, .. } => {
                let point = self.uncompressed_point().unwrap_or_default();
                (der(0x30, &[OID_EC_PUBLIC_KEY, curve.oid_der()].concat()), point)
            }
            Key::Rsa { n, e } => {
                let ints = [der_uint(n), der_uint(e)].concat();
                (der(0x30, OID_RSA_ENCRYPTION), der(0x30, &ints))
            }
            Key::Ed25519 { x } => (der(0x30, OID_ED25519), x.clone()),
        };
        let bit_string = der(0x03, &[&[0u8][..], &key_bits].concat());
        der(0x30, &[alg_id, bit_string].concat())
    }
}

/// A DER TLV with definite length.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let significant = strip_zeros(&bytes);
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
    out.extend_from_slice(content);
    out
}

/// A DER INTEGER holding a non-negative big-endian value without leading zeros.
fn der_uint(v: &[u8]) -> Vec<u8> {
    if v.first().is_some_and(|&b| b & 0x80 != 0) {
        der(0x02, &[&[0u8][..], v].concat())
    } else {
        der(0x02, v)
    }
}

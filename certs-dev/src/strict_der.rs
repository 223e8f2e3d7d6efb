//! A strict DER check for certificates, with the RustCrypto `x509-cert`/`der` crates, for
//! tests across the workspace: every certificate keycard, certs-dev and the test helpers make
//! must pass it.
//!
//! Lenient parsers (x509-parser, rustls-webpki, openssl) accept some BER that DER forbids;
//! Python's `cryptography` (so py-spiffe) does not, and rejects the whole certificate. The
//! `der` crate refuses non-minimal lengths, indefinite lengths and trailing bytes, but it
//! quietly accepts a DEFAULT value written out (such as BasicConstraints `cA FALSE`). DER has
//! exactly one encoding per value, so the check also decodes the certificate and each known
//! extension and requires that encoding them again gives back the very same bytes.

use x509_cert::Certificate;
use x509_cert::der::oid::{AssociatedOid, ObjectIdentifier};
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, NameConstraints,
    SubjectAltName, SubjectKeyIdentifier,
};

/// Why a certificate is not strict DER.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StrictDerError {
    /// The certificate does not decode as DER at all.
    #[error("not a DER certificate: {0}")]
    Decode(String),
    /// The certificate decodes, but its canonical encoding differs from the input (a DEFAULT
    /// value written out, for example an extension marked `critical FALSE`).
    #[error("the certificate is not in canonical DER form")]
    NotCanonical,
    /// An extension's value does not decode as DER.
    #[error("extension {oid}: not DER: {message}")]
    ExtensionDecode {
        /// The extension's OID.
        oid: ObjectIdentifier,
        /// What the decoder said.
        message: String,
    },
    /// An extension's value decodes, but its canonical encoding differs (for example
    /// BasicConstraints `30 03 01 01 00`, `cA FALSE` spelled out).
    #[error("extension {oid}: not in canonical DER form")]
    ExtensionNotCanonical {
        /// The extension's OID.
        oid: ObjectIdentifier,
    },
    /// An extension this check does not know, so cannot vouch for.
    #[error("extension {0}: unknown to the strict DER check")]
    UnknownExtension(ObjectIdentifier),
}

/// Checks that `der` is one certificate in strict DER, extensions included.
pub fn check(der: &[u8]) -> Result<(), StrictDerError> {
    let cert = Certificate::from_der(der).map_err(|e| StrictDerError::Decode(e.to_string()))?;
    let again = cert.to_der().map_err(|e| StrictDerError::Decode(e.to_string()))?;
    if again != der {
        return Err(StrictDerError::NotCanonical);
    }
    for ext in cert.tbs_certificate.extensions.iter().flatten() {
        check_extension(ext.extn_id, ext.extn_value.as_bytes())?;
    }
    Ok(())
}

/// Decodes one extension value as its type and encodes it again.
fn check_extension(oid: ObjectIdentifier, value: &[u8]) -> Result<(), StrictDerError> {
    fn round_trip<T: for<'a> Decode<'a> + Encode>(
        oid: ObjectIdentifier,
        value: &[u8],
    ) -> Result<(), StrictDerError> {
        let decode = |e: x509_cert::der::Error| StrictDerError::ExtensionDecode {
            oid,
            message: e.to_string(),
        };
        let parsed = T::from_der(value).map_err(decode)?;
        if parsed.to_der().map_err(decode)? != value {
            return Err(StrictDerError::ExtensionNotCanonical { oid });
        }
        Ok(())
    }
    match oid {
        BasicConstraints::OID => round_trip::<BasicConstraints>(oid, value),
        KeyUsage::OID => round_trip::<KeyUsage>(oid, value),
        ExtendedKeyUsage::OID => round_trip::<ExtendedKeyUsage>(oid, value),
        SubjectAltName::OID => round_trip::<SubjectAltName>(oid, value),
        SubjectKeyIdentifier::OID => round_trip::<SubjectKeyIdentifier>(oid, value),
        AuthorityKeyIdentifier::OID => round_trip::<AuthorityKeyIdentifier>(oid, value),
        NameConstraints::OID => round_trip::<NameConstraints>(oid, value),
        other => Err(StrictDerError::UnknownExtension(other)),
    }
}

/// Checks every `CERTIFICATE` block of a PEM text; the error names the block (from 0).
pub fn check_pem(text: &[u8]) -> Result<usize, (usize, StrictDerError)> {
    let blocks = pem::parse_many(text).map_err(|e| (0, StrictDerError::Decode(e.to_string())))?;
    let certs: Vec<_> = blocks.iter().filter(|b| b.tag() == "CERTIFICATE").collect();
    for (i, block) in certs.iter().enumerate() {
        check(block.contents()).map_err(|e| (i, e))?;
    }
    Ok(certs.len())
}

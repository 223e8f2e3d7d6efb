//! Errors of the X.509 module: why a certificate chain is not a valid X509-SVID, and why
//! bytes are not a bundle of CA certificates.
//!
//! [`X509SvidError`] has one variant per rule of the SPIFFE X509-SVID standard that a
//! certificate can break, so that a message (and a test) names exactly one broken rule.

use crate::spiffe_id::{SpiffeIdError, TrustDomain};

/// Why a certificate chain (and key) is not a valid X509-SVID.
///
/// The variants are listed in the order [`verify_chain`](super::verify_chain) checks them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum X509SvidError {
    /// The PEM text could not be decoded, or holds a block with an unexpected label.
    #[error("invalid PEM: {0}")]
    Pem(String),
    /// The chain holds no certificate.
    #[error("certificate chain is empty")]
    EmptyChain,
    /// A certificate is not well-formed DER X.509 (index 0 is the leaf).
    #[error("certificate {index} in the chain is not valid DER X.509: {reason}")]
    Der {
        /// Position of the certificate in the chain, the leaf being 0.
        index: usize,
        /// What the parser reported.
        reason: String,
    },
    /// The leaf has no URI SAN, so it carries no SPIFFE ID.
    #[error("certificate has no URI SAN, so no SPIFFE ID")]
    NoUriSan,
    /// The leaf has more than one URI SAN; an X509-SVID has exactly one.
    #[error("certificate has {0} URI SANs; an X509-SVID must have exactly one")]
    MultipleUriSans(usize),
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("URI SAN is not a valid SPIFFE ID: {0}")]
    InvalidSpiffeId(#[from] SpiffeIdError),
    /// The leaf's SPIFFE ID has no path; only signing certificates may have a root ID.
    #[error("leaf SPIFFE ID {0} has no path; a workload SVID needs one")]
    RootPathId(String),
    /// The leaf has `cA=true` in its basic constraints.
    #[error("leaf certificate has cA=true; an X509-SVID leaf must not be a CA")]
    LeafIsCa,
    /// The leaf has no basic constraints extension (it must say `cA=false`).
    #[error("leaf certificate has no basic constraints extension")]
    MissingBasicConstraints,
    /// The leaf has no key usage extension.
    #[error("leaf certificate has no key usage extension")]
    KeyUsageMissing,
    /// The leaf's key usage extension is not marked critical.
    #[error("leaf certificate's key usage extension is not critical")]
    KeyUsageNotCritical,
    /// The leaf's key usage lacks `digitalSignature`.
    #[error("leaf certificate's key usage lacks digitalSignature")]
    LeafNoDigitalSignature,
    /// The leaf's key usage has `keyCertSign`.
    #[error("leaf certificate's key usage has keyCertSign")]
    LeafKeyCertSign,
    /// The leaf's key usage has `cRLSign`.
    #[error("leaf certificate's key usage has cRLSign")]
    LeafCrlSign,
    /// The leaf has an extended key usage extension without `serverAuth`.
    #[error("leaf certificate's extended key usage lacks serverAuth")]
    EkuMissingServerAuth,
    /// The leaf has an extended key usage extension without `clientAuth`.
    #[error("leaf certificate's extended key usage lacks clientAuth")]
    EkuMissingClientAuth,
    /// A signing certificate in the chain lacks `cA=true`.
    #[error("signing certificate {index} in the chain is not a CA (cA=true missing)")]
    SigningCertNotCa {
        /// Position of the certificate in the chain.
        index: usize,
    },
    /// A signing certificate in the chain lacks the `keyCertSign` key usage.
    #[error("signing certificate {index} in the chain lacks the keyCertSign key usage")]
    SigningCertNoKeyCertSign {
        /// Position of the certificate in the chain.
        index: usize,
    },
    /// A signing certificate's SPIFFE ID has a path; it must name only a trust domain.
    #[error("signing certificate {index} has SPIFFE ID {id}, which must not have a path")]
    SigningCertIdHasPath {
        /// Position of the certificate in the chain.
        index: usize,
        /// The offending ID.
        id: String,
    },
    /// The bundle set has no bundle for the leaf's trust domain.
    #[error("no X.509 bundle for trust domain {0}")]
    NoBundleForTrustDomain(TrustDomain),
    /// The chain does not verify against the leaf's own trust domain, but does against
    /// another trust domain's bundle: an authority signed an ID outside its domain.
    #[error(
        "SPIFFE ID is in trust domain {id_trust_domain} but the chain was signed by an \
         authority of trust domain {signer_trust_domain}"
    )]
    SignedByOtherTrustDomain {
        /// The trust domain of the leaf's SPIFFE ID.
        id_trust_domain: TrustDomain,
        /// The trust domain whose bundle the chain verifies against.
        signer_trust_domain: TrustDomain,
    },
    /// A certificate's `notAfter` is in the past.
    #[error("certificate expired at {} (now {})", unix_text(*not_after), unix_text(*now))]
    Expired {
        /// `notAfter`, in seconds since the Unix epoch.
        not_after: i64,
        /// The verification time, in seconds since the Unix epoch.
        now: i64,
    },
    /// A certificate's `notBefore` is in the future.
    #[error("certificate not valid before {} (now {})", unix_text(*not_before), unix_text(*now))]
    NotYetValid {
        /// `notBefore`, in seconds since the Unix epoch.
        not_before: i64,
        /// The verification time, in seconds since the Unix epoch.
        now: i64,
    },
    /// A signature in the chain does not verify (a tampered certificate, a wrong issuer
    /// key, or an unsupported signature algorithm).
    #[error("certificate signature does not verify: {0}")]
    BadSignature(String),
    /// No path leads from the leaf to an authority of its trust domain's bundle.
    #[error("certificate chain does not lead to a trusted authority: {0}")]
    UntrustedChain(String),
    /// Path validation failed for another reason (path length, unsupported critical
    /// extension, name constraints, ...).
    #[error("certificate chain rejected: {0}")]
    ChainRejected(String),
    /// The private key is not an unencrypted PKCS#8 ECDSA P-256/P-384, Ed25519 or RSA key.
    #[error("private key is not a supported PKCS#8 key: {0}")]
    BadPrivateKey(String),
    /// The private key does not belong to the leaf certificate's public key.
    #[error("private key does not match the leaf certificate's public key")]
    KeyMismatch,
}

/// Why bytes or text are not an X.509 bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum X509BundleError {
    /// The PEM text could not be decoded.
    #[error("invalid PEM: {0}")]
    Pem(String),
    /// A PEM block is not a `CERTIFICATE`.
    #[error("PEM block {index} is labelled {label:?}, expected \"CERTIFICATE\"")]
    UnexpectedPemLabel {
        /// Position of the block.
        index: usize,
        /// The label found.
        label: String,
    },
    /// An authority is not well-formed DER X.509 usable as a trust anchor.
    #[error("authority {index} is not a valid X.509 certificate: {reason}")]
    Der {
        /// Position of the certificate in the input.
        index: usize,
        /// What the parser reported.
        reason: String,
    },
}

/// Formats seconds since the Unix epoch as a UTC date for messages.
fn unix_text(secs: i64) -> String {
    match x509_parser::time::ASN1Time::from_timestamp(secs) {
        Ok(t) => t.to_string(),
        Err(_) => format!("{secs}s after the Unix epoch"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_message_shows_dates() {
        let e = X509SvidError::Expired { not_after: 0, now: 86_400 };
        let text = e.to_string();
        assert!(text.contains("1970"), "{text}");
        assert!(text.contains("Jan"), "{text}");
    }
}

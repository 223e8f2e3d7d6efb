//! Signing: keys, the X.509 authority, and the checks on what it is asked to sign.
//!
//! - [`keys`]: [`SigningKey`], [`KeyType`] and the [`KeyManager`] trait with its
//!   in-memory implementation; [`disk_keys`]: [`DiskKeyManager`] (PKCS#8 files, 0600).
//! - [`x509_authority`]: [`X509Authority`], a self-signed or upstream-signed CA that mints
//!   X.509-SVIDs; [`template`] holds the certificate templates it fills in; [`upstream`]
//!   loads an operator's CA from disk to sign ours as an intermediate.
//! - [`csr`]: [`verify_csr`] turns an untrusted CSR into a [`VerifiedCsr`] that carries
//!   nothing but a checked public key.
//!
//! - [`jwt_authority`]: [`JwtAuthority`], an ECDSA key with a `kid` that mints JWT-SVIDs.
//! - [`journal`]: the authority journal (prepared / active / old, taint, revoke), saved
//!   atomically; [`manager`]: [`CaManager`], which runs the rotation schedule over both
//!   kinds of authority, self-tests new ones, and builds the bundle.
//!
//! Every rule a caller can break has its own [`CaError`] variant.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

pub mod csr;
pub mod disk_keys;
pub mod journal;
pub mod jwt_authority;
pub mod keys;
pub mod manager;
mod schedule;
mod selftest;
pub mod template;
pub mod upstream;
pub mod x509_authority;

#[cfg(test)]
mod der_tests;
#[cfg(test)]
mod rotation_tests;
#[cfg(test)]
mod svid_tests;
#[cfg(test)]
mod upstream_tests;

pub use csr::{DEFAULT_MAX_CSR_LEN, VerifiedCsr, check_public_key, verify_csr};
pub use disk_keys::DiskKeyManager;
pub use journal::{AuthorityKind, SlotState};
pub use jwt_authority::{JwtAuthority, MintedJwtSvid};
pub use keys::{KeyId, KeyManager, KeyType, MemoryKeyManager, SigningKey};
pub use manager::{AuthorityStatus, CaConfig, CaManager, IssuedX509Svid};
pub use upstream::UpstreamAuthority;
pub use x509_authority::{
    AuthorityOptions, DEFAULT_BACKDATE, DEFAULT_CA_COMMON_NAME, SignedSvid, SvidRequest,
    X509Authority,
};

/// The longest X.509-SVID lifetime a CA with lifetime `ca_ttl` hands out: one sixth of it,
/// because the next CA is activated when one sixth of the current one's life remains, and
/// an SVID should not outlive the CA that is active when it is renewed.
pub fn max_svid_ttl(ca_ttl: Duration) -> Duration {
    ca_ttl / 6
}

/// Why the CA refused a request or could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The CSR is bigger than the configured cap.
    #[error("CSR is {len} bytes; the limit is {max}")]
    CsrTooLarge {
        /// Size of the CSR received.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The CSR is not a DER PKCS#10 request (or has bytes after it).
    #[error("CSR is malformed: {0}")]
    CsrMalformed(String),
    /// The CSR is signed with an algorithm we do not accept (for example SHA-1).
    #[error("CSR signature algorithm is not accepted: {0}")]
    CsrUnsupportedSignature(String),
    /// The CSR's signature does not verify with its own public key.
    #[error("CSR signature does not verify with the CSR's public key")]
    CsrBadSignature,
    /// The public key is of a type or curve we do not sign for.
    #[error("unsupported public key: {0}")]
    UnsupportedKey(String),
    /// The public key is RSA with a modulus under 2048 bits.
    #[error("RSA key has {bits} bits; at least 2048 are required")]
    WeakRsaKey {
        /// Modulus size in bits.
        bits: usize,
    },
    /// An SVID was asked for the trust domain's own ID (no path); only CAs carry those.
    #[error("SPIFFE ID {0} has no path; an SVID needs one")]
    RootPathId(String),
    /// An SVID was asked for a SPIFFE ID outside the CA's trust domain.
    #[error("SPIFFE ID {id} is not in trust domain {trust_domain}")]
    ForeignTrustDomain {
        /// The requested ID.
        id: String,
        /// The CA's trust domain.
        trust_domain: String,
    },
    /// A DNS SAN is not a valid DNS name (a leading `*.` wildcard label is allowed).
    #[error("invalid DNS name {0:?}")]
    InvalidDnsName(String),
    /// A TTL of zero was asked for.
    #[error("TTL must be greater than zero")]
    ZeroTtl,
    /// A TTL so long the resulting date cannot be represented.
    #[error("TTL {0:?} is out of range")]
    TtlOutOfRange(Duration),
    /// The CA certificate is not valid at the current time.
    #[error("the CA certificate is not valid now (valid {not_before} to {not_after})")]
    CaNotValidNow {
        /// CA notBefore, RFC 3339.
        not_before: String,
        /// CA notAfter, RFC 3339.
        not_after: String,
    },
    /// A key id has characters other than `[A-Za-z0-9._-]`, starts with `.`, or is empty or
    /// longer than 128 bytes (ids become file names and must not escape the key directory).
    #[error("invalid key id {0:?}: use 1-128 of A-Z a-z 0-9 . _ -, not starting with '.'")]
    InvalidKeyId(String),
    /// A key type name other than `ec-p256`, `ec-p384` or `ed25519`.
    #[error("unknown key type {0:?}; expected ec-p256, ec-p384 or ed25519")]
    UnknownKeyType(String),
    /// A private key file can be read by group or others.
    #[error("key file {path} has mode {mode:o}; it must be 0600 or stricter")]
    KeyFileTooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A private key could not be decoded (not PEM, not PKCS#8, or not a supported type).
    #[error("private key is malformed: {0}")]
    KeyMalformed(String),
    /// A private key does not belong to the certificate it was paired with.
    #[error("the private key does not match the certificate's public key")]
    KeyMismatch,
    /// A CA certificate (own, reloaded or upstream) is unusable.
    #[error("CA certificate is unusable: {0}")]
    InvalidCaCertificate(String),
    /// The upstream certificate file does not end with a self-signed root.
    #[error("the upstream certificate chain does not end with a self-signed root")]
    UpstreamChainWithoutRoot,
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The cryptographic library failed to sign or generate (not caused by the input).
    #[error("signing failed: {0}")]
    Signing(String),
    /// A JWT-SVID was asked for without an audience (or with an empty one).
    #[error("a JWT-SVID needs at least one non-empty audience")]
    MissingAudience,
    /// Nothing can sign: the CA has no active authority of the kind asked for.
    #[error("the CA has no active authority; check the server log for rotation errors")]
    NoActiveAuthority,
    /// The journal names an authority whose key is not in the key manager.
    #[error("the key {0} of an authority in the journal is missing from the key directory")]
    MissingAuthorityKey(String),
    /// A new authority failed its self-test and was not activated.
    #[error("authority self-test failed: {0}")]
    SelfTest(String),
    /// The authority journal refused an operation or could not be read or written.
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
}

impl CaError {
    /// The error for an authority used outside its validity, with both ends as RFC 3339.
    pub(crate) fn not_valid_now(not_before: SystemTime, not_after: SystemTime) -> Self {
        let fmt = |t: SystemTime| {
            time::OffsetDateTime::from(t)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|_| format!("{t:?}"))
        };
        CaError::CaNotValidNow { not_before: fmt(not_before), not_after: fmt(not_after) }
    }

    /// Wraps an I/O error with the path it happened on.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| CaError::Io { path, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_svid_ttl_is_a_sixth_of_the_ca_ttl() {
        assert_eq!(max_svid_ttl(Duration::from_secs(24 * 3600)), Duration::from_secs(4 * 3600));
        assert_eq!(max_svid_ttl(Duration::from_secs(60)), Duration::from_secs(10));
    }
}

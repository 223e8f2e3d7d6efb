//! The SPIFFE bundle format (SPIFFE Trust Domain and Bundle §4): a JWK Set whose `keys` hold
//! X.509 authorities (`use` = `x509-svid`, one CA certificate in `x5c`, no `kid`) and JWT
//! authorities (`use` = `jwt-svid`, with a `kid`), plus `spiffe_sequence` and
//! `spiffe_refresh_hint` (seconds).
//!
//! Parsing follows the standard's leniency: entries with an unknown `use` or an unknown key
//! type are skipped, x509-svid entries without `x5c` are skipped, and only the first `x5c`
//! element counts. Everything else the standard requires is enforced, one error per rule.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::CertificateDer;
use serde_json::Value;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::jwk::{Jwk, JwkError, JwkParams};
use crate::jwt_bundle::{JwtBundle, JwtBundleError};
use crate::spiffe_id::TrustDomain;
use crate::x509::{X509Bundle, X509BundleError};

const X509_SVID_USE: &str = "x509-svid";
const JWT_SVID_USE: &str = "jwt-svid";

/// A rule of the bundle format that a document (or a bundle being written) breaks.
/// `index` is the position in `keys` when parsing, in `x509_authorities` when writing.
#[derive(Debug, thiserror::Error)]
pub enum BundleJsonError {
    /// The document is not JSON, or a top-level member has the wrong type.
    #[error("bundle is not a valid JWK Set document: {0}")]
    Json(#[source] serde_json::Error),
    /// The `keys` member is required (it may be empty).
    #[error("bundle has no `keys` member")]
    MissingKeys,
    /// An entry in `keys` is not an object, or one of its members has the wrong type.
    #[error("key entry {index} is malformed: {source}")]
    BadEntry {
        /// Position in `keys`.
        index: usize,
        /// What serde found.
        #[source]
        source: serde_json::Error,
    },
    /// Every entry must carry `use`.
    #[error("key entry {index} has no `use`")]
    MissingUse {
        /// Position in `keys`.
        index: usize,
    },
    /// `x509-svid` entries must not carry a `kid`.
    #[error("x509-svid entry {index} must not have a `kid`")]
    X509EntryWithKid {
        /// Position in `keys`.
        index: usize,
    },
    /// The `x5c` certificate is not standard base64.
    #[error("x509-svid entry {index}: `x5c` is not standard base64")]
    X509EntryBadBase64 {
        /// Position in `keys`.
        index: usize,
    },
    /// The `x5c` certificate is not a DER X.509 certificate.
    #[error("x509-svid entry {index}: `x5c` is not a DER certificate: {reason}")]
    X509EntryBadCert {
        /// Position in `keys` or `x509_authorities`.
        index: usize,
        /// The parser's complaint.
        reason: String,
    },
    /// The `x5c` certificate is not a CA certificate (basic constraints `cA=true`).
    #[error("x509-svid entry {index}: certificate is not a CA")]
    X509EntryNotCa {
        /// Position in `keys` or `x509_authorities`.
        index: usize,
    },
    /// The entry's key members are malformed (bad base64, wrong length); members that are
    /// merely absent are fine, since the certificate carries the key.
    #[error("x509-svid entry {index}: bad key members: {source}")]
    X509EntryBadKey {
        /// Position in `keys`.
        index: usize,
        /// What is wrong with them.
        #[source]
        source: JwkError,
    },
    /// The entry's key members describe a different key than its certificate.
    #[error("x509-svid entry {index}: key members do not match the certificate's key")]
    X509KeyMismatch {
        /// Position in `keys`.
        index: usize,
    },
    /// `jwt-svid` entries must carry a non-empty `kid`.
    #[error("jwt-svid entry {index} has no `kid`")]
    JwtEntryWithoutKid {
        /// Position in `keys` (or in kid order when writing).
        index: usize,
    },
    /// A `jwt-svid` entry's key members are malformed.
    #[error("jwt-svid entry `{kid}`: bad key: {source}")]
    JwtEntryBadKey {
        /// The entry's key ID.
        kid: String,
        /// What is wrong with it.
        #[source]
        source: JwkError,
    },
    /// Two `jwt-svid` entries share a `kid`.
    #[error("duplicate jwt-svid key ID `{0}`")]
    DuplicateKid(String),
    /// A certificate's key cannot be written as a JWK (for example P-521).
    #[error("x509 authority {index}: key cannot be expressed as a JWK: {source}")]
    UnsupportedKey {
        /// Position in `x509_authorities`.
        index: usize,
        /// Why.
        #[source]
        source: JwkError,
    },
    /// An X.509 bundle and a JWT bundle of different trust domains cannot make one bundle.
    #[error("X.509 bundle of {x509} and JWT bundle of {jwt} are not of one trust domain")]
    TrustDomainMismatch {
        /// The X.509 bundle's trust domain.
        x509: TrustDomain,
        /// The JWT bundle's trust domain.
        jwt: TrustDomain,
    },
}

/// A trust domain's SPIFFE bundle: its X.509 and JWT authorities and publishing metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpiffeBundle {
    /// The trust domain the bundle belongs to (not stored in the JSON: the caller knows it
    /// from where the document came from).
    pub trust_domain: TrustDomain,
    /// CA certificates (DER) that X.509-SVIDs of the trust domain chain to.
    pub x509_authorities: Vec<CertificateDer<'static>>,
    /// JWT-SVID signing keys by `kid`.
    pub jwt_authorities: BTreeMap<String, Jwk>,
    /// `spiffe_sequence`: increases whenever the content changes.
    pub sequence: Option<u64>,
    /// `spiffe_refresh_hint`: how often consumers should poll (whole seconds on the wire).
    pub refresh_hint: Option<Duration>,
}

#[derive(serde::Deserialize)]
struct RawSet {
    keys: Option<Vec<Value>>,
    spiffe_sequence: Option<u64>,
    spiffe_refresh_hint: Option<u64>,
}

#[derive(serde::Deserialize, serde::Serialize)]
struct Entry {
    #[serde(rename = "use")]
    use_: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    #[serde(flatten)]
    params: JwkParams,
    #[serde(skip_serializing_if = "Option::is_none")]
    x5c: Option<Vec<String>>,
}

#[derive(serde::Serialize)]
struct OutSet {
    keys: Vec<Entry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spiffe_sequence: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spiffe_refresh_hint: Option<u64>,
}

impl SpiffeBundle {
    /// An empty bundle (no authorities, no metadata).
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            x509_authorities: Vec::new(),
            jwt_authorities: BTreeMap::new(),
            sequence: None,
            refresh_hint: None,
        }
    }

    /// Parses the bundle document of `trust_domain`.
    pub fn parse(trust_domain: TrustDomain, json: &[u8]) -> Result<Self, BundleJsonError> {
        let raw: RawSet = serde_json::from_slice(json).map_err(BundleJsonError::Json)?;
        let mut bundle = Self::new(trust_domain);
        bundle.sequence = raw.spiffe_sequence;
        bundle.refresh_hint = raw.spiffe_refresh_hint.map(Duration::from_secs);
        for (index, value) in raw.keys.ok_or(BundleJsonError::MissingKeys)?.into_iter().enumerate()
        {
            let kind = match value.get("use") {
                None | Some(Value::Null) => return Err(BundleJsonError::MissingUse { index }),
                Some(Value::String(u)) if u == X509_SVID_USE || u == JWT_SVID_USE => u.clone(),
                Some(_) => continue,
            };
            let entry: Entry = serde_json::from_value(value)
                .map_err(|source| BundleJsonError::BadEntry { index, source })?;
            if kind == X509_SVID_USE {
                if let Some(cert) = parse_x509_entry(index, &entry)? {
                    bundle.x509_authorities.push(cert);
                }
            } else if let Some((kid, key)) = parse_jwt_entry(index, entry)? {
                if bundle.jwt_authorities.contains_key(&kid) {
                    return Err(BundleJsonError::DuplicateKid(kid));
                }
                bundle.jwt_authorities.insert(kid, key);
            }
        }
        Ok(bundle)
    }

    /// Writes the bundle document. X.509 entries carry the key members of their
    /// certificate's public key; JWT entries come in `kid` order.
    pub fn to_json(&self) -> Result<String, BundleJsonError> {
        let mut keys = Vec::new();
        for (index, der) in self.x509_authorities.iter().enumerate() {
            let key = check_ca_cert(index, der)?
                .map_err(|source| BundleJsonError::UnsupportedKey { index, source })?;
            keys.push(Entry {
                use_: Some(X509_SVID_USE.into()),
                kid: None,
                params: key.to_params(),
                x5c: Some(vec![STANDARD.encode(der)]),
            });
        }
        for (index, (kid, key)) in self.jwt_authorities.iter().enumerate() {
            if kid.is_empty() {
                return Err(BundleJsonError::JwtEntryWithoutKid { index });
            }
            keys.push(Entry {
                use_: Some(JWT_SVID_USE.into()),
                kid: Some(kid.clone()),
                params: key.to_params(),
                x5c: None,
            });
        }
        let out = OutSet {
            keys,
            spiffe_sequence: self.sequence,
            spiffe_refresh_hint: self.refresh_hint.map(|d| d.as_secs()),
        };
        serde_json::to_string(&out).map_err(BundleJsonError::Json)
    }

    /// The JWT part as a [`JwtBundle`].
    pub fn jwt_bundle(&self) -> Result<JwtBundle, JwtBundleError> {
        JwtBundle::from_authorities(self.trust_domain.clone(), self.jwt_authorities.clone())
    }

    /// A bundle holding only the authorities of `jwt` (as the Workload API's
    /// `FetchJWTBundles` sends it).
    pub fn from_jwt_bundle(jwt: &JwtBundle) -> Self {
        let mut bundle = Self::new(jwt.trust_domain().clone());
        bundle.jwt_authorities = jwt.authorities().clone();
        bundle
    }

    /// The X.509 part as an [`X509Bundle`] (duplicate authorities are dropped).
    pub fn x509_bundle(&self) -> Result<X509Bundle, X509BundleError> {
        X509Bundle::from_authorities(self.trust_domain.clone(), self.x509_authorities.clone())
    }

    /// The bundle of one trust domain from its typed parts and publishing metadata.
    ///
    /// Fails when the parts belong to different trust domains, and on any X.509 authority
    /// that [`to_json`](Self::to_json) would refuse (not a CA certificate, or a key that
    /// has no JWK form), so that the result can always be written.
    pub fn from_parts(
        x509: &X509Bundle,
        jwt: &JwtBundle,
        sequence: Option<u64>,
        refresh_hint: Option<Duration>,
    ) -> Result<Self, BundleJsonError> {
        if x509.trust_domain() != jwt.trust_domain() {
            return Err(BundleJsonError::TrustDomainMismatch {
                x509: x509.trust_domain().clone(),
                jwt: jwt.trust_domain().clone(),
            });
        }
        for (index, der) in x509.authorities().iter().enumerate() {
            check_ca_cert(index, der)?
                .map_err(|source| BundleJsonError::UnsupportedKey { index, source })?;
        }
        Ok(Self {
            trust_domain: x509.trust_domain().clone(),
            x509_authorities: x509.authorities().to_vec(),
            jwt_authorities: jwt.authorities().clone(),
            sequence,
            refresh_hint,
        })
    }
}

/// Reads the first `x5c` certificate of an x509-svid entry, or `None` when there is none.
fn parse_x509_entry(
    index: usize,
    entry: &Entry,
) -> Result<Option<CertificateDer<'static>>, BundleJsonError> {
    if entry.kid.is_some() {
        return Err(BundleJsonError::X509EntryWithKid { index });
    }
    let Some(first) = entry.x5c.as_ref().and_then(|chain| chain.first()) else {
        return Ok(None);
    };
    let der = STANDARD.decode(first).map_err(|_| BundleJsonError::X509EntryBadBase64 { index })?;
    // Every authority must also be one an X509Bundle takes (the bundle_json fuzz target
    // found a CA that x509-parser reads and webpki refuses as a trust anchor).
    crate::x509::check_authority(&CertificateDer::from(der.as_slice()), index)
        .map_err(|e| BundleJsonError::X509EntryBadCert { index, reason: e.to_string() })?;
    // Refused like `to_json` and `from_parts` refuse it: a bundle is only accepted when it
    // can be written back (the agent stores and serves what it accepts).
    let cert_key = check_ca_cert(index, &der)?
        .map_err(|source| BundleJsonError::UnsupportedKey { index, source })?;
    if entry.params.kty.is_some() {
        match Jwk::from_params(&entry.params) {
            Ok(listed) => {
                if cert_key != listed {
                    return Err(BundleJsonError::X509KeyMismatch { index });
                }
            }
            // The certificate is the authority; partial or unknown key members add nothing.
            Err(e) if e.is_unsupported() || matches!(e, JwkError::MissingField(_)) => {}
            Err(source) => return Err(BundleJsonError::X509EntryBadKey { index, source }),
        }
    }
    Ok(Some(CertificateDer::from(der)))
}

/// Parses a CA certificate and returns its public key as a JWK (or why it has none).
fn check_ca_cert(index: usize, der: &[u8]) -> Result<Result<Jwk, JwkError>, BundleJsonError> {
    let bad = |reason: String| BundleJsonError::X509EntryBadCert { index, reason };
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| bad(e.to_string()))?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes after the certificate".into()));
    }
    let is_ca =
        cert.basic_constraints().map_err(|e| bad(e.to_string()))?.is_some_and(|bc| bc.value.ca);
    if !is_ca {
        return Err(BundleJsonError::X509EntryNotCa { index });
    }
    Ok(Jwk::from_spki_der(cert.public_key().raw))
}

/// Reads a jwt-svid entry; `None` for a key type this implementation does not know.
fn parse_jwt_entry(index: usize, entry: Entry) -> Result<Option<(String, Jwk)>, BundleJsonError> {
    let kid = match entry.kid {
        Some(kid) if !kid.is_empty() => kid,
        _ => return Err(BundleJsonError::JwtEntryWithoutKid { index }),
    };
    match Jwk::from_params(&entry.params) {
        Ok(key) => Ok(Some((kid, key))),
        Err(e) if e.is_unsupported() => Ok(None),
        Err(source) => Err(BundleJsonError::JwtEntryBadKey { kid, source }),
    }
}

#[cfg(test)]
mod tests;

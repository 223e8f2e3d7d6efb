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
    let cert_key = check_ca_cert(index, &der)?;
    if entry.params.kty.is_some() {
        match Jwk::from_params(&entry.params) {
            Ok(listed) => {
                if cert_key.is_ok_and(|k| k != listed) {
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
mod tests {
    use super::*;
    use crate::jwk::tests::RSA_TEST_KEY;
    use crate::jws::Es256Signer;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SignatureAlgorithm};

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn cert(key: &KeyPair, is_ca: IsCa) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = is_ca;
        params.self_signed(key).unwrap().der().clone()
    }

    fn ca(alg: &'static SignatureAlgorithm) -> CertificateDer<'static> {
        cert(&KeyPair::generate_for(alg).unwrap(), IsCa::Ca(BasicConstraints::Unconstrained))
    }

    fn b64(der: &[u8]) -> String {
        STANDARD.encode(der)
    }

    fn ec_members() -> String {
        let p = Es256Signer::generate().unwrap().public_jwk().to_params();
        format!(r#""kty":"EC","crv":"P-256","x":"{}","y":"{}""#, p.x.unwrap(), p.y.unwrap())
    }

    fn parse(doc: &str) -> Result<SpiffeBundle, BundleJsonError> {
        SpiffeBundle::parse(td(), doc.as_bytes())
    }

    #[test]
    fn handwritten_bundle_with_both_uses_parses() {
        let root = ca(&rcgen::PKCS_ECDSA_P256_SHA256);
        let doc = format!(
            r#"{{"spiffe_sequence":7,"spiffe_refresh_hint":300,"keys":[
                {{"use":"x509-svid","kty":"EC","x5c":["{}"]}},
                {{"use":"jwt-svid","kid":"k1",{}}}]}}"#,
            b64(&root),
            ec_members()
        );
        let b = parse(&doc).unwrap();
        assert_eq!(b.x509_authorities, vec![root]);
        assert_eq!(b.jwt_authorities.keys().collect::<Vec<_>>(), ["k1"]);
        assert_eq!((b.sequence, b.refresh_hint), (Some(7), Some(Duration::from_secs(300))));
        assert_eq!(b.jwt_bundle().unwrap().authority("k1"), b.jwt_authorities.get("k1"));
    }

    #[test]
    fn x509_entry_with_kid_is_rejected() {
        let doc = format!(
            r#"{{"keys":[{{"use":"x509-svid","kid":"a","x5c":["{}"]}}]}}"#,
            b64(&ca(&rcgen::PKCS_ED25519))
        );
        assert!(matches!(parse(&doc), Err(BundleJsonError::X509EntryWithKid { index: 0 })));
    }

    #[test]
    fn jwt_entry_without_kid_is_rejected() {
        let doc = format!(r#"{{"keys":[{{"use":"jwt-svid",{}}}]}}"#, ec_members());
        assert!(matches!(parse(&doc), Err(BundleJsonError::JwtEntryWithoutKid { index: 0 })));
        let empty = format!(r#"{{"keys":[{{"use":"jwt-svid","kid":"",{}}}]}}"#, ec_members());
        assert!(matches!(parse(&empty), Err(BundleJsonError::JwtEntryWithoutKid { index: 0 })));
    }

    #[test]
    fn only_the_first_x5c_element_counts() {
        let (first, second) = (ca(&rcgen::PKCS_ED25519), ca(&rcgen::PKCS_ECDSA_P384_SHA384));
        let doc = format!(
            r#"{{"keys":[{{"use":"x509-svid","x5c":["{}","not base64!","{}"]}}]}}"#,
            b64(&first),
            b64(&second)
        );
        assert_eq!(parse(&doc).unwrap().x509_authorities, vec![first]);
    }

    #[test]
    fn x509_entry_without_x5c_is_ignored() {
        let doc = format!(
            r#"{{"keys":[{{"use":"x509-svid",{}}},{{"use":"x509-svid","x5c":[]}}]}}"#,
            ec_members()
        );
        assert!(parse(&doc).unwrap().x509_authorities.is_empty());
    }

    #[test]
    fn unknown_use_and_unknown_key_types_are_ignored() {
        let doc = r#"{"keys":[
            {"use":"wit-svid","kid":7,"x5c":{"odd":true}},
            {"use":"X509-SVID","kid":"case matters"},
            {"use":"jwt-svid","kid":"sym","kty":"oct","k":"AAAA"},
            {"use":"jwt-svid","kid":"p521","kty":"EC","crv":"P-521","x":"AA","y":"AA"}]}"#;
        let b = parse(doc).unwrap();
        assert!(b.x509_authorities.is_empty() && b.jwt_authorities.is_empty());
    }

    #[test]
    fn keys_member_is_required_but_may_be_empty() {
        assert!(matches!(parse(r#"{"spiffe_sequence":1}"#), Err(BundleJsonError::MissingKeys)));
        let b = parse(r#"{"keys":[],"spiffe_sequence":2}"#).unwrap();
        assert_eq!(
            (b.x509_authorities.len(), b.jwt_authorities.len(), b.sequence),
            (0, 0, Some(2))
        );
        assert!(matches!(parse("[]"), Err(BundleJsonError::Json(_))));
        assert!(matches!(
            parse(r#"{"keys":[],"spiffe_refresh_hint":-1}"#),
            Err(BundleJsonError::Json(_))
        ));
    }

    #[test]
    fn entry_without_use_is_rejected() {
        let doc = format!(r#"{{"keys":[{{"kid":"k",{}}}]}}"#, ec_members());
        assert!(matches!(parse(&doc), Err(BundleJsonError::MissingUse { index: 0 })));
    }

    #[test]
    fn duplicate_kid_is_rejected() {
        let doc = format!(
            r#"{{"keys":[{{"use":"jwt-svid","kid":"k",{m}}},{{"use":"jwt-svid","kid":"k",{m}}}]}}"#,
            m = ec_members()
        );
        assert!(matches!(parse(&doc), Err(BundleJsonError::DuplicateKid(k)) if k == "k"));
    }

    #[test]
    fn malformed_jwt_key_is_rejected() {
        let doc =
            r#"{"keys":[{"use":"jwt-svid","kid":"k","kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}"#;
        assert!(
            matches!(parse(doc), Err(BundleJsonError::JwtEntryBadKey { kid, .. }) if kid == "k")
        );
        let typed = r#"{"keys":[{"use":"jwt-svid","kid":5}]}"#;
        assert!(matches!(parse(typed), Err(BundleJsonError::BadEntry { index: 0, .. })));
    }

    #[test]
    fn x5c_that_is_not_a_ca_certificate_is_rejected() {
        let x5c = |s: &str| format!(r#"{{"keys":[{{"use":"x509-svid","x5c":["{s}"]}}]}}"#);
        assert!(matches!(parse(&x5c("@@")), Err(BundleJsonError::X509EntryBadBase64 { index: 0 })));
        assert!(matches!(
            parse(&x5c("AAAA")),
            Err(BundleJsonError::X509EntryBadCert { index: 0, .. })
        ));
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let leaf = cert(&key, IsCa::ExplicitNoCa);
        assert!(matches!(
            parse(&x5c(&b64(&leaf))),
            Err(BundleJsonError::X509EntryNotCa { index: 0 })
        ));
    }

    #[test]
    fn x509_key_members_must_match_the_certificate() {
        let doc = format!(
            r#"{{"keys":[{{"use":"x509-svid","x5c":["{}"],{}}}]}}"#,
            b64(&ca(&rcgen::PKCS_ECDSA_P256_SHA256)),
            ec_members()
        );
        assert!(matches!(parse(&doc), Err(BundleJsonError::X509KeyMismatch { index: 0 })));
        let doc = format!(
            r#"{{"keys":[{{"use":"x509-svid","x5c":["{}"],"kty":"EC","crv":"P-256","x":"AA","y":"AA"}}]}}"#,
            b64(&ca(&rcgen::PKCS_ECDSA_P256_SHA256)),
        );
        assert!(matches!(parse(&doc), Err(BundleJsonError::X509EntryBadKey { index: 0, .. })));
    }

    fn full_bundle() -> SpiffeBundle {
        let rsa = KeyPair::from_pem(RSA_TEST_KEY).unwrap();
        let mut b = SpiffeBundle::new(td());
        b.x509_authorities = vec![
            ca(&rcgen::PKCS_ECDSA_P256_SHA256),
            ca(&rcgen::PKCS_ECDSA_P384_SHA384),
            ca(&rcgen::PKCS_ED25519),
            cert(&rsa, IsCa::Ca(BasicConstraints::Constrained(0))),
        ];
        for kid in ["b", "a"] {
            b.jwt_authorities
                .insert(kid.into(), Es256Signer::generate().unwrap().public_jwk().clone());
        }
        let rsa_jwk = Jwk::from_spki_der(&rcgen::PublicKeyData::subject_public_key_info(&rsa));
        b.jwt_authorities.insert("rsa".into(), rsa_jwk.unwrap());
        b.sequence = Some(u64::MAX);
        b.refresh_hint = Some(Duration::from_secs(2_419_200));
        b
    }

    #[test]
    fn serialize_then_parse_gives_the_same_bundle() {
        let b = full_bundle();
        let json = b.to_json().unwrap();
        assert_eq!(SpiffeBundle::parse(td(), json.as_bytes()).unwrap(), b);
        let empty = SpiffeBundle::new(td());
        assert_eq!(empty.to_json().unwrap(), r#"{"keys":[]}"#);
    }

    #[test]
    fn serialized_x509_entries_carry_the_certificate_key_and_no_kid() {
        let b = full_bundle();
        let doc: Value = serde_json::from_str(&b.to_json().unwrap()).unwrap();
        let keys = doc["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 7);
        for (entry, der) in keys.iter().zip(&b.x509_authorities) {
            assert_eq!(entry["use"], "x509-svid");
            assert!(entry.get("kid").is_none());
            assert_eq!(entry["x5c"], serde_json::json!([b64(der)]));
            let listed: Jwk = serde_json::from_value(entry.clone()).unwrap();
            let (_, c) = X509Certificate::from_der(der).unwrap();
            assert_eq!(listed, Jwk::from_spki_der(c.public_key().raw).unwrap());
        }
        let kids: Vec<_> = keys[4..].iter().map(|e| (e["use"].clone(), e["kid"].clone())).collect();
        assert_eq!(
            kids,
            [
                ("jwt-svid".into(), "a".into()),
                ("jwt-svid".into(), "b".into()),
                ("jwt-svid".into(), "rsa".into())
            ]
        );
        assert_eq!(doc["spiffe_sequence"], u64::MAX);
        assert_eq!(doc["spiffe_refresh_hint"], 2_419_200);
    }

    #[test]
    fn writing_refuses_what_parsing_would_refuse() {
        let mut b = SpiffeBundle::new(td());
        b.jwt_authorities
            .insert(String::new(), Es256Signer::generate().unwrap().public_jwk().clone());
        assert!(matches!(b.to_json(), Err(BundleJsonError::JwtEntryWithoutKid { index: 0 })));
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut b = SpiffeBundle::new(td());
        b.x509_authorities.push(cert(&key, IsCa::ExplicitNoCa));
        assert!(matches!(b.to_json(), Err(BundleJsonError::X509EntryNotCa { index: 0 })));
    }

    #[test]
    fn jwt_bundle_converts_both_ways() {
        let b = full_bundle();
        let jwt = b.jwt_bundle().unwrap();
        let back = SpiffeBundle::from_jwt_bundle(&jwt);
        assert_eq!(back.jwt_authorities, b.jwt_authorities);
        assert!(back.x509_authorities.is_empty());
    }
}

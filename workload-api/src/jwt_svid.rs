//! JWT-SVIDs (SPIFFE JWT-SVID standard): parsing and validating a token against JWT
//! bundles, and signing one.
//!
//! A JWT-SVID is a compact JWS signed with RS256/384/512, ES256/384/512 or PS256/384/512,
//! whose `typ` (if any) is `JWT` or `JOSE`, whose `kid` names a key in the bundle of the
//! subject's trust domain, and whose claims carry `sub` (a SPIFFE ID with a path), `aud`
//! and `exp`. `nbf` and `iat` are honoured when present.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::jwk::JwkError;
use crate::jws::{CompactJws, JwsAlg, JwsError, JwsSigner, sign_compact};
use crate::jwt_bundle::JwtBundleSet;
use crate::spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};

/// Clock skew tolerated on `exp`, `nbf` and `iat` by [`validate_jwt_svid`].
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// A rule of the JWT-SVID standard that a token breaks, or a failure to sign one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtSvidError {
    /// The token is not a compact JWS with JSON-object header and payload.
    #[error("malformed token: {0}")]
    Malformed(#[source] JwsError),
    /// `alg` is missing or not one the standard allows (`none` and `HS*` never are).
    #[error("unsupported JWT-SVID algorithm `{0}`")]
    UnsupportedAlg(String),
    /// `typ` is present but is neither `JWT` nor `JOSE`.
    #[error("header `typ` must be JWT or JOSE, got {0}")]
    BadTyp(String),
    /// The header lists critical extensions, none of which are understood here.
    #[error("header has critical extensions (`crit`), which are not supported")]
    UnsupportedCrit,
    /// `kid` is required to find the signing key.
    #[error("header has no `kid`")]
    MissingKid,
    /// The `sub` claim is absent.
    #[error("token has no `sub` claim")]
    MissingSubject,
    /// `sub` is not a valid SPIFFE ID.
    #[error("`sub` is not a SPIFFE ID: {0}")]
    InvalidSubject(#[source] SpiffeIdError),
    /// `sub` names a trust domain itself; a JWT-SVID's ID needs a path.
    #[error("`sub` {0} has no path")]
    SubjectIsRoot(SpiffeId),
    /// No JWT bundle is known for the subject's trust domain.
    #[error("no JWT bundle for trust domain {0}")]
    NoBundleForTrustDomain(TrustDomain),
    /// The bundle has no key with this `kid`.
    #[error("no JWT authority `{kid}` in the bundle of {trust_domain}")]
    UnknownKid {
        /// The token's key ID.
        kid: String,
        /// The bundle looked in.
        trust_domain: TrustDomain,
    },
    /// The key named by `kid` cannot verify `alg` (for example ES256 with an RSA key).
    #[error("authority `{kid}` cannot verify {alg}")]
    KeyAlgMismatch {
        /// The token's key ID.
        kid: String,
        /// The token's algorithm.
        alg: JwsAlg,
    },
    /// The signature does not verify under the authority's key.
    #[error("signature does not verify")]
    BadSignature,
    /// A claim has the wrong JSON type (for example `exp` as a string).
    #[error("claim `{0}` has the wrong type")]
    InvalidClaim(&'static str),
    /// The `aud` claim is absent or empty.
    #[error("token has no `aud` claim")]
    MissingAudience,
    /// The caller gave no audience to check; validating without one is never safe.
    #[error("no expected audience given")]
    NoExpectedAudience,
    /// An expected audience is not in `aud`.
    #[error("audience {expected:?} not in token audience {actual:?}")]
    AudienceMismatch {
        /// The audience looked for.
        expected: String,
        /// The token's `aud` values.
        actual: Vec<String>,
    },
    /// The `exp` claim is absent.
    #[error("token has no `exp` claim")]
    MissingExpiry,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` is still in the future.
    #[error("token not valid yet")]
    NotYetValid,
    /// `iat` is in the future.
    #[error("token issued in the future")]
    IssuedInFuture,
    /// Signing a new token failed.
    #[error("signing failed: {0}")]
    Signing(#[source] JwsError),
}

/// A validated JWT-SVID.
#[derive(Clone, PartialEq, Eq)]
pub struct JwtSvid {
    /// The subject (`sub`).
    pub spiffe_id: SpiffeId,
    /// The `aud` values.
    pub audience: Vec<String>,
    /// When the token expires (`exp`).
    pub expiry: SystemTime,
    /// Every claim, as sent (the Workload API returns them from `ValidateJWTSVID`).
    pub claims: Map<String, Value>,
    /// The token itself; a bearer secret, kept out of `Debug`.
    pub token: String,
}

impl fmt::Debug for JwtSvid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSvid")
            .field("spiffe_id", &self.spiffe_id)
            .field("audience", &self.audience)
            .field("expiry", &self.expiry)
            .field("token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Validates `token` against `bundles` with [`DEFAULT_LEEWAY`]; every audience in
/// `audiences` must be in the token's `aud`.
pub fn validate_jwt_svid(
    token: &str,
    bundles: &JwtBundleSet,
    audiences: &[&str],
    now: SystemTime,
) -> Result<JwtSvid, JwtSvidError> {
    validate_jwt_svid_with_leeway(token, bundles, audiences, now, DEFAULT_LEEWAY)
}

/// [`validate_jwt_svid`] with an explicit clock-skew allowance.
pub fn validate_jwt_svid_with_leeway(
    token: &str,
    bundles: &JwtBundleSet,
    audiences: &[&str],
    now: SystemTime,
    leeway: Duration,
) -> Result<JwtSvid, JwtSvidError> {
    let jws = CompactJws::decode(token).map_err(JwtSvidError::Malformed)?;
    let (alg, kid) = check_header(&jws.header)?;
    crate::jws::require_low_s(alg, &jws.signature).map_err(JwtSvidError::Malformed)?;
    let spiffe_id = subject(&jws.payload)?;
    let td = spiffe_id.trust_domain();
    let bundle =
        bundles.get(&td).ok_or_else(|| JwtSvidError::NoBundleForTrustDomain(td.clone()))?;
    let key = bundle
        .authority(&kid)
        .ok_or_else(|| JwtSvidError::UnknownKid { kid: kid.clone(), trust_domain: td })?;
    key.verify(alg, jws.signing_input.as_bytes(), &jws.signature).map_err(|e| match e {
        JwkError::AlgKeyMismatch { .. } => JwtSvidError::KeyAlgMismatch { kid, alg },
        _ => JwtSvidError::BadSignature,
    })?;

    let audience = audience(&jws.payload)?;
    if audiences.is_empty() {
        return Err(JwtSvidError::NoExpectedAudience);
    }
    if let Some(missing) = audiences.iter().find(|a| !audience.iter().any(|t| t == *a)) {
        return Err(JwtSvidError::AudienceMismatch {
            expected: (*missing).into(),
            actual: audience,
        });
    }
    let expiry = numeric_date(&jws.payload, "exp")?.ok_or(JwtSvidError::MissingExpiry)?;
    if expiry.checked_add(leeway).is_some_and(|limit| now >= limit) {
        return Err(JwtSvidError::Expired);
    }
    let skewed_now = now.checked_add(leeway).unwrap_or(now);
    if numeric_date(&jws.payload, "nbf")?.is_some_and(|nbf| skewed_now < nbf) {
        return Err(JwtSvidError::NotYetValid);
    }
    if numeric_date(&jws.payload, "iat")?.is_some_and(|iat| iat > skewed_now) {
        return Err(JwtSvidError::IssuedInFuture);
    }
    Ok(JwtSvid { spiffe_id, audience, expiry, claims: jws.payload, token: token.to_owned() })
}

/// Signs `claims` into a compact JWT with header `{alg, kid, typ: "JWT"}`. The claims are
/// not checked: the caller (the CA) builds them, and tests use this to craft bad tokens.
pub fn encode_jwt_svid(
    claims: &Map<String, Value>,
    kid: &str,
    signer: &dyn JwsSigner,
) -> Result<String, JwtSvidError> {
    sign_compact(claims, kid, signer).map_err(JwtSvidError::Signing)
}

fn check_header(header: &Map<String, Value>) -> Result<(JwsAlg, String), JwtSvidError> {
    let alg_name = match header.get("alg") {
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return Err(JwtSvidError::UnsupportedAlg(other.to_string())),
        None => return Err(JwtSvidError::UnsupportedAlg(String::new())),
    };
    let alg = JwsAlg::parse(alg_name)
        .filter(|a| a.is_jwt_svid_alg())
        .ok_or_else(|| JwtSvidError::UnsupportedAlg(alg_name.to_owned()))?;
    match header.get("typ") {
        None => {}
        Some(Value::String(t)) if t == "JWT" || t == "JOSE" => {}
        Some(other) => return Err(JwtSvidError::BadTyp(other.to_string())),
    }
    if header.contains_key("crit") {
        return Err(JwtSvidError::UnsupportedCrit);
    }
    match header.get("kid") {
        Some(Value::String(kid)) if !kid.is_empty() => Ok((alg, kid.clone())),
        _ => Err(JwtSvidError::MissingKid),
    }
}

fn subject(claims: &Map<String, Value>) -> Result<SpiffeId, JwtSvidError> {
    let sub = match claims.get("sub") {
        None => return Err(JwtSvidError::MissingSubject),
        Some(Value::String(s)) => s,
        Some(_) => return Err(JwtSvidError::InvalidClaim("sub")),
    };
    let id = SpiffeId::parse(sub).map_err(JwtSvidError::InvalidSubject)?;
    if id.is_root() {
        return Err(JwtSvidError::SubjectIsRoot(id));
    }
    Ok(id)
}

fn audience(claims: &Map<String, Value>) -> Result<Vec<String>, JwtSvidError> {
    let list = match claims.get("aud") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or(JwtSvidError::InvalidClaim("aud")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(JwtSvidError::InvalidClaim("aud")),
    };
    if list.is_empty() {
        return Err(JwtSvidError::MissingAudience);
    }
    Ok(list)
}

/// Reads a NumericDate claim (seconds since the epoch, possibly fractional or negative).
fn numeric_date(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<SystemTime>, JwtSvidError> {
    let Some(value) = claims.get(name) else { return Ok(None) };
    let bad = || JwtSvidError::InvalidClaim(name);
    let secs = value.as_f64().filter(|s| s.is_finite()).ok_or_else(bad)?;
    let time = if let Some(u) = value.as_u64() {
        UNIX_EPOCH.checked_add(Duration::from_secs(u))
    } else if secs >= 0.0 {
        Duration::try_from_secs_f64(secs).ok().and_then(|d| UNIX_EPOCH.checked_add(d))
    } else {
        Duration::try_from_secs_f64(-secs).ok().and_then(|d| UNIX_EPOCH.checked_sub(d))
    };
    time.map(Some).ok_or_else(bad)
}

#[cfg(test)]
mod tests;

//! The JWT authority: one signing key with a `kid`, minting JWT-SVIDs.
//!
//! A JWT-SVID is a compact JWS whose header names the key (`kid`) and whose claims say who
//! (`sub`, a SPIFFE ID with a path), for whom (`aud`), and until when (`exp`, never past the
//! authority's own end of life). Validators find the key by `kid` in the trust domain's JWT
//! bundle, which publishes every authority that has not been revoked.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keycard_workload_api::jws::{JwsError, JwsSigner};
use keycard_workload_api::{Jwk, SpiffeId, TrustDomain, encode_jwt_svid};
use rand::Rng as _;
use serde_json::{Map, Value, json};

use super::{CaError, KeyType, SigningKey};

/// Length of a generated `kid`.
const KID_LEN: usize = 32;

/// A JWT-SVID as minted.
#[derive(Clone)]
pub struct MintedJwtSvid {
    /// The compact JWS.
    pub token: String,
    /// The `exp` claim.
    pub expiry: SystemTime,
}

impl fmt::Debug for MintedJwtSvid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a bearer credential: never in logs.
        f.debug_struct("MintedJwtSvid").field("expiry", &self.expiry).finish_non_exhaustive()
    }
}

/// A key that signs JWT-SVIDs for one trust domain.
pub struct JwtAuthority {
    trust_domain: TrustDomain,
    kid: String,
    key: Arc<SigningKey>,
    public_key: Jwk,
    issued_at: SystemTime,
    not_after: SystemTime,
}

impl fmt::Debug for JwtAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("kid", &self.kid)
            .field("key", &self.key)
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// A fresh random key ID: 32 characters of `[A-Za-z0-9]`.
pub fn new_kid() -> String {
    rand::rng().sample_iter(rand::distr::Alphanumeric).take(KID_LEN).map(char::from).collect()
}

impl JwtAuthority {
    /// Wraps `key` as the authority `kid`, valid from `issued_at` until `not_after`. Only
    /// ECDSA keys are accepted: the JWT-SVID standard has no EdDSA.
    pub fn new(
        trust_domain: TrustDomain,
        kid: String,
        key: Arc<SigningKey>,
        issued_at: SystemTime,
        not_after: SystemTime,
    ) -> Result<Self, CaError> {
        if key.key_type() == KeyType::Ed25519 {
            return Err(CaError::UnsupportedKey(
                "JWT-SVIDs cannot be signed with ed25519 (the standard allows only RSA and \
                 ECDSA); use ec-p256 or ec-p384"
                    .into(),
            ));
        }
        let public_key = Jwk::from_spki_der(&key.public_key_der())
            .map_err(|e| CaError::KeyMalformed(e.to_string()))?;
        Ok(Self { trust_domain, kid, key, public_key, issued_at, not_after })
    }

    /// The trust domain it signs for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The key ID published in the bundle and put in every token's header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key, as published in the JWT bundle.
    pub fn public_key(&self) -> &Jwk {
        &self.public_key
    }

    /// The signing key.
    pub fn key(&self) -> &Arc<SigningKey> {
        &self.key
    }

    /// When this authority was made.
    pub fn issued_at(&self) -> SystemTime {
        self.issued_at
    }

    /// After this, the authority signs nothing and its tokens no longer validate.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Mints a JWT-SVID for `spiffe_id` and `audiences`, expiring after `ttl` or at the
    /// authority's end of life, whichever is first.
    pub fn sign_jwt_svid(
        &self,
        spiffe_id: &SpiffeId,
        audiences: &[String],
        ttl: Duration,
        now: SystemTime,
    ) -> Result<MintedJwtSvid, CaError> {
        self.sign_bound_jwt_svid(spiffe_id, audiences, ttl, now, None)
    }

    /// [`JwtAuthority::sign_jwt_svid`] with, when `x5t_s256` is given, the RFC 8705
    /// confirmation claim `cnf: {"x5t#S256": x5t_s256}` binding the token to the
    /// certificate of that thumbprint. The standard claims are the same either way.
    pub fn sign_bound_jwt_svid(
        &self,
        spiffe_id: &SpiffeId,
        audiences: &[String],
        ttl: Duration,
        now: SystemTime,
        x5t_s256: Option<&str>,
    ) -> Result<MintedJwtSvid, CaError> {
        if spiffe_id.is_root() {
            return Err(CaError::RootPathId(spiffe_id.to_string()));
        }
        if !spiffe_id.is_member_of(&self.trust_domain) {
            return Err(CaError::ForeignTrustDomain {
                id: spiffe_id.to_string(),
                trust_domain: self.trust_domain.to_string(),
            });
        }
        if audiences.is_empty() || audiences.iter().any(|a| a.is_empty()) {
            return Err(CaError::MissingAudience);
        }
        if ttl.is_zero() {
            return Err(CaError::ZeroTtl);
        }
        let expiry = (now + ttl).min(self.not_after);
        let iat = unix_secs(now);
        let exp = unix_secs(expiry);
        if exp <= iat {
            return Err(CaError::not_valid_now(self.issued_at, self.not_after));
        }
        let mut claims = Map::new();
        claims.insert("sub".into(), Value::String(spiffe_id.to_string()));
        claims.insert("aud".into(), json!(audiences));
        claims.insert("exp".into(), json!(exp));
        claims.insert("iat".into(), json!(iat));
        if let Some(thumbprint) = x5t_s256 {
            claims.insert("cnf".into(), json!({ "x5t#S256": thumbprint }));
        }
        let token = encode_jwt_svid(&claims, &self.kid, self)
            .map_err(|e| CaError::Signing(e.to_string()))?;
        Ok(MintedJwtSvid { token, expiry: UNIX_EPOCH + Duration::from_secs(exp) })
    }
}

impl JwsSigner for JwtAuthority {
    fn alg(&self) -> &str {
        match self.key.key_type() {
            KeyType::EcP384 => "ES384",
            _ => "ES256",
        }
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, JwsError> {
        self.key.sign(msg).map_err(|_| JwsError::Signing)
    }
}

/// Whole seconds since the Unix epoch (JWT `NumericDate`).
fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use keycard_workload_api::{JwtBundle, JwtBundleSet, JwtSvidError, validate_jwt_svid};

    use super::*;

    fn authority(key_type: KeyType, now: SystemTime) -> JwtAuthority {
        let td = TrustDomain::new("example.org").unwrap();
        let key = Arc::new(SigningKey::generate(key_type).unwrap());
        JwtAuthority::new(td, new_kid(), key, now, now + Duration::from_secs(3600)).unwrap()
    }

    fn bundles(authorities: &[&JwtAuthority]) -> JwtBundleSet {
        let td = TrustDomain::new("example.org").unwrap();
        let mut bundle = JwtBundle::new(td);
        for a in authorities {
            bundle.add_authority(a.kid().to_string(), a.public_key().clone()).unwrap();
        }
        [bundle].into_iter().collect()
    }

    fn id() -> SpiffeId {
        SpiffeId::parse("spiffe://example.org/web").unwrap()
    }

    #[test]
    fn minted_token_validates_with_the_workload_api_validator() {
        let now = SystemTime::now();
        for key_type in [KeyType::EcP256, KeyType::EcP384] {
            let a = authority(key_type, now);
            let minted =
                a.sign_jwt_svid(&id(), &["db".into()], Duration::from_secs(300), now).unwrap();
            let svid = validate_jwt_svid(&minted.token, &bundles(&[&a]), &["db"], now).unwrap();
            assert_eq!(svid.spiffe_id, id());
            assert_eq!(svid.expiry, minted.expiry);
            assert!(!format!("{minted:?}").contains(&minted.token));
        }
    }

    #[test]
    fn a_bound_token_carries_cnf_and_the_same_standard_claims() {
        let now = SystemTime::now();
        let a = authority(KeyType::EcP256, now);
        let ttl = Duration::from_secs(300);
        let thumbprint = keycard_workload_api::x5t_s256(b"leaf");
        let bound = a.sign_bound_jwt_svid(&id(), &["db".into()], ttl, now, Some(&thumbprint));
        let plain = a.sign_jwt_svid(&id(), &["db".into()], ttl, now).unwrap();
        let set = bundles(&[&a]);
        let bound = validate_jwt_svid(&bound.unwrap().token, &set, &["db"], now).unwrap();
        let plain = validate_jwt_svid(&plain.token, &set, &["db"], now).unwrap();
        assert_eq!(bound.claims["cnf"], json!({ "x5t#S256": thumbprint }));
        assert_eq!(plain.claims.get("cnf"), None);
        let mut without_cnf = bound.claims.clone();
        without_cnf.remove("cnf");
        assert_eq!(without_cnf, plain.claims);
    }

    #[test]
    fn wrong_audience_expired_and_foreign_key_each_fail_with_their_own_error() {
        let now = SystemTime::now();
        let a = authority(KeyType::EcP256, now);
        let other = authority(KeyType::EcP256, now);
        let token =
            a.sign_jwt_svid(&id(), &["db".into()], Duration::from_secs(60), now).unwrap().token;
        let set = bundles(&[&a]);
        let err = validate_jwt_svid(&token, &set, &["cache"], now).unwrap_err();
        assert!(matches!(err, JwtSvidError::AudienceMismatch { .. }), "{err:?}");
        let later = now + Duration::from_secs(600);
        let err = validate_jwt_svid(&token, &set, &["db"], later).unwrap_err();
        assert!(matches!(err, JwtSvidError::Expired), "{err:?}");
        let err = validate_jwt_svid(&token, &bundles(&[&other]), &["db"], now).unwrap_err();
        assert!(matches!(err, JwtSvidError::UnknownKid { .. }), "{err:?}");
    }

    #[test]
    fn expiry_is_capped_at_the_authority_end_of_life() {
        let now = SystemTime::now();
        let a = authority(KeyType::EcP256, now);
        let minted =
            a.sign_jwt_svid(&id(), &["db".into()], Duration::from_secs(86_400), now).unwrap();
        assert!(minted.expiry <= a.not_after());
    }

    #[test]
    fn bad_requests_are_refused() {
        let now = SystemTime::now();
        let a = authority(KeyType::EcP256, now);
        let ttl = Duration::from_secs(60);
        let root = SpiffeId::parse("spiffe://example.org").unwrap();
        let foreign = SpiffeId::parse("spiffe://example.com/web").unwrap();
        let aud = ["db".to_string()];
        assert!(matches!(a.sign_jwt_svid(&root, &aud, ttl, now), Err(CaError::RootPathId(_))));
        assert!(matches!(
            a.sign_jwt_svid(&foreign, &aud, ttl, now),
            Err(CaError::ForeignTrustDomain { .. })
        ));
        assert!(matches!(a.sign_jwt_svid(&id(), &[], ttl, now), Err(CaError::MissingAudience)));
        let after = a.not_after() + Duration::from_secs(1);
        assert!(matches!(
            a.sign_jwt_svid(&id(), &aud, ttl, after),
            Err(CaError::CaNotValidNow { .. })
        ));
        let td = TrustDomain::new("example.org").unwrap();
        let ed = Arc::new(SigningKey::generate(KeyType::Ed25519).unwrap());
        assert!(JwtAuthority::new(td, new_kid(), ed, now, now).is_err());
    }
}

use super::*;
use crate::jwk::Jwk;
use crate::jwk::tests::RSA_TEST_KEY;
use crate::jws::Es256Signer;
use crate::jwt_bundle::JwtBundle;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;

const NOW: u64 = 1_700_000_000;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

struct Fixture {
    signer: Es256Signer,
    bundles: JwtBundleSet,
}

fn fixture() -> Fixture {
    let signer = Es256Signer::generate().unwrap();
    let td = TrustDomain::new("example.org").unwrap();
    let mut bundle = JwtBundle::new(td);
    bundle.add_authority("k1", signer.public_jwk().clone()).unwrap();
    Fixture { signer, bundles: [bundle].into_iter().collect() }
}

fn claims() -> Map<String, Value> {
    let v = json!({"sub": "spiffe://example.org/web", "aud": ["svc", "other"],
                       "exp": NOW + 300, "iat": NOW, "custom": {"a": 1}});
    v.as_object().unwrap().clone()
}

fn with(key: &str, value: Value) -> Map<String, Value> {
    let mut c = claims();
    c.insert(key.into(), value);
    c
}

fn without(key: &str) -> Map<String, Value> {
    let mut c = claims();
    c.remove(key);
    c
}

impl Fixture {
    fn token(&self, claims: &Map<String, Value>) -> String {
        encode_jwt_svid(claims, "k1", &self.signer).unwrap()
    }

    fn check(&self, token: &str) -> Result<JwtSvid, JwtSvidError> {
        validate_jwt_svid(token, &self.bundles, &["svc"], now())
    }

    fn check_claims(&self, claims: &Map<String, Value>) -> Result<JwtSvid, JwtSvidError> {
        self.check(&self.token(claims))
    }

    fn with_header(&self, header: Value) -> Result<JwtSvid, JwtSvidError> {
        let token = CompactJws::encode(header.as_object().unwrap(), &claims(), &self.signer);
        self.check(&token.unwrap())
    }
}

/// Signs with a fixed `alg` name whatever the key, to forge headers.
struct Forger(&'static str, Vec<u8>);
impl JwsSigner for Forger {
    fn alg(&self) -> &str {
        self.0
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, JwsError> {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.1);
        Ok(ring::hmac::sign(&key, msg).as_ref().to_vec())
    }
}

#[test]
fn valid_token_validates() {
    let f = fixture();
    let token = f.token(&claims());
    let svid = f.check(&token).unwrap();
    assert_eq!(svid.spiffe_id.as_str(), "spiffe://example.org/web");
    assert_eq!(svid.audience, ["svc", "other"]);
    assert_eq!(svid.expiry, now() + Duration::from_secs(300));
    assert_eq!(svid.claims, claims());
    assert_eq!(svid.token, token);
    assert!(!format!("{svid:?}").contains(&token), "the token stays out of Debug");
    let both = validate_jwt_svid(&token, &f.bundles, &["other", "svc"], now());
    assert!(both.is_ok());
    assert!(f.check_claims(&with("aud", json!("svc"))).is_ok(), "aud may be a string");
    assert!(f.with_header(json!({"alg": "ES256", "kid": "k1", "typ": "JOSE"})).is_ok());
    assert!(f.with_header(json!({"alg": "ES256", "kid": "k1"})).is_ok(), "typ is optional");
}

#[test]
fn rs256_token_from_an_rsa_authority_validates() {
    struct Rs256(ring::signature::RsaKeyPair);
    impl JwsSigner for Rs256 {
        fn alg(&self) -> &str {
            "RS256"
        }
        fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, JwsError> {
            let mut sig = vec![0; self.0.public().modulus_len()];
            let rng = ring::rand::SystemRandom::new();
            let pad = &ring::signature::RSA_PKCS1_SHA256;
            self.0.sign(pad, &rng, msg, &mut sig).map_err(|_| JwsError::Signing)?;
            Ok(sig)
        }
    }
    let der = pem::parse(RSA_TEST_KEY).unwrap();
    let kp = ring::signature::RsaKeyPair::from_pkcs8(der.contents()).unwrap();
    let spki = rcgen::PublicKeyData::subject_public_key_info(
        &rcgen::KeyPair::from_pem(RSA_TEST_KEY).unwrap(),
    );
    let mut f = fixture();
    let td = TrustDomain::new("example.org").unwrap();
    f.bundles
        .get_mut(&td)
        .unwrap()
        .add_authority("rsa", Jwk::from_spki_der(&spki).unwrap())
        .unwrap();
    let token = encode_jwt_svid(&claims(), "rsa", &Rs256(kp)).unwrap();
    assert!(f.check(&token).is_ok());
    let mismatch = encode_jwt_svid(&claims(), "rsa", &f.signer).unwrap();
    assert_eq!(
        f.check(&mismatch).unwrap_err(),
        JwtSvidError::KeyAlgMismatch { kid: "rsa".into(), alg: JwsAlg::ES256 }
    );
}

#[test]
fn wrong_audience_is_rejected() {
    let f = fixture();
    let err = validate_jwt_svid(&f.token(&claims()), &f.bundles, &["svc", "nope"], now());
    assert_eq!(
        err.unwrap_err(),
        JwtSvidError::AudienceMismatch {
            expected: "nope".into(),
            actual: vec!["svc".into(), "other".into()]
        }
    );
}

#[test]
fn missing_or_empty_audience_is_rejected() {
    let f = fixture();
    assert_eq!(f.check_claims(&without("aud")).unwrap_err(), JwtSvidError::MissingAudience);
    assert_eq!(f.check_claims(&with("aud", json!([]))).unwrap_err(), JwtSvidError::MissingAudience);
    assert_eq!(
        f.check_claims(&with("aud", json!(5))).unwrap_err(),
        JwtSvidError::InvalidClaim("aud")
    );
}

#[test]
fn validating_without_an_expected_audience_is_refused() {
    let f = fixture();
    let err = validate_jwt_svid(&f.token(&claims()), &f.bundles, &[], now());
    assert_eq!(err.unwrap_err(), JwtSvidError::NoExpectedAudience);
}

#[test]
fn expired_token_is_rejected_after_the_leeway() {
    let f = fixture();
    assert_eq!(f.check_claims(&with("exp", json!(NOW - 31))).unwrap_err(), JwtSvidError::Expired);
    assert!(f.check_claims(&with("exp", json!(NOW - 29))).is_ok(), "within the 30 s leeway");
    let at_exp = f.token(&with("exp", json!(NOW)));
    let strict =
        validate_jwt_svid_with_leeway(&at_exp, &f.bundles, &["svc"], now(), Duration::ZERO);
    assert_eq!(strict.unwrap_err(), JwtSvidError::Expired, "exp is exclusive");
    assert_eq!(f.check_claims(&with("exp", json!(-1.5))).unwrap_err(), JwtSvidError::Expired);
}

#[test]
fn missing_expiry_is_rejected() {
    let f = fixture();
    assert_eq!(f.check_claims(&without("exp")).unwrap_err(), JwtSvidError::MissingExpiry);
    assert_eq!(
        f.check_claims(&with("exp", json!("soon"))).unwrap_err(),
        JwtSvidError::InvalidClaim("exp")
    );
    assert!(f.check_claims(&with("exp", json!(NOW as f64 + 0.5))).is_ok(), "fractional dates");
    let far = f.check_claims(&with("exp", json!(u64::MAX)));
    assert!(matches!(far, Ok(_) | Err(JwtSvidError::InvalidClaim("exp"))), "no overflow panic");
}

#[test]
fn not_before_in_the_future_is_rejected() {
    let f = fixture();
    assert_eq!(
        f.check_claims(&with("nbf", json!(NOW + 60))).unwrap_err(),
        JwtSvidError::NotYetValid
    );
    assert!(f.check_claims(&with("nbf", json!(NOW + 10))).is_ok());
}

#[test]
fn issued_in_the_future_is_rejected() {
    let f = fixture();
    assert_eq!(
        f.check_claims(&with("iat", json!(NOW + 60))).unwrap_err(),
        JwtSvidError::IssuedInFuture
    );
}

#[test]
fn key_from_another_authority_has_an_unknown_kid() {
    let f = fixture();
    let other = Es256Signer::generate().unwrap();
    let token = encode_jwt_svid(&claims(), "k2", &other).unwrap();
    let td = TrustDomain::new("example.org").unwrap();
    assert_eq!(
        f.check(&token).unwrap_err(),
        JwtSvidError::UnknownKid { kid: "k2".into(), trust_domain: td }
    );
}

#[test]
fn same_kid_with_a_different_key_is_a_bad_signature() {
    let f = fixture();
    let token = encode_jwt_svid(&claims(), "k1", &Es256Signer::generate().unwrap()).unwrap();
    assert_eq!(f.check(&token).unwrap_err(), JwtSvidError::BadSignature);
}

#[test]
fn tampered_payload_is_a_bad_signature() {
    let f = fixture();
    let token = f.token(&claims());
    let parts: Vec<&str> = token.split('.').collect();
    let forged = URL_SAFE_NO_PAD
        .encode(Value::Object(with("sub", json!("spiffe://example.org/admin"))).to_string());
    let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
    assert_eq!(f.check(&tampered).unwrap_err(), JwtSvidError::BadSignature);
}

#[test]
fn alg_none_is_rejected() {
    let f = fixture();
    let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"k1"}"#);
    let p = URL_SAFE_NO_PAD.encode(Value::Object(claims()).to_string());
    assert_eq!(
        f.check(&format!("{h}.{p}.")).unwrap_err(),
        JwtSvidError::UnsupportedAlg("none".into())
    );
}

#[test]
fn hs256_keyed_with_the_public_key_is_rejected() {
    let f = fixture();
    let public = f.signer.public_jwk().uncompressed_point().unwrap();
    let token = encode_jwt_svid(&claims(), "k1", &Forger("HS256", public)).unwrap();
    assert_eq!(f.check(&token).unwrap_err(), JwtSvidError::UnsupportedAlg("HS256".into()));
    let eddsa = encode_jwt_svid(&claims(), "k1", &Forger("EdDSA", vec![])).unwrap();
    assert_eq!(
        f.check(&eddsa).unwrap_err(),
        JwtSvidError::UnsupportedAlg("EdDSA".into()),
        "not a JWT-SVID alg"
    );
}

#[test]
fn bad_typ_is_rejected() {
    let f = fixture();
    let err = f.with_header(json!({"alg": "ES256", "kid": "k1", "typ": "at+jwt"}));
    assert_eq!(err.unwrap_err(), JwtSvidError::BadTyp("\"at+jwt\"".into()));
}

#[test]
fn critical_header_extensions_are_rejected() {
    let f = fixture();
    let err = f.with_header(json!({"alg": "ES256", "kid": "k1", "crit": ["exp"], "exp": 1}));
    assert_eq!(err.unwrap_err(), JwtSvidError::UnsupportedCrit);
}

#[test]
fn missing_kid_is_rejected() {
    let f = fixture();
    assert_eq!(f.with_header(json!({"alg": "ES256"})).unwrap_err(), JwtSvidError::MissingKid);
    assert_eq!(
        f.with_header(json!({"alg": "ES256", "kid": ""})).unwrap_err(),
        JwtSvidError::MissingKid
    );
}

#[test]
fn missing_subject_is_rejected() {
    let f = fixture();
    assert_eq!(f.check_claims(&without("sub")).unwrap_err(), JwtSvidError::MissingSubject);
}

#[test]
fn root_path_subject_is_rejected() {
    let f = fixture();
    let err = f.check_claims(&with("sub", json!("spiffe://example.org"))).unwrap_err();
    assert!(
        matches!(err, JwtSvidError::SubjectIsRoot(id) if id.as_str() == "spiffe://example.org")
    );
}

#[test]
fn invalid_subject_is_rejected() {
    let f = fixture();
    for bad in ["spiffe://example.org/", "https://example.org/web", "spiffe://EXAMPLE.org/web"] {
        let err = f.check_claims(&with("sub", json!(bad))).unwrap_err();
        assert!(matches!(err, JwtSvidError::InvalidSubject(_)), "{bad}: {err:?}");
    }
    assert_eq!(
        f.check_claims(&with("sub", json!(1))).unwrap_err(),
        JwtSvidError::InvalidClaim("sub")
    );
}

#[test]
fn subject_from_an_unknown_trust_domain_has_no_bundle() {
    let f = fixture();
    let err = f.check_claims(&with("sub", json!("spiffe://other.org/web"))).unwrap_err();
    assert_eq!(err, JwtSvidError::NoBundleForTrustDomain(TrustDomain::new("other.org").unwrap()));
}

#[test]
fn malformed_token_is_rejected() {
    let f = fixture();
    assert_eq!(f.check("abc").unwrap_err(), JwtSvidError::Malformed(JwsError::PartCount(1)));
    let padded = format!("{}=", f.token(&claims()));
    assert_eq!(
        f.check(&padded).unwrap_err(),
        JwtSvidError::Malformed(JwsError::BadBase64("signature"))
    );
}

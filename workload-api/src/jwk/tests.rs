use super::*;
use rcgen::{KeyPair, PublicKeyData};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair};

/// A 2048-bit RSA key made with `openssl genpkey` for tests only (ring cannot make one).
pub(crate) const RSA_TEST_KEY: &str = include_str!("../../testdata/rsa2048-test-key.pem");

fn round_trip(spki: &[u8]) -> Jwk {
    let jwk = Jwk::from_spki_der(spki).unwrap();
    assert_eq!(jwk.to_spki_der(), spki, "SPKI DER differs after a round trip");
    assert_eq!(Jwk::from_params(&jwk.to_params()).unwrap(), jwk);
    let json = serde_json::to_string(&jwk).unwrap();
    assert_eq!(serde_json::from_str::<Jwk>(&json).unwrap(), jwk);
    jwk
}

#[test]
fn ec_p256_round_trips_through_spki_point_and_json() {
    let kp = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let jwk = round_trip(&kp.subject_public_key_info());
    assert_eq!(jwk.crv(), Some("P-256"));
    assert_eq!(jwk.uncompressed_point().unwrap(), kp.public_key_raw());
    let again = Jwk::ec_from_uncompressed_point(EcCurve::P256, kp.public_key_raw()).unwrap();
    assert_eq!(again, jwk);
}

#[test]
fn ec_p384_round_trips() {
    let kp = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let jwk = round_trip(&kp.subject_public_key_info());
    assert_eq!(jwk.to_params().crv.as_deref(), Some("P-384"));
    assert_eq!(jwk.to_params().x.unwrap().len(), 64, "48 bytes in unpadded base64url");
}

#[test]
fn ed25519_round_trips() {
    let kp = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let jwk = round_trip(&kp.subject_public_key_info());
    assert_eq!((jwk.kty(), jwk.crv()), ("OKP", Some("Ed25519")));
    assert_eq!(jwk.to_params().x.unwrap(), URL_SAFE_NO_PAD.encode(kp.public_key_raw()));
}

#[test]
fn rsa_round_trips_with_long_der_lengths() {
    let kp = KeyPair::from_pem(RSA_TEST_KEY).unwrap();
    let jwk = round_trip(&kp.subject_public_key_info());
    let p = jwk.to_params();
    assert_eq!(p.e.as_deref(), Some("AQAB"));
    assert_eq!(URL_SAFE_NO_PAD.decode(p.n.unwrap()).unwrap().len(), 256, "no leading zero");
}

#[test]
fn es256_signature_verifies_and_tampering_fails() {
    let rng = SystemRandom::new();
    let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let kp = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
    let jwk = Jwk::ec_from_uncompressed_point(EcCurve::P256, kp.public_key().as_ref()).unwrap();
    let sig = kp.sign(&rng, b"msg").unwrap();
    assert_eq!(sig.as_ref().len(), 64, "JWS ECDSA signatures are r||s");
    jwk.verify(JwsAlg::ES256, b"msg", sig.as_ref()).unwrap();
    assert_eq!(jwk.verify(JwsAlg::ES256, b"msh", sig.as_ref()), Err(JwkError::BadSignature));
    assert_eq!(
        jwk.verify(JwsAlg::ES384, b"msg", sig.as_ref()),
        Err(JwkError::AlgKeyMismatch { alg: JwsAlg::ES384, kty: "EC" })
    );
}

#[test]
fn rsa_pkcs1_and_pss_signatures_verify() {
    let der = pem::parse(RSA_TEST_KEY).unwrap();
    let kp = RsaKeyPair::from_pkcs8(der.contents()).unwrap();
    let spki = KeyPair::from_pem(RSA_TEST_KEY).unwrap().subject_public_key_info();
    let jwk = Jwk::from_spki_der(&spki).unwrap();
    let rng = SystemRandom::new();
    for (alg, pad) in [
        (JwsAlg::RS256, &signature::RSA_PKCS1_SHA256 as &dyn signature::RsaEncoding),
        (JwsAlg::RS512, &signature::RSA_PKCS1_SHA512),
        (JwsAlg::PS256, &signature::RSA_PSS_SHA256),
        (JwsAlg::PS384, &signature::RSA_PSS_SHA384),
    ] {
        let mut sig = vec![0; kp.public().modulus_len()];
        kp.sign(pad, &rng, b"msg", &mut sig).unwrap();
        jwk.verify(alg, b"msg", &sig).unwrap();
        sig[10] ^= 1;
        assert_eq!(jwk.verify(alg, b"msg", &sig), Err(JwkError::BadSignature), "{alg}");
    }
    assert!(!jwk.fits(JwsAlg::ES256));
}

#[test]
fn ed25519_signature_verifies_only_as_eddsa() {
    let rng = SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let kp = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let jwk = Jwk::ed25519(kp.public_key().as_ref()).unwrap();
    let sig = kp.sign(b"msg");
    jwk.verify(JwsAlg::EdDSA, b"msg", sig.as_ref()).unwrap();
    assert!(jwk.verify(JwsAlg::ES256, b"msg", sig.as_ref()).is_err());
}

fn params(json: &str) -> JwkParams {
    serde_json::from_str(json).unwrap()
}

#[test]
fn malformed_members_are_refused_with_their_rule() {
    let x = URL_SAFE_NO_PAD.encode([1u8; 32]);
    let short = URL_SAFE_NO_PAD.encode([1u8; 31]);
    let ec =
        |x: &str, y: &str| params(&format!(r#"{{"kty":"EC","crv":"P-256","x":"{x}","y":"{y}"}}"#));
    assert!(Jwk::from_params(&ec(&x, &x)).is_ok());
    assert_eq!(
        Jwk::from_params(&ec(&x, &short)),
        Err(JwkError::BadLength { field: "y", expected: 32, actual: 31 })
    );
    assert_eq!(Jwk::from_params(&ec(&x, &format!("{short}="))), Err(JwkError::BadBase64("y")));
    assert_eq!(
        Jwk::from_params(&params(r#"{"kty":"EC","crv":"P-256"}"#)),
        Err(JwkError::MissingField("x"))
    );
    assert_eq!(Jwk::from_params(&params(r#"{"crv":"P-256"}"#)), Err(JwkError::MissingField("kty")));
    assert_eq!(
        Jwk::from_params(&params(r#"{"kty":"RSA","n":"AA","e":"AQAB"}"#)),
        Err(JwkError::ZeroInteger("n"))
    );
}

#[test]
fn unknown_types_and_curves_are_flagged_unsupported() {
    let p521 = Jwk::from_params(&params(r#"{"kty":"EC","crv":"P-521","x":"AA","y":"AA"}"#));
    assert!(p521.unwrap_err().is_unsupported());
    let oct = Jwk::from_params(&params(r#"{"kty":"oct","k":"AA"}"#));
    assert_eq!(oct, Err(JwkError::UnsupportedKeyType("oct".into())));
    assert!(
        Jwk::from_params(&params(r#"{"kty":"OKP","crv":"X25519","x":"AA"}"#))
            .unwrap_err()
            .is_unsupported()
    );
    assert_eq!(Jwk::from_spki_der(b"not der"), Err(JwkError::BadEncoding));
}

#[test]
fn alg_names_parse_exactly() {
    for name in ["RS256", "ES384", "PS512", "EdDSA"] {
        assert_eq!(JwsAlg::parse(name).unwrap().as_str(), name);
    }
    for name in ["none", "HS256", "es256", ""] {
        assert_eq!(JwsAlg::parse(name), None);
    }
    assert!(!JwsAlg::EdDSA.is_jwt_svid_alg() && JwsAlg::ES512.is_jwt_svid_alg());
}

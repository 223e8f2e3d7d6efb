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

/// A self-signed certificate that is no CA: critical BasicConstraints, an empty SEQUENCE.
fn not_ca(key: &KeyPair) -> CertificateDer<'static> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    crate::x509::test_support::not_ca(&mut params);
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
    assert_eq!((b.x509_authorities.len(), b.jwt_authorities.len(), b.sequence), (0, 0, Some(2)));
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
    assert!(matches!(parse(doc), Err(BundleJsonError::JwtEntryBadKey { kid, .. }) if kid == "k"));
    let typed = r#"{"keys":[{"use":"jwt-svid","kid":5}]}"#;
    assert!(matches!(parse(typed), Err(BundleJsonError::BadEntry { index: 0, .. })));
}

#[test]
fn x5c_that_is_not_a_ca_certificate_is_rejected() {
    let x5c = |s: &str| format!(r#"{{"keys":[{{"use":"x509-svid","x5c":["{s}"]}}]}}"#);
    assert!(matches!(parse(&x5c("@@")), Err(BundleJsonError::X509EntryBadBase64 { index: 0 })));
    assert!(matches!(parse(&x5c("AAAA")), Err(BundleJsonError::X509EntryBadCert { index: 0, .. })));
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let leaf = not_ca(&key);
    assert!(matches!(parse(&x5c(&b64(&leaf))), Err(BundleJsonError::X509EntryNotCa { index: 0 })));
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
        b.jwt_authorities.insert(kid.into(), Es256Signer::generate().unwrap().public_jwk().clone());
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
    b.jwt_authorities.insert(String::new(), Es256Signer::generate().unwrap().public_jwk().clone());
    assert!(matches!(b.to_json(), Err(BundleJsonError::JwtEntryWithoutKid { index: 0 })));
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut b = SpiffeBundle::new(td());
    b.x509_authorities.push(not_ca(&key));
    assert!(matches!(b.to_json(), Err(BundleJsonError::X509EntryNotCa { index: 0 })));
}

#[test]
fn a_ca_whose_key_has_no_jwk_form_is_refused_when_parsed_as_when_written() {
    // A P-256 CA with its curve OID turned into prime192v1 (same length): still a CA
    // certificate, but its key cannot be a JWK, so the bundle could not be written back.
    // Found by the bundle_json fuzz target (tests/fuzz/artifacts/bundle_json/).
    let mut der = ca(&rcgen::PKCS_ECDSA_P256_SHA256).to_vec();
    let p256 = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let at = der.windows(8).position(|w| w == &p256[..]).unwrap();
    der[at + 7] = 0x01;
    let doc = format!(r#"{{"keys":[{{"use":"x509-svid","x5c":["{}"]}}]}}"#, b64(&der));
    let err = parse(&doc).unwrap_err();
    assert!(matches!(err, BundleJsonError::UnsupportedKey { index: 0, .. }), "{err}");
    let mut b = SpiffeBundle::new(td());
    b.x509_authorities.push(CertificateDer::from(der));
    assert!(matches!(b.to_json(), Err(BundleJsonError::UnsupportedKey { index: 0, .. })));
}

#[test]
fn a_ca_webpki_refuses_as_a_trust_anchor_is_refused() {
    // The inner signature algorithm changed from ecdsa-with-SHA256 to -SHA384: x509-parser
    // reads the certificate, webpki refuses it (found by the bundle_json fuzz target).
    let mut der = ca(&rcgen::PKCS_ECDSA_P256_SHA256).to_vec();
    let sha256 = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
    let at = der.windows(8).position(|w| w == &sha256[..]).unwrap();
    der[at + 7] = 0x03;
    let doc = format!(r#"{{"keys":[{{"use":"x509-svid","x5c":["{}"]}}]}}"#, b64(&der));
    let err = parse(&doc).unwrap_err();
    assert!(matches!(err, BundleJsonError::X509EntryBadCert { index: 0, .. }), "{err}");
}

#[test]
fn jwt_bundle_converts_both_ways() {
    let b = full_bundle();
    let jwt = b.jwt_bundle().unwrap();
    let back = SpiffeBundle::from_jwt_bundle(&jwt);
    assert_eq!(back.jwt_authorities, b.jwt_authorities);
    assert!(back.x509_authorities.is_empty());
}

fn typed_parts(td: TrustDomain) -> (X509Bundle, JwtBundle) {
    let x509 = X509Bundle::from_authorities(td.clone(), [ca(&rcgen::PKCS_ECDSA_P256_SHA256)]);
    let mut jwt = JwtBundle::new(td);
    jwt.add_authority("k1", Es256Signer::generate().unwrap().public_jwk().clone()).unwrap();
    (x509.unwrap(), jwt)
}

#[test]
fn typed_bundles_survive_a_trip_through_json() {
    let (x509, jwt) = typed_parts(td());
    let hint = Some(Duration::from_secs(90));
    let b = SpiffeBundle::from_parts(&x509, &jwt, Some(3), hint).unwrap();
    let json = b.to_json().unwrap();
    let back = SpiffeBundle::parse(td(), json.as_bytes()).unwrap();
    assert_eq!(back.x509_bundle().unwrap(), x509);
    assert_eq!(back.jwt_bundle().unwrap(), jwt);
    assert_eq!((back.sequence, back.refresh_hint), (Some(3), hint));
}

#[test]
fn from_parts_refuses_parts_of_two_trust_domains() {
    let (x509, _) = typed_parts(td());
    let (_, jwt) = typed_parts(TrustDomain::new("other.example").unwrap());
    let err = SpiffeBundle::from_parts(&x509, &jwt, None, None).unwrap_err();
    assert!(matches!(
        err,
        BundleJsonError::TrustDomainMismatch { x509: a, jwt: b }
            if a == td() && b.name() == "other.example"
    ));
}

#[test]
fn from_parts_refuses_an_authority_that_is_not_a_ca() {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let x509 = X509Bundle::from_authorities(td(), [not_ca(&key)]).unwrap();
    let err = SpiffeBundle::from_parts(&x509, &JwtBundle::new(td()), None, None).unwrap_err();
    assert!(matches!(err, BundleJsonError::X509EntryNotCa { index: 0 }));
}

#[test]
fn x509_bundle_refuses_an_authority_that_is_not_der() {
    let mut b = SpiffeBundle::new(td());
    b.x509_authorities.push(CertificateDer::from(vec![0x30, 0x00]));
    assert!(matches!(b.x509_bundle(), Err(X509BundleError::Der { index: 0, .. })));
}

//! JWT-SVID validation (`validate_jwt_svid`) against a fixed bundle: example.org with one
//! ES256 authority (certs-dev's SVID key, kid `fuzz-kid`), audience `fuzz-audience`, and
//! the fixed clock. Input byte 0 picks the mode: even, the rest is a whole token; odd, the
//! rest is `header JSON \n payload JSON`, which the check signs with the authority, so the
//! fuzzer reaches the claim rules. An accepted token must have, checked without keycard:
//! a signature `ring` verifies with the bundle key, an allowed `alg`, the bundle's `kid`,
//! `exp` in the future (with the 30 s leeway), the wanted audience in `aud`, and `sub` the
//! returned SPIFFE ID, in the trust domain, with a path.

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keycard_workload_api::jwt_svid::DEFAULT_LEEWAY;
use keycard_workload_api::{
    Es256Signer, JwsSigner as _, JwtBundle, JwtBundleSet, validate_jwt_svid,
};
use serde_json::{Map, Value};

use super::common;

/// The authority's key ID.
pub const KID: &str = "fuzz-kid";
/// The audience the validator is asked for.
pub const AUDIENCE: &str = "fuzz-audience";

struct Fixture {
    signer: Es256Signer,
    bundles: JwtBundleSet,
    public_point: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let signer = Es256Signer::from_pkcs8(&common::pem_first(common::SVID_KEY_PEM))
            .expect("certs-dev SVID key");
        let mut bundle = JwtBundle::new(common::trust_domain());
        bundle.add_authority(KID, signer.public_jwk().clone()).expect("authority");
        let mut bundles = JwtBundleSet::new();
        bundles.insert(bundle);
        let public_point = signer.public_jwk().uncompressed_point().expect("EC key");
        Fixture { signer, bundles, public_point }
    })
}

/// A compact token of these exact header and payload bytes, signed by the authority.
pub fn sign(header: &[u8], payload: &[u8]) -> String {
    let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload));
    let signature = fixture().signer.sign(input.as_bytes()).expect("ES256 signing");
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// Builds the token for `data` (see the module documentation) and checks an accepted one.
pub fn check(data: &[u8]) -> bool {
    let Some((&mode, rest)) = data.split_first() else { return false };
    let token = if mode % 2 == 0 {
        match std::str::from_utf8(rest) {
            Ok(t) => t.to_owned(),
            Err(_) => return false,
        }
    } else {
        let cut = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        sign(&rest[..cut], rest.get(cut + 1..).unwrap_or_default())
    };
    let f = fixture();
    let Ok(svid) = validate_jwt_svid(&token, &f.bundles, &[AUDIENCE], common::now()) else {
        return false;
    };

    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "accepted a token of {} parts", parts.len());
    let object = |part: &str| -> Map<String, Value> {
        let bytes = URL_SAFE_NO_PAD.decode(part).expect("accepted a part that is not base64url");
        serde_json::from_slice(&bytes).expect("accepted a part that is not a JSON object")
    };
    let (header, claims) = (object(parts[0]), object(parts[1]));
    let signature = URL_SAFE_NO_PAD.decode(parts[2]).expect("signature base64url");

    assert_eq!(header["alg"], "ES256", "the only authority is a P-256 key");
    assert_eq!(header["kid"], KID);
    assert!(!header.contains_key("crit"), "accepted a token with crit");
    if let Some(typ) = header.get("typ") {
        assert!(typ == "JWT" || typ == "JOSE", "accepted typ {typ}");
    }
    let signing_input = format!("{}.{}", parts[0], parts[1]);
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_FIXED,
        &f.public_point,
    )
    .verify(signing_input.as_bytes(), &signature)
    .expect("accepted a token whose signature ring does not verify");

    let exp = claims.get("exp").and_then(Value::as_f64).expect("accepted a token without exp");
    let now = common::NOW_SECS as f64;
    assert!(exp + DEFAULT_LEEWAY.as_secs_f64() > now, "accepted an expired token (exp {exp})");
    // Neither nbf nor iat may lie beyond now plus the leeway.
    for name in ["nbf", "iat"] {
        if let Some(t) = claims.get(name) {
            let t = t.as_f64().expect("accepted a non-numeric date");
            assert!(t <= now + DEFAULT_LEEWAY.as_secs_f64(), "accepted {name} {t}");
        }
    }
    let audiences: Vec<&str> = match &claims["aud"] {
        Value::String(a) => vec![a.as_str()],
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        other => panic!("accepted aud {other}"),
    };
    assert!(audiences.contains(&AUDIENCE), "accepted aud {audiences:?}");
    assert_eq!(svid.audience, audiences, "returned audience");
    let sub = claims["sub"].as_str().expect("accepted a token without string sub");
    assert_eq!(svid.spiffe_id.as_str(), sub);
    let prefix = format!("spiffe://{}/", common::TRUST_DOMAIN);
    assert!(sub.starts_with(&prefix) && sub.len() > prefix.len(), "sub {sub}");
    assert_eq!(svid.claims, claims, "returned claims");
    assert_eq!(svid.token, token);
    true
}

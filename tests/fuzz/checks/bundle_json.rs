//! The SPIFFE bundle JSON (`SpiffeBundle::parse` / `to_json`): a document keycard accepts
//! must write back out, that output must parse to an equal bundle and write identically,
//! and the output must follow the bundle format's rules, read with `serde_json` alone.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use keycard_workload_api::SpiffeBundle;
use serde_json::Value;

use super::common;

/// Parses `data` as example.org's bundle document and checks an accepted one.
pub fn check(data: &[u8]) -> bool {
    let td = common::trust_domain();
    let Ok(bundle) = SpiffeBundle::parse(td.clone(), data) else { return false };
    let json = bundle
        .to_json()
        .unwrap_or_else(|e| panic!("accepted a bundle that cannot be written back: {e}"));
    let again = SpiffeBundle::parse(td, json.as_bytes())
        .unwrap_or_else(|e| panic!("refused its own output {json}: {e}"));
    assert_eq!(again, bundle, "round trip changed the bundle");
    assert_eq!(again.to_json().ok().as_deref(), Some(json.as_str()), "output not stable");
    bundle.jwt_bundle().expect("the JWT part makes a JWT bundle");
    bundle.x509_bundle().expect("the X.509 part makes an X.509 bundle");

    let doc: Value = serde_json::from_str(&json).expect("output is JSON");
    let keys = doc["keys"].as_array().expect("`keys` is required");
    let (mut x509, mut jwt) = (Vec::new(), Vec::new());
    for key in keys {
        match key["use"].as_str() {
            Some("x509-svid") => {
                assert!(key.get("kid").is_none(), "x509-svid entry with a kid: {key}");
                let x5c = key["x5c"].as_array().expect("x509-svid entry without x5c");
                assert_eq!(x5c.len(), 1, "x5c must hold exactly one certificate");
                let der = STANDARD.decode(x5c[0].as_str().expect("x5c string")).expect("base64");
                x509.push(der);
            }
            Some("jwt-svid") => {
                let kid = key["kid"].as_str().expect("jwt-svid entry without kid");
                assert!(!kid.is_empty(), "empty kid");
                assert!(key["kty"].is_string(), "jwt-svid entry without kty");
                jwt.push(kid.to_owned());
            }
            other => panic!("entry with use {other:?} written"),
        }
    }
    let expected_x509: Vec<&[u8]> = bundle.x509_authorities.iter().map(|c| c.as_ref()).collect();
    assert_eq!(x509.iter().map(Vec::as_slice).collect::<Vec<_>>(), expected_x509);
    assert_eq!(jwt, bundle.jwt_authorities.keys().cloned().collect::<Vec<_>>());
    assert_eq!(doc["spiffe_sequence"].as_u64(), bundle.sequence);
    assert_eq!(doc["spiffe_refresh_hint"].as_u64(), bundle.refresh_hint.map(|d| d.as_secs()));
    true
}

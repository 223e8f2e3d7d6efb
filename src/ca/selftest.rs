//! Self-tests a new authority must pass before it may sign for real: it signs a throw-away
//! SVID for a fresh key, and that SVID must pass the same validation a workload's peer
//! would apply (chain to the published bundle, SPIFFE rules, token signature).

use std::time::{Duration, SystemTime};

use keycard_workload_api::{
    JwtBundle, JwtBundleSet, X509Bundle, X509BundleSet, validate_jwt_svid, verify_chain,
};
use rustls_pki_types::{SubjectPublicKeyInfoDer, UnixTime};

use super::{CaError, JwtAuthority, KeyType, SigningKey, SvidRequest, X509Authority};
use crate::clock::Clock;

/// The path of the throw-away SVIDs.
const SELF_TEST_PATH: &str = "/keycard/self-test";
/// Lifetime of a throw-away SVID.
const SELF_TEST_TTL: Duration = Duration::from_secs(60);

/// Mints an X.509-SVID with `authority` and verifies it against `bundle`.
pub(crate) fn x509(
    authority: &X509Authority,
    bundle: &X509Bundle,
    clock: &dyn Clock,
) -> Result<(), CaError> {
    let fail = |what: String| CaError::SelfTest(format!("X.509 authority: {what}"));
    let key = SigningKey::generate(KeyType::EcP256)?;
    let spiffe_id =
        authority.trust_domain().spiffe_id(SELF_TEST_PATH).map_err(|e| fail(e.to_string()))?;
    let req = SvidRequest {
        public_key: SubjectPublicKeyInfoDer::from(key.public_key_der()),
        spiffe_id: spiffe_id.clone(),
        dns_names: Vec::new(),
        ttl: SELF_TEST_TTL,
    };
    let svid = authority.sign_x509_svid(&req, clock)?;
    let bundles: X509BundleSet = [bundle.clone()].into_iter().collect();
    let now = UnixTime::since_unix_epoch(
        clock.now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default(),
    );
    let got = verify_chain(&svid.chain_without_root, &bundles, now)
        .map_err(|e| fail(format!("its SVID does not verify against the bundle: {e}")))?;
    if got != spiffe_id {
        return Err(fail(format!("its SVID names {got}, not {spiffe_id}")));
    }
    Ok(())
}

/// Mints a JWT-SVID with `authority` and validates it against a bundle of its own key.
pub(crate) fn jwt(authority: &JwtAuthority, now: SystemTime) -> Result<(), CaError> {
    let fail =
        |what: String| CaError::SelfTest(format!("JWT authority {}: {what}", authority.kid()));
    let spiffe_id =
        authority.trust_domain().spiffe_id(SELF_TEST_PATH).map_err(|e| fail(e.to_string()))?;
    let audience = "keycard-self-test".to_string();
    let minted =
        authority.sign_jwt_svid(&spiffe_id, std::slice::from_ref(&audience), SELF_TEST_TTL, now)?;
    let mut bundle = JwtBundle::new(authority.trust_domain().clone());
    bundle
        .add_authority(authority.kid().to_owned(), authority.public_key().clone())
        .map_err(|e| fail(e.to_string()))?;
    let bundles: JwtBundleSet = [bundle].into_iter().collect();
    let svid = validate_jwt_svid(&minted.token, &bundles, &[audience.as_str()], now)
        .map_err(|e| fail(format!("its token does not validate: {e}")))?;
    if svid.spiffe_id != spiffe_id {
        return Err(fail(format!("its token names {}, not {spiffe_id}", svid.spiffe_id)));
    }
    Ok(())
}

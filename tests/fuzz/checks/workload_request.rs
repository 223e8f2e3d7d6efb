//! Workload API requests as the agent receives them: byte 0 picks the message type, the
//! rest is its protobuf encoding. A request that decodes must re-encode to bytes that
//! decode to the same message (and re-encode identically); then the agent's first checks,
//! those before any attestation-dependent work, must follow their documented rules:
//! the JWT audience limits (1 to 32 audiences of 1 to 256 bytes, agreeing both ways) and
//! the cache key made of them; and a ValidateJWTSVID request is never accepted against an
//! empty bundle set.

use keycard_workload_api::JwtBundleSet;
use keycard_workload_api::proto::{
    JwtBundlesRequest, JwtsvidRequest, ValidateJwtsvidRequest, X509BundlesRequest, X509svidRequest,
};
use prost::Message as _;

use super::common;

/// Decodes `data` as the request byte 0 names and checks it; returns whether it decoded
/// (and, for FetchJWTSVID, whether its audiences passed the agent's check).
pub fn check(data: &[u8]) -> bool {
    let Some((&kind, body)) = data.split_first() else { return false };
    match kind % 5 {
        0 => X509svidRequest::decode(body).map(|m| common::round_trip(&m)).is_ok(),
        1 => X509BundlesRequest::decode(body).map(|m| common::round_trip(&m)).is_ok(),
        2 => JwtBundlesRequest::decode(body).map(|m| common::round_trip(&m)).is_ok(),
        3 => {
            let Ok(m) = JwtsvidRequest::decode(body) else { return false };
            common::round_trip(&m);
            common::assert_audience_rule(&m.audience)
        }
        _ => {
            let Ok(m) = ValidateJwtsvidRequest::decode(body) else { return false };
            common::round_trip(&m);
            let empty = JwtBundleSet::new();
            let audience = [m.audience.as_str()];
            let verdict =
                keycard_workload_api::validate_jwt_svid(&m.svid, &empty, &audience, common::now());
            assert!(verdict.is_err(), "a token validated against no bundle at all");
            true
        }
    }
}

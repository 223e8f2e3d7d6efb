//! Low-S ECDSA signatures for JWS (ES256, ES384).
//!
//! An ECDSA signature `(r, s)` verifies exactly when `(r, n - s)` does, `n` being the
//! group order, so every token has two valid spellings. keycard publishes only the one
//! with `s <= n/2` ([`normalize_low_s`], applied when a token is encoded) and accepts only
//! that one ([`require_low_s`], applied when a JWT-SVID is validated). Signatures are the
//! fixed-length `r || s` form JWS uses (RFC 7518 §3.4).

use super::{JwsAlg, JwsError};

/// Order `n` of the P-256 group, big-endian.
const P256_ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];
/// Order `n` of the P-384 group, big-endian.
const P384_ORDER: [u8; 48] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xc7, 0x63, 0x4d, 0x81, 0xf4, 0x37, 0x2d, 0xdf,
    0x58, 0x1a, 0x0d, 0xb2, 0x48, 0xb0, 0xa7, 0x7a, 0xec, 0xec, 0x19, 0x6a, 0xcc, 0xc5, 0x29, 0x73,
];

/// The group order for an ECDSA `alg`, or `None` for other algorithms.
fn curve_order(alg: JwsAlg) -> Option<&'static [u8]> {
    match alg {
        JwsAlg::ES256 => Some(&P256_ORDER),
        JwsAlg::ES384 => Some(&P384_ORDER),
        _ => None,
    }
}

/// The `s` half of a fixed-length `r || s` signature, if `sig` has the length `n` implies.
fn s_half(n: &[u8], sig: &[u8]) -> Option<usize> {
    (sig.len() == 2 * n.len()).then_some(n.len())
}

/// Whether big-endian `s` is above `n / 2`, that is `2s > n`, that is `s > n - s`.
fn is_high(n: &[u8], s: &[u8]) -> bool {
    s > sub(n, s).as_slice()
}

/// `a - b` for big-endian numbers of the same length with `a >= b`.
fn sub(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; a.len()];
    let mut borrow = 0i16;
    for i in (0..a.len()).rev() {
        let mut d = i16::from(a[i]) - i16::from(b[i]) - borrow;
        borrow = i16::from(d < 0);
        if d < 0 {
            d += 256;
        }
        out[i] = d as u8;
    }
    out
}

/// Refuses an ES256/ES384 signature with a high `s` ([`JwsError::HighS`]); any other
/// algorithm, or a signature of the wrong length (which will not verify), passes here.
pub fn require_low_s(alg: JwsAlg, sig: &[u8]) -> Result<(), JwsError> {
    let Some(n) = curve_order(alg) else { return Ok(()) };
    match s_half(n, sig) {
        Some(half) if is_high(n, &sig[half..]) => Err(JwsError::HighS),
        _ => Ok(()),
    }
}

/// Replaces a high `s` with `n - s` in an ES256/ES384 signature (the same signature in
/// its low-S form); leaves anything else untouched.
pub fn normalize_low_s(alg: JwsAlg, sig: &mut [u8]) {
    let Some(n) = curve_order(alg) else { return };
    if let Some(half) = s_half(n, sig)
        && is_high(n, &sig[half..])
    {
        let low = sub(n, &sig[half..]);
        sig[half..].copy_from_slice(&low);
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::Map;

    use super::*;
    use crate::jws::{CompactJws, Es256Signer, sign_compact};

    fn claims() -> Map<String, serde_json::Value> {
        let mut m = Map::new();
        m.insert("sub".into(), "spiffe://example.org/w".into());
        m
    }

    #[test]
    fn the_orders_are_the_curves() {
        // n - 1 is high, (n - 1) / 2 is the largest low value.
        let one = |len: usize| {
            let mut v = vec![0u8; len];
            v[len - 1] = 1;
            v
        };
        assert!(is_high(&P256_ORDER, &sub(&P256_ORDER, &one(32))));
        assert!(!is_high(&P256_ORDER, &one(32)));
        assert!(is_high(&P384_ORDER, &sub(&P384_ORDER, &one(48))));
    }

    /// `(r, n - s)` is a second valid signature for the same token: it must be refused,
    /// and what keycard signs must always be the low one.
    #[test]
    fn high_s_signatures_are_refused_and_never_produced() {
        let signer = Es256Signer::generate().unwrap();
        for _ in 0..16 {
            let token = sign_compact(&claims(), "k1", &signer).unwrap();
            let jws = CompactJws::decode(&token).unwrap();
            assert_eq!(require_low_s(JwsAlg::ES256, &jws.signature), Ok(()), "signed low-S");

            // Flip s to n - s: the curve math still accepts it, the rule does not.
            let mut flipped = jws.signature.clone();
            let high = sub(&P256_ORDER, &flipped[32..]);
            flipped[32..].copy_from_slice(&high);
            let input = jws.signing_input.as_bytes();
            signer.public_jwk().verify(JwsAlg::ES256, input, &flipped).unwrap();
            assert_eq!(require_low_s(JwsAlg::ES256, &flipped), Err(JwsError::HighS));

            // And through JWT-SVID validation, the whole token is refused.
            let forged = format!("{}.{}", jws.signing_input, URL_SAFE_NO_PAD.encode(&flipped));
            let mut bundle = crate::JwtBundle::new(crate::TrustDomain::new("example.org").unwrap());
            bundle.add_authority("k1", signer.public_jwk().clone()).unwrap();
            let set: crate::JwtBundleSet = [bundle].into_iter().collect();
            let err = crate::validate_jwt_svid(&forged, &set, &["x"], std::time::SystemTime::now());
            assert_eq!(err.unwrap_err(), crate::JwtSvidError::Malformed(JwsError::HighS));

            let mut back = flipped.clone();
            normalize_low_s(JwsAlg::ES256, &mut back);
            assert_eq!(back, jws.signature);
        }
        // P-384 the same way; other algorithms are not touched.
        let mut sig = vec![0u8; 96];
        sig[48..].copy_from_slice(&sub(
            &P384_ORDER,
            &[0u8; 47].iter().chain(&[1u8]).copied().collect::<Vec<_>>(),
        ));
        assert_eq!(require_low_s(JwsAlg::ES384, &sig), Err(JwsError::HighS));
        normalize_low_s(JwsAlg::ES384, &mut sig);
        assert_eq!(sig[95], 1);
        assert_eq!(require_low_s(JwsAlg::RS256, &[0xff; 64]), Ok(()));
    }
}

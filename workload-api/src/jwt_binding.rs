//! JWT-SVIDs bound to an X.509 certificate (RFC 8705, certificate-bound access tokens).
//!
//! A bound token carries `cnf: {"x5t#S256": T}` where `T` is the base64url (no padding)
//! SHA-256 of the DER certificate its holder must present on the TLS connection that
//! carries it. A copied token is then useless to anyone without that certificate's private
//! key. [`check_binding`] is the check a resource server makes, after
//! [`validate_jwt_svid`](crate::validate_jwt_svid) accepted the token, with the leaf of the
//! connection's client certificate chain.
//!
//! The standard claims stay as the JWT-SVID spec has them, so a validator that ignores
//! `cnf` (go-spiffe, py-spiffe) still accepts a bound token where binding is not enforced.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

use crate::jwt_svid::JwtSvid;

/// The claim that holds the confirmation method.
pub const CNF_CLAIM: &str = "cnf";
/// The member of `cnf` that holds the certificate thumbprint.
pub const X5T_S256: &str = "x5t#S256";

/// The RFC 8705 thumbprint of a DER certificate: base64url(SHA-256(DER)), no padding.
pub fn x5t_s256(cert_der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, cert_der))
}

/// The `cnf` claim value binding a token to `cert_der`.
pub fn cnf_for(cert_der: &[u8]) -> Value {
    json!({ X5T_S256: x5t_s256(cert_der) })
}

/// Whether a resource server accepts tokens without a `cnf` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unbound {
    /// Refuse them: every token must be bound to the connection's certificate.
    Refuse,
    /// Accept them as plain bearer tokens (bound ones are still checked).
    Accept,
}

/// Why a validated token may not be used on this connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    /// The token is bound, and the connection presented no client certificate.
    #[error(
        "the token is bound to an X.509-SVID (cnf x5t#S256) but the connection presented no \
         client certificate: send it over mTLS with the SVID it was issued with"
    )]
    NoClientCertificate,
    /// The token is bound to another certificate than the connection's.
    #[error(
        "the token is bound to certificate x5t#S256={bound} but the connection presented \
         x5t#S256={presented}: a token is accepted only with the X.509-SVID it was issued with \
         (after a rotation, fetch a new token)"
    )]
    WrongCertificate {
        /// The token's thumbprint.
        bound: String,
        /// The presented leaf's thumbprint.
        presented: String,
    },
    /// The token has no `cnf` claim and this server accepts bound tokens only.
    #[error(
        "the token is not bound to a certificate (no cnf claim) and this server accepts bound \
         tokens only: register the entry with --jwt-svid-binding x509"
    )]
    Unbound,
    /// `cnf` is present but holds no usable `x5t#S256` string.
    #[error("the token's cnf claim has no x5t#S256 string (a confirmation method not supported)")]
    MalformedCnf,
}

/// The `x5t#S256` thumbprint in `claims`, if the token is bound.
pub fn bound_thumbprint(claims: &Map<String, Value>) -> Result<Option<&str>, BindingError> {
    match claims.get(CNF_CLAIM) {
        None => Ok(None),
        Some(cnf) => match cnf.get(X5T_S256) {
            Some(Value::String(t)) if !t.is_empty() => Ok(Some(t)),
            _ => Err(BindingError::MalformedCnf),
        },
    }
}

/// Checks a validated token against the leaf certificate the connection presented
/// (`None`: no client certificate). A bound token needs that exact certificate; an
/// unbound one passes only when `unbound` is [`Unbound::Accept`].
pub fn check_binding(
    svid: &JwtSvid,
    peer_leaf: Option<&[u8]>,
    unbound: Unbound,
) -> Result<(), BindingError> {
    let Some(bound) = bound_thumbprint(&svid.claims)? else {
        return match unbound {
            Unbound::Accept => Ok(()),
            Unbound::Refuse => Err(BindingError::Unbound),
        };
    };
    let leaf = peer_leaf.ok_or(BindingError::NoClientCertificate)?;
    let presented = x5t_s256(leaf);
    // Both are hashes of public certificates: a plain comparison leaks nothing.
    if bound != presented {
        return Err(BindingError::WrongCertificate { bound: bound.to_owned(), presented });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::SpiffeId;

    fn svid(claims: Value) -> JwtSvid {
        JwtSvid {
            spiffe_id: SpiffeId::parse("spiffe://example.org/web").unwrap(),
            audience: vec!["db".into()],
            expiry: SystemTime::now(),
            claims: claims.as_object().unwrap().clone(),
            token: String::new(),
        }
    }

    #[test]
    fn the_thumbprint_is_rfc_8705s() {
        // RFC 4648 test vector: SHA-256("abc"), base64url without padding.
        assert_eq!(x5t_s256(b"abc"), "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0");
        assert_eq!(
            cnf_for(b"abc"),
            json!({"x5t#S256": "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0"})
        );
    }

    #[test]
    fn a_bound_token_needs_its_certificate_and_an_unbound_one_the_servers_consent() {
        let bound = svid(json!({ "cnf": cnf_for(b"cert-a") }));
        assert_eq!(check_binding(&bound, Some(b"cert-a"), Unbound::Refuse), Ok(()));
        assert_eq!(check_binding(&bound, Some(b"cert-a"), Unbound::Accept), Ok(()));
        let err = check_binding(&bound, Some(b"cert-b"), Unbound::Accept).unwrap_err();
        assert!(matches!(err, BindingError::WrongCertificate { .. }), "{err}");
        assert!(err.to_string().contains(&x5t_s256(b"cert-b")), "{err}");
        assert_eq!(
            check_binding(&bound, None, Unbound::Accept),
            Err(BindingError::NoClientCertificate)
        );
        let plain = svid(json!({}));
        assert_eq!(check_binding(&plain, None, Unbound::Accept), Ok(()));
        assert_eq!(check_binding(&plain, Some(b"x"), Unbound::Refuse), Err(BindingError::Unbound));
        for bad in [json!({"cnf": {}}), json!({"cnf": "x"}), json!({"cnf": {"x5t#S256": 1}})] {
            let err = check_binding(&svid(bad), Some(b"x"), Unbound::Accept).unwrap_err();
            assert_eq!(err, BindingError::MalformedCnf);
        }
    }
}

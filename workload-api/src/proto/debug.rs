//! `Debug` for the Workload API messages that carry a secret: an X.509-SVID's private key
//! and a JWT-SVID (a bearer token) print as `<redacted>`, so that a message logged with
//! `?` or shown by a failing assertion gives nothing away. `build.rs` turns prost's
//! derived `Debug`, which prints every field, off for exactly these messages; the
//! messages that contain them (`X509svidResponse`, `JwtsvidResponse`) keep prost's and
//! use these.

use std::fmt;

use super::generated::{Jwtsvid, ValidateJwtsvidRequest, X509svid};

/// What a redacted field shows.
const REDACTED: &str = "<redacted>";

impl fmt::Debug for X509svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("x509_svid", &self.x509_svid)
            .field("x509_svid_key", &REDACTED)
            .field("bundle", &self.bundle)
            .field("hint", &self.hint)
            .finish()
    }
}

impl fmt::Debug for Jwtsvid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwtsvid")
            .field("spiffe_id", &self.spiffe_id)
            .field("svid", &REDACTED)
            .field("hint", &self.hint)
            .finish()
    }
}

impl fmt::Debug for ValidateJwtsvidRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidateJwtsvidRequest")
            .field("audience", &self.audience)
            .field("svid", &REDACTED)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{JwtsvidResponse, X509svidResponse};
    use super::*;

    /// A token-looking secret and key bytes no other field holds.
    const TOKEN: &str = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
    const KEY: [u8; 6] = [0xde, 0xad, 0xbe, 0xef, 0x42, 0x17];

    fn assert_hides(debug: &str) {
        assert!(!debug.contains("eyJ"), "a token in {debug}");
        assert!(!debug.contains("222, 173, 190, 239, 66, 23"), "the key in {debug}");
        assert!(debug.contains(REDACTED), "{debug}");
    }

    #[test]
    fn messages_with_secrets_redact_them_also_inside_other_messages() {
        let svid = X509svid {
            spiffe_id: "spiffe://example.org/w".into(),
            x509_svid: vec![1, 2, 3],
            x509_svid_key: KEY.to_vec(),
            bundle: vec![4, 5],
            hint: "h".into(),
        };
        let debug = format!("{svid:?}");
        assert_hides(&debug);
        assert!(debug.contains("spiffe://example.org/w") && debug.contains("[1, 2, 3]"), "{debug}");
        let response = X509svidResponse { svids: vec![svid], ..Default::default() };
        assert_hides(&format!("{response:?}"));
        assert_hides(&format!("{response:#?}"));

        let jwt = Jwtsvid {
            spiffe_id: "spiffe://example.org/w".into(),
            svid: TOKEN.into(),
            hint: String::new(),
        };
        assert_hides(&format!("{jwt:?}"));
        assert_hides(&format!("{:?}", JwtsvidResponse { svids: vec![jwt] }));
        let validate = ValidateJwtsvidRequest { audience: "db".into(), svid: TOKEN.into() };
        assert_hides(&format!("{validate:?}"));
    }
}

//! `Debug` for the generated agent API messages that carry a secret: the join token an
//! agent attests with and the JWT-SVID the server mints for an agent. The secret prints as `<redacted>`, so a message logged with `?`
//! or shown by a failing assertion gives nothing away. `build.rs` turns prost's derived
//! `Debug` off for exactly these messages; the messages around them (`AttestationParams`,
//! `AttestAgentRequest`) keep prost's and use these.

use std::fmt;

use super::proto::{JoinTokenAttestation, NewJwtSvidResponse};

/// What a redacted field shows.
const REDACTED: &str = "<redacted>";

impl fmt::Debug for JoinTokenAttestation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinTokenAttestation").field("token", &REDACTED).finish()
    }
}

impl fmt::Debug for NewJwtSvidResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewJwtSvidResponse")
            .field("token", &REDACTED)
            .field("expires_at", &self.expires_at)
            .field("spiffe_id", &self.spiffe_id)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::super::proto::{
        AttestAgentRequest, AttestationParams, attest_agent_request, attestation_params,
    };
    use super::*;

    const SECRET: &str = "s3cr3t-join-token-value";
    const JWT: &str = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";

    fn assert_hides(debug: &str) {
        assert!(!debug.contains(SECRET) && !debug.contains("eyJ"), "a secret in {debug}");
        assert!(debug.contains(REDACTED), "{debug}");
    }

    #[test]
    fn messages_with_secrets_redact_them_also_inside_other_messages() {
        let token = JoinTokenAttestation { token: SECRET.into() };
        assert_hides(&format!("{token:?}"));
        let params = AttestationParams {
            data: Some(attestation_params::Data::JoinToken(token)),
            csr: vec![1, 2],
        };
        let request = AttestAgentRequest { step: Some(attest_agent_request::Step::Params(params)) };
        assert_hides(&format!("{request:?}"));
        let jwt = NewJwtSvidResponse {
            token: JWT.into(),
            expires_at: 1,
            spiffe_id: "spiffe://example.org/w".into(),
        };
        assert_hides(&format!("{jwt:#?}"));
    }
}

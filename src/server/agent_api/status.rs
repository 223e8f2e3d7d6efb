//! The one place agent API errors become gRPC statuses.
//!
//! Who is at fault decides the code: a caller that is not (or no longer) entitled gets
//! `PermissionDenied`, malformed input `InvalidArgument`, a missing entry `NotFound`, a
//! caller going too fast `ResourceExhausted`, and server-side trouble (datastore, CA)
//! `Unavailable` or `Internal`, with a message that never carries a secret.

use tonic::{Code, Status};

use super::error::AgentApiError;
use crate::ca::CaError;

/// The gRPC code of `err`.
pub fn code_of(err: &AgentApiError) -> Code {
    use AgentApiError as E;
    match err {
        E::NoAgentSvid => Code::Unauthenticated,
        E::NotAnAgent(_)
        | E::UnknownAgent(_)
        | E::BannedAgent(_)
        | E::StaleAgentSvid { .. }
        | E::UnknownJoinToken
        | E::UsedJoinToken
        | E::ExpiredJoinToken
        | E::CannotReattest(_)
        | E::X509PopCertificate(_)
        | E::X509PopSignature
        | E::EntryNotAuthorized(_)
        | E::BadBindingCertificate { .. } => Code::PermissionDenied,
        E::X509PopDisabled => Code::FailedPrecondition,
        E::BadRequest(_)
        | E::Csr(_)
        | E::CsrAsksForCa
        | E::CsrTooManyExtensions(_)
        | E::CsrManyUriSans(_)
        | E::CsrForeignTrustDomain(_)
        | E::CsrOtherId { .. }
        | E::TooManyItems { .. } => Code::InvalidArgument,
        E::UnknownEntry(_) => Code::NotFound,
        E::AttestationTimeout { .. } => Code::DeadlineExceeded,
        E::AttestRateLimited(_) | E::SignRateLimited { .. } => Code::ResourceExhausted,
        E::Ca(e) => ca_code(e),
        E::DataStore(_) => Code::Unavailable,
        E::Setup(_) | E::SigningTask(_) => Code::Internal,
    }
}

fn ca_code(err: &CaError) -> Code {
    match err {
        CaError::MissingAudience
        | CaError::CsrTooLarge { .. }
        | CaError::CsrMalformed(_)
        | CaError::CsrUnsupportedSignature(_)
        | CaError::CsrBadSignature
        | CaError::UnsupportedKey(_)
        | CaError::WeakRsaKey { .. } => Code::InvalidArgument,
        CaError::NoActiveAuthority | CaError::CaNotValidNow { .. } => Code::Unavailable,
        _ => Code::Internal,
    }
}

/// `err` as a gRPC status: its code and its message; a rate-limited signing call also
/// says when to retry ([`crate::wire::RETRY_AFTER_METADATA`]).
pub fn to_status(err: &AgentApiError) -> Status {
    let code = code_of(err);
    if code == Code::Internal || code == Code::Unavailable {
        tracing::warn!(error = %err, "agent API request failed on the server side");
    }
    let status = Status::new(code, crate::server::admin::status::bounded_message(&err.to_string()));
    match err {
        AgentApiError::SignRateLimited { retry_after, .. } => {
            crate::wire::with_retry_after(status, *retry_after)
        }
        _ => status,
    }
}

impl From<AgentApiError> for Status {
    fn from(err: AgentApiError) -> Self {
        to_status(&err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::datastore::DataStoreError;
    use std::time::Duration;

    #[test]
    fn who_is_at_fault_decides_the_code() {
        let cases = [
            (AgentApiError::NoAgentSvid, Code::Unauthenticated),
            (AgentApiError::UsedJoinToken, Code::PermissionDenied),
            (AgentApiError::BannedAgent("a".into()), Code::PermissionDenied),
            (AgentApiError::Csr(CaError::CsrBadSignature), Code::InvalidArgument),
            (AgentApiError::CsrAsksForCa, Code::InvalidArgument),
            (AgentApiError::UnknownEntry("e".into()), Code::NotFound),
            (rate_limited(Duration::from_millis(5)), Code::ResourceExhausted),
            (AgentApiError::Ca(CaError::NoActiveAuthority), Code::Unavailable),
            (AgentApiError::Ca(CaError::MissingAudience), Code::InvalidArgument),
            (AgentApiError::DataStore(DataStoreError::Backend("x".into())), Code::Unavailable),
            (AgentApiError::X509PopDisabled, Code::FailedPrecondition),
        ];
        for (err, code) in cases {
            let status = to_status(&err);
            assert_eq!(status.code(), code, "{err}");
            assert_eq!(status.message(), err.to_string());
        }
    }

    fn rate_limited(retry_after: Duration) -> AgentApiError {
        AgentApiError::SignRateLimited { agent: "spiffe://td/a".into(), retry_after }
    }

    #[test]
    fn a_rate_limited_call_says_when_to_retry() {
        let status = to_status(&rate_limited(Duration::from_micros(1500)));
        assert_eq!(status.metadata().get("retry-after-ms").unwrap(), "2", "rounded up");
        assert_eq!(crate::wire::retry_after(&status), Some(Duration::from_millis(2)));
        assert!(status.message().contains("retry after 2 ms"), "{status:?}");
        let other = to_status(&AgentApiError::AttestRateLimited("10.0.0.1".into()));
        assert_eq!(crate::wire::retry_after(&other), None);
    }

    #[test]
    fn join_token_messages_name_the_reason() {
        assert!(to_status(&AgentApiError::UnknownJoinToken).message().contains("unknown"));
        assert!(to_status(&AgentApiError::UsedJoinToken).message().contains("already used"));
        let stuck = to_status(&AgentApiError::CannotReattest("spiffe://td/n".into()));
        assert!(stuck.message().contains("keycard agent evict --id spiffe://td/n"), "{stuck:?}");
        assert!(stuck.message().contains("keycard token generate --spiffe-id spiffe://td/n"));
        assert!(to_status(&AgentApiError::ExpiredJoinToken).message().contains("expired"));
    }
}

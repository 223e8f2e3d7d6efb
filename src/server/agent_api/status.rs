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
        | E::EntryNotAuthorized(_) => Code::PermissionDenied,
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
        E::AttestRateLimited(_) | E::SignRateLimited(_) => Code::ResourceExhausted,
        E::Ca(e) => ca_code(e),
        E::DataStore(_) => Code::Unavailable,
        E::Setup(_) => Code::Internal,
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

/// `err` as a gRPC status: its code and its message.
pub fn to_status(err: &AgentApiError) -> Status {
    let code = code_of(err);
    if code == Code::Internal || code == Code::Unavailable {
        tracing::warn!(error = %err, "agent API request failed on the server side");
    }
    Status::new(code, crate::server::admin::status::bounded_message(&err.to_string()))
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

    #[test]
    fn who_is_at_fault_decides_the_code() {
        let cases = [
            (AgentApiError::NoAgentSvid, Code::Unauthenticated),
            (AgentApiError::UsedJoinToken, Code::PermissionDenied),
            (AgentApiError::BannedAgent("a".into()), Code::PermissionDenied),
            (AgentApiError::Csr(CaError::CsrBadSignature), Code::InvalidArgument),
            (AgentApiError::CsrAsksForCa, Code::InvalidArgument),
            (AgentApiError::UnknownEntry("e".into()), Code::NotFound),
            (AgentApiError::SignRateLimited("a".into()), Code::ResourceExhausted),
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

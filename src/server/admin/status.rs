//! Why an admin call failed, and the one place those reasons become gRPC statuses.
//!
//! Every message names the problem and, where there is one, the fix, because the CLI shows
//! it to the operator as is.

use keycard_workload_api::SpiffeIdError;
use tonic::{Code, Status};

use crate::ca::CaError;
use crate::ca::journal::JournalError;
use crate::selector::SelectorError;
use crate::server::datastore::DataStoreError;
use crate::server::entry::EntryError;
use crate::server::join_token::JoinTokenError;

/// Why an admin call was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A required field was empty.
    #[error("{0} is required")]
    MissingField(&'static str),
    /// A SPIFFE ID field does not parse.
    #[error(
        "{field} {value:?} is not a SPIFFE ID ({source}); write it as spiffe://<trust domain>/<path>"
    )]
    BadSpiffeId {
        /// Which field.
        field: &'static str,
        /// What was given.
        value: String,
        /// What the parser said.
        source: SpiffeIdError,
    },
    /// A selector does not parse (the message says the expected form).
    #[error(transparent)]
    BadSelector(#[from] SelectorError),
    /// The entry breaks a rule of its own.
    #[error(transparent)]
    Entry(#[from] EntryError),
    /// The parent ID names nothing that may be a parent.
    #[error(
        "parent ID {parent} does not exist: a parent must be the server ({server}), an attested \
         agent (`keycard agent list`), the agent ID of an unused join token \
         (`keycard token generate`) or the SPIFFE ID of another entry (`keycard entry show`)"
    )]
    ParentNotFound {
        /// The parent ID given.
        parent: String,
        /// The server's own ID, which is always a valid parent.
        server: String,
    },
    /// An entry with the same SPIFFE ID, parent ID and selectors exists.
    #[error(
        "an entry with the same SPIFFE ID, parent ID and selectors already exists (entry ID \
         {0}); change it with `keycard entry update --id {0}`"
    )]
    DuplicateEntry(String),
    /// No entry with this ID.
    #[error("no entry with ID {0}; list entries with `keycard entry show`")]
    EntryNotFound(String),
    /// No agent with this ID.
    #[error("no agent with ID {0}; list agents with `keycard agent list`")]
    AgentNotFound(String),
    /// The join token request is not acceptable.
    #[error(transparent)]
    JoinToken(#[from] JoinTokenError),
    /// The request names no authority kind.
    #[error("authority kind is required: x509 or jwt")]
    MissingAuthorityKind,
    /// The request names no bundle format.
    #[error("bundle format is required: pem or spiffe")]
    MissingBundleFormat,
    /// The datastore failed or refused.
    #[error(transparent)]
    DataStore(#[from] DataStoreError),
    /// The CA refused or failed.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The bundle could not be rendered.
    #[error("the bundle could not be rendered: {0}")]
    Bundle(String),
    /// A blocking task died (a bug: it panicked).
    #[error("internal error: {0}")]
    Task(String),
}

impl AdminError {
    /// The gRPC code for this error: who is at fault and whether retrying can help.
    pub fn code(&self) -> Code {
        use AdminError as E;
        match self {
            E::MissingField(_)
            | E::BadSpiffeId { .. }
            | E::BadSelector(_)
            | E::Entry(_)
            | E::JoinToken(_)
            | E::MissingAuthorityKind
            | E::MissingBundleFormat => Code::InvalidArgument,
            E::ParentNotFound { .. } => Code::FailedPrecondition,
            E::DuplicateEntry(_) => Code::AlreadyExists,
            E::EntryNotFound(_) | E::AgentNotFound(_) => Code::NotFound,
            E::DataStore(e) => datastore_code(e),
            E::Ca(e) => ca_code(e),
            E::Bundle(_) | E::Task(_) => Code::Internal,
        }
    }
}

fn datastore_code(e: &DataStoreError) -> Code {
    match e {
        DataStoreError::NotFound { .. } => Code::NotFound,
        DataStoreError::DuplicateEntry(_) | DataStoreError::AlreadyExists { .. } => {
            Code::AlreadyExists
        }
        DataStoreError::BadPageToken(_) => Code::InvalidArgument,
        DataStoreError::Backend(_) => Code::Unavailable,
        DataStoreError::Corrupt(_) => Code::DataLoss,
    }
}

fn ca_code(e: &CaError) -> Code {
    match e {
        CaError::Journal(JournalError::Unknown { .. }) => Code::NotFound,
        CaError::Journal(
            JournalError::AlreadyPrepared(_)
            | JournalError::NotPrepared(_)
            | JournalError::ActiveAuthority(_)
            | JournalError::TaintPrepared(_)
            | JournalError::AlreadyTainted(_)
            | JournalError::NotTainted(_),
        ) => Code::FailedPrecondition,
        CaError::SelfTest(_) => Code::FailedPrecondition,
        CaError::NoActiveAuthority => Code::Unavailable,
        _ => Code::Internal,
    }
}

impl From<AdminError> for Status {
    fn from(e: AdminError) -> Self {
        // A datastore duplicate is reported with the existing entry's ID and the fix.
        let e = match e {
            AdminError::DataStore(DataStoreError::DuplicateEntry(id)) => {
                AdminError::DuplicateEntry(id)
            }
            other => other,
        };
        let code = e.code();
        if code == Code::Internal {
            tracing::error!(error = %e, "admin call failed");
        }
        Status::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::AuthorityKind;

    #[test]
    fn each_error_has_the_right_code_and_says_the_fix() {
        let cases: Vec<(AdminError, Code, &str)> = vec![
            (AdminError::MissingField("id"), Code::InvalidArgument, "id is required"),
            (
                AdminError::BadSelector(SelectorError::MissingType("unix".into())),
                Code::InvalidArgument,
                "type:value",
            ),
            (
                AdminError::ParentNotFound {
                    parent: "spiffe://example.org/x".into(),
                    server: "spiffe://example.org/keycard/server".into(),
                },
                Code::FailedPrecondition,
                "keycard agent list",
            ),
            (
                AdminError::DataStore(DataStoreError::DuplicateEntry("e-1".into())),
                Code::AlreadyExists,
                "keycard entry update --id e-1",
            ),
            (AdminError::EntryNotFound("e-2".into()), Code::NotFound, "e-2"),
            (
                AdminError::DataStore(DataStoreError::BadPageToken("zz".into())),
                Code::InvalidArgument,
                "next_page_token",
            ),
            (
                AdminError::DataStore(DataStoreError::Backend("disk".into())),
                Code::Unavailable,
                "disk",
            ),
            (
                AdminError::Ca(CaError::Journal(JournalError::Unknown {
                    kind: AuthorityKind::X509,
                    id: "ab".into(),
                })),
                Code::NotFound,
                "keycard authority show",
            ),
            (
                AdminError::Ca(CaError::Journal(JournalError::NotTainted("ab".into()))),
                Code::FailedPrecondition,
                "taint it",
            ),
            (AdminError::JoinToken(JoinTokenError::ZeroTtl), Code::InvalidArgument, "--ttl"),
        ];
        for (err, code, needle) in cases {
            let status = Status::from(err);
            assert_eq!(status.code(), code, "{}", status.message());
            assert!(status.message().contains(needle), "{}", status.message());
        }
    }
}

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
use crate::server::federation::foreign::BundleInputError;
use crate::server::federation::refresh::RefreshError;
use crate::server::federation::relationship::RelationshipError;
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
    /// A batch call with no entries.
    #[error("the batch is empty: give at least one entry")]
    EmptyBatch,
    /// A batch call with more entries than one call may carry.
    #[error(
        "the batch has {given} entries, more than the {max} one call may carry; split it into \
         files of at most {max} entries"
    )]
    BatchTooLarge {
        /// How many were given.
        given: usize,
        /// The limit.
        max: usize,
    },
    /// A batch call whose request is larger than one call may carry.
    #[error(
        "the batch is {given} bytes, more than the {max} one call may carry; split it into \
         smaller files"
    )]
    BatchTooBig {
        /// The request's size.
        given: usize,
        /// The limit.
        max: usize,
    },
    /// A relationship with this trust domain exists already.
    #[error(
        "a federation relationship with {0} exists already; change it with `keycard federation \
         update --trust-domain {0} ...`"
    )]
    FederationExists(String),
    /// A foreign bundle given by the operator does not parse or holds nothing.
    #[error(transparent)]
    BundleInput(#[from] BundleInputError),
    /// No federation relationship or foreign bundle for this trust domain.
    #[error("{what} {trust_domain} not found; list them with `keycard {list}`")]
    ForeignNotFound {
        /// "federation relationship with" or "foreign bundle of".
        what: &'static str,
        /// The trust domain asked for.
        trust_domain: String,
        /// The command that lists what exists.
        list: &'static str,
    },
    /// A foreign bundle that a relationship keeps fresh cannot be deleted on its own.
    #[error(
        "the bundle of {0} is kept fresh by a federation relationship; delete the relationship \
         with `keycard federation delete --trust-domain {0}` (that deletes its bundle too)"
    )]
    BundleOfFederation(String),
    /// A federation relationship as asked for breaks a rule.
    #[error(transparent)]
    Relationship(#[from] RelationshipError),
    /// A refresh asked for by the operator did not bring a bundle.
    #[error(transparent)]
    Refresh(#[from] RefreshError),
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
            | E::MissingBundleFormat
            | E::EmptyBatch
            | E::BatchTooLarge { .. }
            | E::BatchTooBig { .. }
            | E::BundleInput(_) => Code::InvalidArgument,
            E::FederationExists(_) => Code::AlreadyExists,
            E::Relationship(_) => Code::InvalidArgument,
            E::ForeignNotFound { .. } => Code::NotFound,
            E::BundleOfFederation(_) => Code::FailedPrecondition,
            E::Refresh(RefreshError::NotFound(_)) => Code::NotFound,
            E::Refresh(RefreshError::Fetch { .. }) => Code::FailedPrecondition,
            E::Refresh(RefreshError::DataStore(e)) => datastore_code(e),
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
        DataStoreError::BadPageToken(_) | DataStoreError::BatchRefused(_) => Code::InvalidArgument,
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

impl From<crate::server::cluster::MarkError> for AdminError {
    fn from(e: crate::server::cluster::MarkError) -> Self {
        match e {
            crate::server::cluster::MarkError::Ca(e) => Self::Ca(e),
            crate::server::cluster::MarkError::DataStore(e) => Self::DataStore(e),
        }
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
        Status::new(code, bounded_message(&e.to_string()))
    }
}

/// Longest run of non-blank text a status message echoes (a DNS name, a selector, an ID):
/// user input beyond this is cut, with an ellipsis and its full length.
pub const MAX_ECHO_LEN: usize = 256;
/// Longest status message sent: it travels in the `grpc-message` header, and a header
/// larger than the peer's limit (16 KiB in h2) fails the whole call with a protocol error.
pub const MAX_STATUS_MESSAGE_LEN: usize = 2048;

/// `text` with every word (run without whitespace) longer than [`MAX_ECHO_LEN`] bytes cut
/// to that length, and the whole at most [`MAX_STATUS_MESSAGE_LEN`] bytes. Every admin and
/// agent API error becomes a status through this, so no input is echoed in full.
pub fn bounded_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_STATUS_MESSAGE_LEN));
    for piece in text.split_inclusive(char::is_whitespace) {
        let word = piece.trim_end_matches(char::is_whitespace);
        if word.len() > MAX_ECHO_LEN {
            let cut = floor_char_boundary(word, MAX_ECHO_LEN);
            out.push_str(&word[..cut]);
            out.push_str(&format!("…({} bytes)", word.len()));
            out.push_str(&piece[word.len()..]);
        } else {
            out.push_str(piece);
        }
    }
    if out.len() > MAX_STATUS_MESSAGE_LEN {
        let cut = floor_char_boundary(&out, MAX_STATUS_MESSAGE_LEN - '…'.len_utf8());
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// The largest index `<= max` that is a char boundary of `text`.
fn floor_char_boundary(text: &str, max: usize) -> usize {
    (0..=max.min(text.len())).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0)
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

    #[test]
    fn echoed_input_is_bounded() {
        let name = "a".repeat(16 * 1024);
        let status = Status::from(AdminError::Entry(EntryError::BadDnsName(name)));
        let message = status.message();
        assert!(message.len() < MAX_ECHO_LEN + 400, "{} bytes", message.len());
        assert!(message.contains("…(16386 bytes)"), "{message}");
        assert!(message.contains("the CA signs nothing else"), "the fix survives: {message}");
        let many = format!("{} ", "é".repeat(200)).repeat(40);
        let cut = bounded_message(&many);
        assert!(cut.len() <= MAX_STATUS_MESSAGE_LEN && cut.ends_with('…'), "{}", cut.len());
        assert_eq!(bounded_message("short words stay"), "short words stay");
    }
}

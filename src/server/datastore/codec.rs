//! How values are written into a database row and read back, the same for every store:
//! times as integer milliseconds since the Unix epoch, durations as milliseconds, page
//! tokens as the base64url of the last key of the previous page, and the canonical text
//! of a selector set (the key of duplicate detection).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keycard_workload_api::{SpiffeId, TrustDomain};

use super::{DataStoreError, EntryFilter, PageRequest};
use crate::selector::SelectorSet;
use crate::server::entry::{EntrySpec, JwtSvidBinding};

/// A time as stored: milliseconds since the Unix epoch (earlier times clamp to 0).
pub(super) fn time_to_db(t: SystemTime) -> i64 {
    let ms = t.duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// A stored time back; a negative value means the row is corrupt.
pub(super) fn time_from_db(ms: i64) -> Result<SystemTime, DataStoreError> {
    let ms = u64::try_from(ms)
        .map_err(|_| DataStoreError::Corrupt(format!("negative timestamp {ms}")))?;
    Ok(UNIX_EPOCH + Duration::from_millis(ms))
}

/// A duration as stored: whole milliseconds.
pub(super) fn duration_to_db(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A stored duration back.
pub(super) fn duration_from_db(ms: i64) -> Result<Duration, DataStoreError> {
    let ms =
        u64::try_from(ms).map_err(|_| DataStoreError::Corrupt(format!("negative TTL {ms}")))?;
    Ok(Duration::from_millis(ms))
}

/// A stored revision or count back.
pub(super) fn u64_from_db(n: i64, what: &str) -> Result<u64, DataStoreError> {
    u64::try_from(n).map_err(|_| DataStoreError::Corrupt(format!("negative {what} {n}")))
}

/// A revision as stored.
pub(super) fn u64_to_db(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The page token that continues after the item with key `last`: the key, base64url.
pub(super) fn page_token(last: &str) -> String {
    URL_SAFE_NO_PAD.encode(last)
}

/// The key a page starts after: the empty string (before every key) for the first page,
/// which an empty token also asks for (protobuf cannot tell an empty string from none).
pub(super) fn page_after(page: &PageRequest) -> Result<String, DataStoreError> {
    let token = match page.token.as_deref() {
        None | Some("") => return Ok(String::new()),
        Some(token) => token,
    };
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|key| !key.is_empty())
        .ok_or_else(|| DataStoreError::BadPageToken(token.to_owned()))
}

/// A stored SPIFFE ID back.
pub(super) fn spiffe_id_from_db(text: &str) -> Result<SpiffeId, DataStoreError> {
    SpiffeId::parse(text)
        .map_err(|e| DataStoreError::Corrupt(format!("stored SPIFFE ID {text:?}: {e}")))
}

/// The canonical text of a selector set: a JSON array in sorted order, so that the same
/// selectors given in any order have the same key.
pub(super) fn selectors_key(selectors: &SelectorSet) -> Result<String, DataStoreError> {
    serde_json::to_string(selectors).map_err(|e| DataStoreError::Backend(e.to_string()))
}

/// A stored JWT-SVID binding mode back (`id` names the entry in the error).
pub(super) fn binding_from_db(text: &str, id: &str) -> Result<JwtSvidBinding, DataStoreError> {
    JwtSvidBinding::parse(text)
        .map_err(|e| DataStoreError::Corrupt(format!("JWT-SVID binding of entry {id}: {e}")))
}

/// An entry's federated trust domains as stored: a JSON array of names.
pub(super) fn federates_json(spec: &EntrySpec) -> Result<String, DataStoreError> {
    serde_json::to_string(&spec.federates_with).map_err(|e| DataStoreError::Backend(e.to_string()))
}

/// Stored federated trust domains back (`id` names the entry in the error).
pub(super) fn federates_from_db(text: &str, id: &str) -> Result<Vec<TrustDomain>, DataStoreError> {
    serde_json::from_str(text)
        .map_err(|e| DataStoreError::Corrupt(format!("federated trust domains of entry {id}: {e}")))
}

/// An entry's DNS names as stored: a JSON array.
pub(super) fn dns_names_json(spec: &EntrySpec) -> Result<String, DataStoreError> {
    serde_json::to_string(&spec.dns_names).map_err(|e| DataStoreError::Backend(e.to_string()))
}

/// The `column = value` conditions an entry filter sets, in a fixed order (each store
/// writes its own placeholders).
pub(super) fn filter_conditions(
    filter: &EntryFilter,
) -> Result<Vec<(&'static str, String)>, DataStoreError> {
    let mut conditions = Vec::new();
    if let Some(id) = &filter.spiffe_id {
        conditions.push(("spiffe_id", id.to_string()));
    }
    if let Some(id) = &filter.parent_id {
        conditions.push(("parent_id", id.to_string()));
    }
    if let Some(selectors) = &filter.selectors {
        conditions.push(("selectors_key", selectors_key(selectors)?));
    }
    Ok(conditions)
}

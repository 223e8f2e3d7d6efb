//! `keycard entry create --file` and `keycard entry delete --file`: many entries in one
//! admin call (`BatchCreateEntries`, `BatchDeleteEntries`), all or none.
//!
//! The file (or standard input, for `-`) holds JSON in any of the forms `entry show
//! --output json` and `entry create --file --output json` print: an array of entry objects,
//! the `{"entries": [...], "next_page_token": ...}` document, or a single entry object. An
//! entry object has the keys `spiffe_id`, `parent_id`, `selectors` (`type:value` strings)
//! and optionally `dns_names`, `x509_ttl_seconds`, `jwt_ttl_seconds` (0: the server's
//! default), `hint`, `admin`, `jwt_svid_binding` (`none` or `x509`) and `federates_with` (trust domain names), meaning what the flags of `entry create` mean. The keys
//! the server sets (`id`, `revision`, `created_at`, `updated_at`, `parent_missing`) are
//! read and ignored on create (the server assigns new ones); any other key is refused, so
//! a misspelt one is not silently dropped. For delete, the array may also hold plain entry
//! IDs; of an entry object only `id` is used.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};

use super::client::Client;
use super::entry::missing_parent_warning;
use super::output::{count_text, emit, entry_json};
use super::{CliError, OutputFormat};
use crate::server::admin::entries_batch::{MAX_BATCH_BYTES, MAX_BATCH_ENTRIES};
use crate::server::admin::{MAX_MESSAGE_BYTES, pb};

/// Why an entry file could not be used, or the server refused its batch.
#[derive(Debug, thiserror::Error)]
pub enum EntryFileError {
    /// The file (or standard input) could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file, or `-`.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The text is not JSON.
    #[error("{path} is not JSON: {source}")]
    NotJson {
        /// The file, or `-`.
        path: PathBuf,
        /// Where the parser stopped.
        source: serde_json::Error,
    },
    /// The JSON is not one of the accepted forms.
    #[error(
        "{path} holds no entries: write a JSON array of entry objects, or give the output of \
         `keycard entry show --output json`"
    )]
    NoEntries {
        /// The file, or `-`.
        path: PathBuf,
    },
    /// Entries of the file that are not entry objects (a missing or misspelt key).
    #[error("{path}: {}", .problems.join("; "))]
    BadEntries {
        /// The file, or `-`.
        path: PathBuf,
        /// `entry #N: what is wrong`, for each bad one.
        problems: Vec<String>,
    },
    /// More entries than one call may carry.
    #[error(
        "{path} has {count} entries, more than the {MAX_BATCH_ENTRIES} one call may carry; split it"
    )]
    TooMany {
        /// The file, or `-`.
        path: PathBuf,
        /// How many it has.
        count: usize,
    },
    /// The request would be larger than one call may carry.
    #[error(
        "{path} makes a request of {bytes} bytes, more than the {MAX_BATCH_BYTES} one call may carry; split it"
    )]
    TooBig {
        /// The file, or `-`.
        path: PathBuf,
        /// The request's size.
        bytes: usize,
    },
    /// The server refused the batch: nothing was stored or deleted.
    #[error("nothing was {action}: {} of {total} entries break a rule:\n{}", .errors.len(), .errors.join("\n"))]
    Refused {
        /// `created` or `deleted`.
        action: &'static str,
        /// How many the batch had.
        total: usize,
        /// `  #N <id>: the rule and the fix`, for each.
        errors: Vec<String>,
    },
}

/// An entry object of a file; see the module documentation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    spiffe_id: String,
    parent_id: String,
    selectors: Vec<String>,
    #[serde(default)]
    dns_names: Vec<String>,
    #[serde(default)]
    x509_ttl_seconds: u64,
    #[serde(default)]
    jwt_ttl_seconds: u64,
    #[serde(default)]
    hint: String,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    jwt_svid_binding: String,
    #[serde(default)]
    federates_with: Vec<String>,
    // Set by the server; read so that `entry show` output is accepted, then ignored.
    #[serde(default, rename = "id")]
    _id: Option<Value>,
    #[serde(default, rename = "revision")]
    _revision: Option<Value>,
    #[serde(default, rename = "created_at")]
    _created_at: Option<Value>,
    #[serde(default, rename = "updated_at")]
    _updated_at: Option<Value>,
    #[serde(default, rename = "parent_missing")]
    _parent_missing: Option<Value>,
}

/// Reads the file, or standard input for `-`.
pub fn read_source(path: &Path, stdin: &mut dyn Read) -> Result<String, EntryFileError> {
    let read_err = |source| EntryFileError::Read { path: path.to_path_buf(), source };
    if path == Path::new("-") {
        let mut text = String::new();
        stdin.read_to_string(&mut text).map_err(read_err)?;
        Ok(text)
    } else {
        std::fs::read_to_string(path).map_err(read_err)
    }
}

/// The entry values of a document in any accepted form.
fn items(path: &Path, text: &str) -> Result<Vec<Value>, EntryFileError> {
    let doc: Value = serde_json::from_str(text)
        .map_err(|source| EntryFileError::NotJson { path: path.to_path_buf(), source })?;
    match doc {
        Value::Array(items) => Ok(items),
        Value::Object(mut map) => match map.remove("entries") {
            Some(Value::Array(items)) => {
                if map.get("next_page_token").and_then(Value::as_str).is_some_and(|t| !t.is_empty())
                {
                    eprintln!(
                        "warning: {} is one page of a listing (next_page_token is set); only \
                         its entries are used",
                        path.display()
                    );
                }
                Ok(items)
            }
            Some(_) => Err(EntryFileError::NoEntries { path: path.to_path_buf() }),
            None => Ok(vec![Value::Object(map)]),
        },
        _ => Err(EntryFileError::NoEntries { path: path.to_path_buf() }),
    }
}

/// Turns each item with `convert`, collecting every problem with the entry's index.
fn convert_all<T>(
    path: &Path,
    items: Vec<Value>,
    convert: impl Fn(Value) -> Result<T, String>,
) -> Result<Vec<T>, EntryFileError> {
    if items.is_empty() {
        return Err(EntryFileError::NoEntries { path: path.to_path_buf() });
    }
    if items.len() > MAX_BATCH_ENTRIES {
        return Err(EntryFileError::TooMany { path: path.to_path_buf(), count: items.len() });
    }
    let mut problems = Vec::new();
    let mut out = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        match convert(item) {
            Ok(v) => out.push(v),
            Err(e) => problems.push(format!("entry #{index}: {e}")),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(EntryFileError::BadEntries { path: path.to_path_buf(), problems })
    }
}

/// The specifications of an entry file, for `BatchCreateEntries`.
pub fn create_request(
    path: &Path,
    text: &str,
) -> Result<pb::BatchCreateEntriesRequest, EntryFileError> {
    let specs = convert_all(path, items(path, text)?, |item| {
        let e: FileEntry = serde_json::from_value(item).map_err(|e| e.to_string())?;
        Ok(pb::EntrySpec {
            spiffe_id: e.spiffe_id,
            parent_id: e.parent_id,
            selectors: e.selectors,
            x509_ttl_seconds: e.x509_ttl_seconds,
            jwt_ttl_seconds: e.jwt_ttl_seconds,
            dns_names: e.dns_names,
            hint: e.hint,
            admin: e.admin,
            jwt_svid_binding: e.jwt_svid_binding,
            federates_with: e.federates_with,
        })
    })?;
    Ok(pb::BatchCreateEntriesRequest { specs })
}

/// The entry IDs of a file (plain IDs, or entry objects' `id`), for `BatchDeleteEntries`.
pub fn delete_request(
    path: &Path,
    text: &str,
) -> Result<pb::BatchDeleteEntriesRequest, EntryFileError> {
    let ids = convert_all(path, items(path, text)?, |item| match item {
        Value::String(id) => Ok(id),
        Value::Object(mut map) => match map.remove("id") {
            Some(Value::String(id)) => Ok(id),
            _ => Err("no \"id\" string: give entry IDs, or entry objects with their id".into()),
        },
        _ => Err("neither an entry ID nor an entry object".into()),
    })?;
    Ok(pb::BatchDeleteEntriesRequest { ids })
}

fn check_bytes(path: &Path, bytes: usize) -> Result<(), EntryFileError> {
    if bytes > MAX_BATCH_BYTES {
        return Err(EntryFileError::TooBig { path: path.to_path_buf(), bytes });
    }
    Ok(())
}

/// The refusal of a batch, one line per broken rule.
fn refused(action: &'static str, total: usize, errors: &[pb::BatchEntryError]) -> CliError {
    let errors = errors
        .iter()
        .map(|e| {
            let who = if e.entry_id.is_empty() { &e.spiffe_id } else { &e.entry_id };
            format!("  #{} {who}: {}", e.index, e.message)
        })
        .collect();
    CliError::EntryFile(EntryFileError::Refused { action, total, errors })
}

fn print_entries(
    out: &mut dyn Write,
    format: OutputFormat,
    verb: &str,
    entries: &[pb::Entry],
) -> Result<(), CliError> {
    let text = || {
        let mut text = format!("{verb} {}\n", count_text(entries.len() as u64, "entry", "entries"));
        for e in entries {
            let spiffe_id = e.spec.as_ref().map_or("", |s| s.spiffe_id.as_str());
            text += &format!("{}  {spiffe_id}\n", e.id);
        }
        text
    };
    let json = || json!({ "entries": entries.iter().map(entry_json).collect::<Vec<_>>() });
    emit(out, format, text, json).map_err(CliError::from)
}

/// `entry create --file`: reads, sends one batch, prints what was created.
pub(super) async fn create(
    c: &mut Client,
    format: OutputFormat,
    path: &Path,
    stdin: &mut dyn Read,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let req = create_request(path, &read_source(path, stdin)?)?;
    check_bytes(path, prost::Message::encoded_len(&req))?;
    let total = req.specs.len();
    let mut api = c.api.clone().max_decoding_message_size(MAX_MESSAGE_BYTES);
    let reply = api.batch_create_entries(req).await.map_err(|s| c.fail(s))?.into_inner();
    if !reply.errors.is_empty() {
        return Err(refused("created", total, &reply.errors));
    }
    let mut warned = std::collections::HashSet::new();
    for entry in &reply.entries {
        let parent = entry.spec.as_ref().map(|s| s.parent_id.clone()).unwrap_or_default();
        if let Some(warning) = missing_parent_warning(entry).filter(|_| warned.insert(parent)) {
            eprintln!("{warning}");
        }
    }
    print_entries(out, format, "Created", &reply.entries)
}

/// `entry delete --file`: reads, sends one batch, prints what was deleted.
pub(super) async fn delete(
    c: &mut Client,
    format: OutputFormat,
    path: &Path,
    stdin: &mut dyn Read,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let req = delete_request(path, &read_source(path, stdin)?)?;
    check_bytes(path, prost::Message::encoded_len(&req))?;
    let total = req.ids.len();
    let mut api = c.api.clone().max_decoding_message_size(MAX_MESSAGE_BYTES);
    let reply = api.batch_delete_entries(req).await.map_err(|s| c.fail(s))?.into_inner();
    if !reply.errors.is_empty() {
        return Err(refused("deleted", total, &reply.errors));
    }
    print_entries(out, format, "Deleted", &reply.entries)
}

#[cfg(test)]
#[path = "entry_file_tests.rs"]
mod tests;

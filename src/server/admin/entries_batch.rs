//! Batch registration: many entries created or deleted in one call and one datastore
//! transaction, all or none.
//!
//! Every entry is checked as `CreateEntry` checks it (fields, [`EntrySpec::check`] with the
//! CA's TTL cap, duplicates) and every broken rule is reported, each naming the entry's
//! index and SPIFFE ID (or entry ID), so that one round fixes a whole file. A parent that
//! does not exist yet is not an error (as for one entry): the reply flags the entry with
//! `parent_missing`. The parents named by entries of the same batch count as existing.

use std::collections::{HashMap, HashSet};

use keycard_workload_api::SpiffeId;
use prost::Message as _;

use super::convert::{entry_to_pb, spec_from_pb};
use super::entries::audit;
use super::pb;
use super::service::{AdminService, Caller};
use super::status::AdminError;
use crate::server::datastore::{BatchRefusal, DataStoreError};
use crate::server::entry::EntrySpec;

/// Most entries one batch call may carry.
pub const MAX_BATCH_ENTRIES: usize = 10_000;
/// Largest batch request, encoded: half the admin API's message limit, so that the reply
/// (the same entries with their IDs, revisions and times) fits in that limit too.
pub const MAX_BATCH_BYTES: usize = super::MAX_MESSAGE_BYTES / 2;

fn error(index: usize, spiffe_id: &str, entry_id: &str, message: String) -> pb::BatchEntryError {
    pb::BatchEntryError {
        index: u32::try_from(index).unwrap_or(u32::MAX),
        spiffe_id: spiffe_id.to_owned(),
        entry_id: entry_id.to_owned(),
        message,
    }
}

fn refused(errors: Vec<pb::BatchEntryError>) -> pb::BatchEntriesResponse {
    pb::BatchEntriesResponse { entries: Vec::new(), errors }
}

/// The message of a datastore refusal, as a single call would word it.
fn refusal_message(error: DataStoreError) -> String {
    match error {
        DataStoreError::DuplicateEntry(id) => AdminError::DuplicateEntry(id).to_string(),
        DataStoreError::NotFound { id, .. } => AdminError::EntryNotFound(id).to_string(),
        other => other.to_string(),
    }
}

/// Refuses an empty or oversized batch before any entry is looked at.
fn check_size(count: usize, bytes: usize) -> Result<(), AdminError> {
    if count == 0 {
        return Err(AdminError::EmptyBatch);
    }
    if count > MAX_BATCH_ENTRIES {
        return Err(AdminError::BatchTooLarge { given: count, max: MAX_BATCH_ENTRIES });
    }
    if bytes > MAX_BATCH_BYTES {
        return Err(AdminError::BatchTooBig { given: bytes, max: MAX_BATCH_BYTES });
    }
    Ok(())
}

/// What makes two entries the same one: SPIFFE ID, parent ID and selectors.
fn identity(spec: &EntrySpec) -> (String, String, Vec<String>) {
    let selectors = spec.selectors.iter().map(ToString::to_string).collect();
    (spec.spiffe_id.to_string(), spec.parent_id.to_string(), selectors)
}

impl AdminService {
    /// Checks every spec on its own and against the earlier ones of the batch.
    fn check_batch(
        &self,
        wire: Vec<pb::EntrySpec>,
    ) -> (Vec<(String, EntrySpec)>, Vec<pb::BatchEntryError>) {
        let cap = self.ca.max_svid_ttl();
        let mut errors = Vec::new();
        let mut specs = Vec::with_capacity(wire.len());
        let mut first_of = HashMap::new();
        for (index, w) in wire.into_iter().enumerate() {
            let given = w.spiffe_id.clone();
            let checked = spec_from_pb(Some(w)).and_then(|spec| {
                spec.check(&self.trust_domain, cap)?;
                Ok(spec)
            });
            match checked {
                Ok(spec) => {
                    if let Some(first) = first_of.insert(identity(&spec), index) {
                        let message = format!(
                            "the same SPIFFE ID, parent ID and selectors as entry #{first} of \
                             this batch; keep one of them"
                        );
                        errors.push(error(index, &given, "", message));
                    }
                    specs.push((given, spec));
                }
                Err(e) => errors.push(error(index, &given, "", e.to_string())),
            }
        }
        (specs, errors)
    }

    /// For each spec, whether its parent does not exist yet; each parent is looked up once.
    fn missing_parents(&self, specs: &[EntrySpec]) -> Result<Vec<bool>, AdminError> {
        let in_batch: HashSet<&SpiffeId> = specs.iter().map(|s| &s.spiffe_id).collect();
        let mut exists: HashMap<&SpiffeId, bool> = HashMap::new();
        let mut missing = Vec::with_capacity(specs.len());
        for spec in specs {
            let parent = &spec.parent_id;
            let found = match exists.get(parent) {
                Some(found) => *found,
                None => {
                    let found = in_batch.contains(parent) || self.parent_exists(parent)?;
                    exists.insert(parent, found);
                    found
                }
            };
            missing.push(!found);
        }
        Ok(missing)
    }

    /// Creates every entry of the batch, or none; see the module documentation.
    pub(super) fn batch_create_entries(
        &self,
        req: pb::BatchCreateEntriesRequest,
        caller: Caller,
    ) -> Result<pb::BatchEntriesResponse, AdminError> {
        check_size(req.specs.len(), req.encoded_len())?;
        let (checked, errors) = self.check_batch(req.specs);
        if !errors.is_empty() {
            return Ok(refused(errors));
        }
        let (given, specs): (Vec<String>, Vec<EntrySpec>) = checked.into_iter().unzip();
        let missing = self.missing_parents(&specs)?;
        let created = match self.store.create_entries(&specs, self.clock.now()) {
            Ok(created) => created,
            Err(DataStoreError::BatchRefused(list)) => {
                let errors = list.into_iter().map(|BatchRefusal { index, error: e }| {
                    let spiffe_id = given.get(index).map_or("", String::as_str);
                    error(index, spiffe_id, "", refusal_message(e))
                });
                return Ok(refused(errors.collect()));
            }
            Err(e) => return Err(e.into()),
        };
        let entries = created
            .iter()
            .zip(missing)
            .map(|(entry, parent_missing)| {
                audit("create", entry, caller);
                pb::Entry { parent_missing, ..entry_to_pb(entry) }
            })
            .collect();
        self.count_entries_gauge();
        Ok(pb::BatchEntriesResponse { entries, errors: Vec::new() })
    }

    /// Deletes every entry of the batch, or none; see the module documentation.
    pub(super) fn batch_delete_entries(
        &self,
        req: pb::BatchDeleteEntriesRequest,
        caller: Caller,
    ) -> Result<pb::BatchEntriesResponse, AdminError> {
        check_size(req.ids.len(), req.encoded_len())?;
        let mut errors = Vec::new();
        let mut first_of = HashMap::new();
        for (index, id) in req.ids.iter().enumerate() {
            if id.is_empty() {
                errors.push(error(index, "", id, AdminError::MissingField("id").to_string()));
            } else if let Some(first) = first_of.insert(id.as_str(), index) {
                let message = format!("entry ID listed twice, also as #{first}; list it once");
                errors.push(error(index, "", id, message));
            }
        }
        if !errors.is_empty() {
            return Ok(refused(errors));
        }
        let deleted = match self.store.delete_entries(&req.ids) {
            Ok(deleted) => deleted,
            Err(DataStoreError::BatchRefused(list)) => {
                let errors = list.into_iter().map(|BatchRefusal { index, error: e }| {
                    let id = req.ids.get(index).map_or("", String::as_str);
                    error(index, "", id, refusal_message(e))
                });
                return Ok(refused(errors.collect()));
            }
            Err(e) => return Err(e.into()),
        };
        let entries = deleted
            .iter()
            .map(|entry| {
                audit("delete", entry, caller);
                entry_to_pb(entry)
            })
            .collect();
        self.count_entries_gauge();
        Ok(pb::BatchEntriesResponse { entries, errors: Vec::new() })
    }
}

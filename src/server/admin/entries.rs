//! Registration entry calls: checks (trust domain, parent), changes, audit events, gauges.

use keycard_workload_api::SpiffeId;

use super::convert::entry_to_pb;
use super::pb;
use super::service::{AdminService, Caller};
use super::status::AdminError;
use crate::server::datastore::{DataStoreError, EntryFilter, PageRequest};
use crate::server::entry::{Entry, EntrySpec};
use crate::telemetry::AUDIT_TARGET;

/// Turns a datastore "no such entry" into the admin error that names the fix.
fn entry_not_found(id: &str) -> impl FnOnce(DataStoreError) -> AdminError {
    let id = id.to_owned();
    move |e| match e {
        DataStoreError::NotFound { .. } => AdminError::EntryNotFound(id),
        other => other.into(),
    }
}

pub(super) fn audit(action: &str, entry: &Entry, caller: Caller) {
    tracing::info!(
        target: AUDIT_TARGET,
        event = "entry_change",
        action,
        entry_id = %entry.id,
        spiffe_id = %entry.spec.spiffe_id,
        parent_id = %entry.spec.parent_id,
        selectors = %entry.spec.selectors,
        revision = entry.revision,
        caller_uid = caller,
    );
}

impl AdminService {
    /// Whether the parent exists yet: the server, an agent, an agent ID reserved by an
    /// unexpired unused join token, or the SPIFFE ID of an existing entry. A parent that
    /// does not exist yet is allowed (as in SPIRE: declarative registration writes entries
    /// before their nodes join); the reply says so and the CLI warns.
    pub(super) fn parent_exists(&self, parent: &SpiffeId) -> Result<bool, AdminError> {
        Ok(*parent == self.server_id
            || self.store.get_agent(parent)?.is_some()
            || self.store.join_token_reserves(parent, self.clock.now())?
            || self.store.entry_with_spiffe_id_exists(parent)?)
    }

    /// Checks the entry's own rules; returns whether its parent exists yet.
    fn check_spec(&self, spec: &EntrySpec) -> Result<bool, AdminError> {
        spec.check(&self.trust_domain, self.ca.max_svid_ttl())?;
        self.parent_exists(&spec.parent_id)
    }

    /// Refreshes the `entries` gauge; a failure only leaves the gauge stale.
    pub(super) fn count_entries_gauge(&self) {
        match self.store.count_entries() {
            Ok(n) => {
                self.metrics.entries.set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            Err(e) => tracing::warn!(error = %e, "could not count entries for the gauge"),
        }
    }

    pub(super) fn create_entry(
        &self,
        spec: &EntrySpec,
        caller: Caller,
    ) -> Result<pb::Entry, AdminError> {
        let parent_exists = self.check_spec(spec)?;
        let entry = self.store.create_entry(spec, self.clock.now())?;
        audit("create", &entry, caller);
        self.count_entries_gauge();
        Ok(pb::Entry { parent_missing: !parent_exists, ..entry_to_pb(&entry) })
    }

    pub(super) fn get_entry(&self, id: &str) -> Result<pb::Entry, AdminError> {
        if id.is_empty() {
            return Err(AdminError::MissingField("id"));
        }
        let entry =
            self.store.get_entry(id)?.ok_or_else(|| AdminError::EntryNotFound(id.into()))?;
        Ok(entry_to_pb(&entry))
    }

    pub(super) fn update_entry(
        &self,
        id: &str,
        spec: &EntrySpec,
        caller: Caller,
    ) -> Result<pb::Entry, AdminError> {
        if id.is_empty() {
            return Err(AdminError::MissingField("id"));
        }
        let parent_exists = self.check_spec(spec)?;
        let entry =
            self.store.update_entry(id, spec, self.clock.now()).map_err(entry_not_found(id))?;
        audit("update", &entry, caller);
        Ok(pb::Entry { parent_missing: !parent_exists, ..entry_to_pb(&entry) })
    }

    pub(super) fn delete_entry(&self, id: &str, caller: Caller) -> Result<pb::Entry, AdminError> {
        if id.is_empty() {
            return Err(AdminError::MissingField("id"));
        }
        let entry = self.store.delete_entry(id).map_err(entry_not_found(id))?;
        audit("delete", &entry, caller);
        self.count_entries_gauge();
        Ok(entry_to_pb(&entry))
    }

    pub(super) fn list_entries(
        &self,
        filter: &EntryFilter,
        page: &PageRequest,
    ) -> Result<pb::ListEntriesResponse, AdminError> {
        let page = self.store.list_entries(filter, page)?;
        Ok(pb::ListEntriesResponse {
            entries: page.items.iter().map(entry_to_pb).collect(),
            next_page_token: page.next_token.unwrap_or_default(),
        })
    }
}

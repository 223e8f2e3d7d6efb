//! The operator's commands on the authorities: prepare, activate, taint, revoke. Each is
//! one change (see the locking notes of [`super`]): saved to the journal, then swapped in,
//! then audited.

use super::{AuthorityKind, CaError, CaManager};

impl CaManager {
    /// Prepares a new authority of `kind` by hand; returns its ID.
    pub fn prepare(&self, kind: AuthorityKind) -> Result<String, CaError> {
        let now = self.clock.now();
        let changing = self.begin_change();
        let mut next = self.journal();
        if let Some(p) = next.set(kind).prepared() {
            return Err(crate::ca::journal::JournalError::AlreadyPrepared(p.id.clone()).into());
        }
        let (record, authority) = self.create(kind, now)?;
        let id = record.id.clone();
        next.set_mut(kind).add(record)?;
        next.bundle_sequence += 1;
        self.commit(kind, next, Some(authority), &[])?;
        drop(changing);
        self.audit_slots(kind, "prepare");
        Ok(id)
    }

    /// Activates the prepared authority `id` by hand, after its self-test.
    pub fn activate(&self, kind: AuthorityKind, id: &str) -> Result<(), CaError> {
        let now = self.clock.now();
        let changing = self.begin_change();
        let mut next = self.journal();
        next.set_mut(kind).activate(kind, id)?;
        self.self_test(&self.read(), kind, id, now)?;
        self.commit(kind, next, None, &[])?;
        drop(changing);
        self.audit_slots(kind, "activate");
        Ok(())
    }

    /// Taints the old authority `id`: agents renew what it signed early.
    pub fn taint(&self, kind: AuthorityKind, id: &str) -> Result<(), CaError> {
        let changing = self.begin_change();
        let mut next = self.journal();
        next.set_mut(kind).taint(kind, id)?;
        next.bundle_sequence += 1;
        self.commit(kind, next, None, &[])?;
        drop(changing);
        self.audit_slots(kind, "taint");
        Ok(())
    }

    /// Revokes the tainted, non-active authority `id`: it leaves the bundle for good.
    pub fn revoke(&self, kind: AuthorityKind, id: &str) -> Result<(), CaError> {
        let changing = self.begin_change();
        let mut next = self.journal();
        let record = next.set_mut(kind).revoke(kind, id)?;
        next.bundle_sequence += 1;
        self.commit(kind, next, None, &[record])?;
        drop(changing);
        self.audit_slots(kind, "revoke");
        Ok(())
    }
}

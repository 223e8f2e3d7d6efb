//! The rotation schedule of the [`CaManager`]: when to make, self-test and activate the
//! next authority, and when old ones leave the bundle (see the manager's module docs).

use std::sync::Arc;
use std::time::SystemTime;

use super::journal::{AuthorityKind, AuthorityRecord, SlotState, unix_ms};
use super::jwt_authority::{JwtAuthority, new_kid};
use super::manager::{CaManager, Loaded, State, kind_name, missing};
use super::selftest;
use super::{AuthorityOptions, CaError, KeyId, X509Authority};

impl CaManager {
    /// Runs the rotation schedule for both kinds; returns whether anything changed.
    pub fn rotate(&self) -> Result<bool, CaError> {
        let mut changed = false;
        for kind in [AuthorityKind::X509, AuthorityKind::Jwt] {
            changed |= self.rotate_kind(kind)?;
        }
        Ok(changed)
    }

    fn rotate_kind(&self, kind: AuthorityKind) -> Result<bool, CaError> {
        let now = self.clock.now();
        let changing = self.begin_change();
        let current = self.journal();
        let mut next = current.clone();
        let mut bundle_changed = false;
        let mut removed = Vec::new();
        let active = next.set(kind).active().cloned();
        let expired = active.as_ref().is_none_or(|a| a.not_after() <= now);
        let mut new_authority = None;
        if expired {
            // Nothing can sign: activate the prepared authority if it is still good, or
            // make a new one and activate it at once.
            if let Some(old) = &active {
                tracing::warn!(target: "keycard::audit", event = "authority_expired",
                    kind = ?kind, id = %old.id, "active authority expired; replacing it now");
            }
            let prepared = next.set(kind).prepared().cloned();
            let successor = match prepared {
                Some(p) if p.not_after() > now => p.id,
                stale => {
                    if let Some(stale) = stale {
                        let set = next.set_mut(kind);
                        set.records.retain(|r| r.id != stale.id);
                        removed.push(stale);
                    }
                    let (record, authority) = self.create(kind, now)?;
                    let id = record.id.clone();
                    next.set_mut(kind).add(record)?;
                    new_authority = Some(authority);
                    id
                }
            };
            if next.set(kind).active().map(|a| &a.id) != Some(&successor) {
                next.set_mut(kind).activate(kind, &successor)?;
            }
            bundle_changed = true;
        } else if let Some(active) = active {
            if next.set(kind).prepared().is_none() && now >= active.prepare_at() {
                let (record, authority) = self.create(kind, now)?;
                next.set_mut(kind).add(record)?;
                new_authority = Some(authority);
                bundle_changed = true;
            } else if let Some(prepared) = next.set(kind).prepared().cloned()
                && now >= active.activate_at()
            {
                self.self_test(&self.read(), kind, &prepared.id, now)?;
                next.set_mut(kind).activate(kind, &prepared.id)?;
            }
        }
        let pruned = next.set_mut(kind).prune_expired(now);
        bundle_changed |= !pruned.is_empty();
        removed.extend(pruned);
        if next == current {
            return Ok(false);
        }
        if bundle_changed {
            next.bundle_sequence += 1;
        }
        self.commit(kind, next, new_authority, &removed)?;
        drop(changing);
        self.audit_slots(kind, "rotation");
        Ok(true)
    }

    /// Makes a new authority of `kind` (not yet in the journal).
    pub(super) fn create(
        &self,
        kind: AuthorityKind,
        now: SystemTime,
    ) -> Result<(AuthorityRecord, Loaded), CaError> {
        let key_id = KeyId::new(&format!("{}-{}", kind_name(kind), new_kid().to_lowercase()))?;
        match kind {
            AuthorityKind::X509 => {
                let key = self.keys.generate(&key_id, self.config.x509_key_type)?;
                let opts = AuthorityOptions {
                    backdate: self.config.backdate,
                    ..AuthorityOptions::new(self.config.trust_domain.clone(), self.config.ca_ttl)
                };
                let authority = match &self.config.upstream {
                    None => X509Authority::self_signed(&opts, key, self.clock.as_ref())?,
                    Some(up) => {
                        X509Authority::signed_by_upstream(&opts, key, up, self.clock.as_ref())?
                    }
                };
                let id = hex::encode(authority.subject_key_id().unwrap_or_default());
                let record = AuthorityRecord {
                    id: id.clone(),
                    key_id: key_id.as_str().to_owned(),
                    state: SlotState::Prepared,
                    tainted: false,
                    issued_at_ms: unix_ms(now),
                    not_after_ms: unix_ms(authority.not_after()),
                    public_der: authority.certificate().to_vec(),
                    upstream_chain: authority.upstream_chain().iter().map(|c| c.to_vec()).collect(),
                };
                Ok((record, Loaded::X509(id, Arc::new(authority))))
            }
            AuthorityKind::Jwt => {
                let key = self.keys.generate(&key_id, self.config.jwt_key_type)?;
                let kid = new_kid();
                let not_after = now + self.config.ca_ttl;
                let td = self.config.trust_domain.clone();
                let authority = JwtAuthority::new(td, kid.clone(), key.clone(), now, not_after)?;
                let record = AuthorityRecord {
                    id: kid.clone(),
                    key_id: key_id.as_str().to_owned(),
                    state: SlotState::Prepared,
                    tainted: false,
                    issued_at_ms: unix_ms(now),
                    not_after_ms: unix_ms(not_after),
                    public_der: key.public_key_der(),
                    upstream_chain: Vec::new(),
                };
                Ok((record, Loaded::Jwt(kid, Arc::new(authority))))
            }
        }
    }

    pub(super) fn self_test(
        &self,
        state: &State,
        kind: AuthorityKind,
        id: &str,
        now: SystemTime,
    ) -> Result<(), CaError> {
        match kind {
            AuthorityKind::X509 => {
                let authority = state.x509.get(id).ok_or_else(|| missing(kind, id))?;
                let bundle = self.x509_bundle_of(&state.journal);
                selftest::x509(authority, &bundle, self.clock.as_ref())
            }
            AuthorityKind::Jwt => {
                let authority = state.jwt.get(id).ok_or_else(|| missing(kind, id))?;
                selftest::jwt(authority, now)
            }
        }
    }
}

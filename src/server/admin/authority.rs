//! CA calls: the bundle, the authorities (show, prepare, activate, taint, revoke) and health.
//!
//! The CA manager saves each authority change to its journal and emits the audit event
//! itself, so these calls add none of their own.

use crate::ca::{AuthorityKind, AuthorityStatus};
use crate::telemetry::metrics::AuthorityLabels;

use super::convert::authority_to_pb;
use super::pb;
use super::service::AdminService;
use super::status::AdminError;

fn kind_label(kind: AuthorityKind) -> &'static str {
    match kind {
        AuthorityKind::X509 => "x509",
        AuthorityKind::Jwt => "jwt",
    }
}

impl AdminService {
    pub(super) fn get_bundle(
        &self,
        format: pb::BundleFormat,
    ) -> Result<pb::GetBundleResponse, AdminError> {
        let bundle = self.ca.bundle()?;
        let text = match format {
            pb::BundleFormat::Pem => {
                bundle.x509_bundle().map_err(|e| AdminError::Bundle(e.to_string()))?.to_pem()
            }
            pb::BundleFormat::Spiffe => {
                bundle.to_json().map_err(|e| AdminError::Bundle(e.to_string()))?
            }
            pb::BundleFormat::Unspecified => return Err(AdminError::MissingBundleFormat),
        };
        Ok(pb::GetBundleResponse {
            format: format.into(),
            trust_domain: self.trust_domain.to_string(),
            text,
            sequence: bundle.sequence.unwrap_or_default(),
        })
    }

    pub(super) fn list_authorities(
        &self,
        kind: AuthorityKind,
    ) -> Result<pb::ListAuthoritiesResponse, AdminError> {
        let own = &self.cluster.server_id;
        let mut authorities: Vec<pb::Authority> =
            self.ca.authorities(kind).iter().map(|a| authority_to_pb(a, own)).collect();
        let peers = self.ca.peers();
        for (server, journal) in &peers.journals {
            for r in &journal.set(kind).records {
                authorities.push(authority_to_pb(&status_of(kind, r), server));
            }
        }
        Ok(pb::ListAuthoritiesResponse { authorities })
    }

    /// The current status of authority `id` (this server's, or a peer's) and its owner,
    /// or the journal's "unknown" error.
    fn authority(&self, kind: AuthorityKind, id: &str) -> Result<pb::Authority, AdminError> {
        if let Some(own) = self.ca.authorities(kind).into_iter().find(|a| a.id == id) {
            return Ok(authority_to_pb(&own, &self.cluster.server_id));
        }
        let peers = self.ca.peers();
        let peer = peers.journals.iter().find_map(|(s, j)| Some((s, j.set(kind).get(id)?)));
        peer.map(|(server, r)| authority_to_pb(&status_of(kind, r), server)).ok_or_else(|| {
            AdminError::Ca(crate::ca::journal::JournalError::Unknown { kind, id: id.into() }.into())
        })
    }

    fn require_id(id: &str) -> Result<(), AdminError> {
        if id.is_empty() { Err(AdminError::MissingField("id")) } else { Ok(()) }
    }

    pub(super) fn prepare_authority(
        &self,
        kind: AuthorityKind,
    ) -> Result<pb::Authority, AdminError> {
        let id = self.ca.prepare(kind)?;
        self.authority(kind, &id)
    }

    pub(super) fn activate_authority(
        &self,
        kind: AuthorityKind,
        id: &str,
    ) -> Result<pb::Authority, AdminError> {
        Self::require_id(id)?;
        self.ca.activate(kind, id)?;
        self.metrics
            .rotations
            .get_or_create(&AuthorityLabels { kind: kind_label(kind).into() })
            .inc();
        self.authority(kind, id)
    }

    pub(super) fn taint_authority(
        &self,
        kind: AuthorityKind,
        id: &str,
    ) -> Result<pb::Authority, AdminError> {
        Self::require_id(id)?;
        self.cluster.taint(kind, id)?;
        self.authority(kind, id)
    }

    pub(super) fn revoke_authority(
        &self,
        kind: AuthorityKind,
        id: &str,
    ) -> Result<pb::RevokeAuthorityResponse, AdminError> {
        Self::require_id(id)?;
        let before = self.authority(kind, id)?;
        self.cluster.revoke(kind, id)?;
        Ok(pb::RevokeAuthorityResponse { authority: Some(before) })
    }

    /// Healthy when the datastore answers reads and takes writes ([`super::probe`]) and
    /// both kinds of authority have an active one.
    pub(super) fn health(&self) -> pb::HealthResponse {
        let datastore_error = match self.store.ping() {
            Ok(()) => match super::probe::probe_write(self.store.as_ref()) {
                Ok(()) => String::new(),
                Err(e) => {
                    tracing::error!(error = %e, "datastore write probe failed: writes fail");
                    format!("reads work but writes fail: {e}")
                }
            },
            Err(e) => e.to_string(),
        };
        let active = |kind| {
            self.ca
                .authorities(kind)
                .into_iter()
                .find(|a| a.state == crate::ca::SlotState::Active)
                .map(|a| a.id)
                .unwrap_or_default()
        };
        let active_x509_authority = active(AuthorityKind::X509);
        let active_jwt_authority = active(AuthorityKind::Jwt);
        pb::HealthResponse {
            healthy: datastore_error.is_empty()
                && !active_x509_authority.is_empty()
                && !active_jwt_authority.is_empty(),
            trust_domain: self.trust_domain.to_string(),
            datastore_error,
            active_x509_authority,
            active_jwt_authority,
            datastore_kind: self.cluster.datastore_kind().to_owned(),
            server_id: self.cluster.server_id.clone(),
            peers: self
                .cluster
                .peers()
                .into_iter()
                .map(|p| pb::ServerPeer {
                    id: p.id,
                    address: p.address,
                    last_seen_unix: crate::server::admin::convert::unix_secs(p.last_seen),
                    live: p.live,
                })
                .collect(),
        }
    }
}

/// An authority record of a peer's journal as operators see it.
fn status_of(kind: AuthorityKind, r: &crate::ca::journal::AuthorityRecord) -> AuthorityStatus {
    AuthorityStatus {
        kind,
        id: r.id.clone(),
        state: r.state,
        tainted: r.tainted,
        issued_at: r.issued_at(),
        not_after: r.not_after(),
    }
}

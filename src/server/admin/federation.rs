//! Federation calls: relationships with foreign trust domains' bundle endpoints, and the
//! foreign bundles held (fetched by a relationship, or set by an operator). Each change
//! is an audit event; agents receive the changed bundles within a second.

use keycard_workload_api::TrustDomain;
use keycard_workload_api::bundle_json::SpiffeBundle;

use super::convert::unix_secs;
use super::pb;
use super::service::{AdminService, Caller};
use super::status::AdminError;
use crate::server::datastore::{DataStoreError, EndpointProfile, FederationRecord};
use crate::server::federation::foreign::parse_bundle_input;
use crate::server::federation::relationship::{Relationship, RelationshipInput, foreign_domain};
use crate::telemetry::AUDIT_TARGET;

fn audit(action: &str, trust_domain: &TrustDomain, caller: Caller) {
    tracing::info!(target: AUDIT_TARGET, event = "federation_change", action,
        trust_domain = %trust_domain, caller_uid = caller);
}

/// No relationship with `td`.
fn no_relationship(td: &TrustDomain) -> AdminError {
    AdminError::ForeignNotFound {
        what: "federation relationship with",
        trust_domain: td.to_string(),
        list: "federation list",
    }
}

/// A datastore error, with "not found" said as [`no_relationship`].
fn relationship_not_found(td: &TrustDomain) -> impl FnOnce(DataStoreError) -> AdminError + '_ {
    move |e| match e {
        DataStoreError::NotFound { .. } => no_relationship(td),
        other => other.into(),
    }
}

/// The wire form of a stored foreign bundle; `federated`: a relationship keeps it fresh.
fn foreign_bundle_to_pb(
    td: &TrustDomain,
    json: &[u8],
    federated: bool,
) -> Result<pb::ForeignBundle, AdminError> {
    let bundle = SpiffeBundle::parse(td.clone(), json)
        .map_err(|e| AdminError::Bundle(format!("stored bundle of {td}: {e}")))?;
    Ok(pb::ForeignBundle {
        trust_domain: td.name().to_owned(),
        json: String::from_utf8_lossy(json).into_owned(),
        sequence: bundle.sequence.unwrap_or_default(),
        x509_authorities: bundle.x509_authorities.len() as u32,
        jwt_authorities: bundle.jwt_authorities.len() as u32,
        federated,
    })
}

impl AdminService {
    /// A foreign trust domain from a request field: valid, and not the server's own.
    pub(super) fn foreign_domain(&self, value: &str) -> Result<TrustDomain, AdminError> {
        Ok(foreign_domain(&self.trust_domain, value)?)
    }

    fn relationship(&self, req: &pb::FederationRequest) -> Result<Relationship, AdminError> {
        let input = RelationshipInput {
            trust_domain: &req.trust_domain,
            url: &req.bundle_endpoint_url,
            profile: &req.bundle_endpoint_profile,
            endpoint_id: &req.endpoint_spiffe_id,
            bundle: &req.trust_domain_bundle,
            ca_pem: &req.ca_pem,
        };
        Ok(Relationship::check(&self.trust_domain, &input)?)
    }

    fn json_of(bundle: &SpiffeBundle) -> Result<Vec<u8>, AdminError> {
        bundle.to_json().map(String::into_bytes).map_err(|e| AdminError::Bundle(e.to_string()))
    }

    pub(super) fn create_federation(
        &self,
        req: &pb::FederationRequest,
        caller: Caller,
    ) -> Result<pb::Federation, AdminError> {
        let rel = self.relationship(req)?;
        if let Some(refused) = rel.needs_bootstrap() {
            return Err(refused.into());
        }
        let bootstrap = rel.bootstrap_json()?;
        let record =
            FederationRecord::new(rel.trust_domain.clone(), rel.url, rel.profile, self.clock.now());
        self.store.create_federation(&record, bootstrap.as_deref()).map_err(|e| match e {
            DataStoreError::AlreadyExists { .. } => {
                AdminError::FederationExists(rel.trust_domain.to_string())
            }
            other => other.into(),
        })?;
        audit("create", &rel.trust_domain, caller);
        self.federation_to_pb(&record)
    }

    pub(super) fn update_federation(
        &self,
        req: &pb::FederationRequest,
        caller: Caller,
    ) -> Result<pb::Federation, AdminError> {
        let rel = self.relationship(req)?;
        let bootstrap = rel.bootstrap_json()?;
        let asked =
            FederationRecord::new(rel.trust_domain.clone(), rel.url, rel.profile, self.clock.now());
        let record = self
            .store
            .update_federation(&asked, bootstrap.as_deref())
            .map_err(relationship_not_found(&rel.trust_domain))?;
        audit("update", &rel.trust_domain, caller);
        self.federation_to_pb(&record)
    }

    pub(super) fn get_federation(&self, td: &str) -> Result<pb::Federation, AdminError> {
        let td = self.foreign_domain(td)?;
        let record = self.store.get_federation(&td)?.ok_or_else(|| no_relationship(&td))?;
        self.federation_to_pb(&record)
    }

    pub(super) fn list_federations(&self) -> Result<pb::ListFederationsResponse, AdminError> {
        let federations = self
            .store
            .list_federations()?
            .iter()
            .map(|r| self.federation_to_pb(r))
            .collect::<Result<_, _>>()?;
        Ok(pb::ListFederationsResponse { federations })
    }

    pub(super) fn delete_federation(
        &self,
        td: &str,
        caller: Caller,
    ) -> Result<pb::Federation, AdminError> {
        let td = self.foreign_domain(td)?;
        let mut reply = self.get_federation(td.name())?;
        self.store.delete_federation(&td).map_err(relationship_not_found(&td))?;
        audit("delete", &td, caller);
        reply.bundle_held = false;
        Ok(reply)
    }

    pub(super) fn set_foreign_bundle(
        &self,
        req: &pb::SetForeignBundleRequest,
        caller: Caller,
    ) -> Result<pb::ForeignBundle, AdminError> {
        let td = self.foreign_domain(&req.trust_domain)?;
        if req.bundle.is_empty() {
            return Err(AdminError::MissingField("bundle"));
        }
        let bundle = parse_bundle_input(&td, &req.bundle)?;
        let json = Self::json_of(&bundle)?;
        self.store.set_bundle(&td, &json)?;
        audit("set_bundle", &td, caller);
        foreign_bundle_to_pb(&td, &json, self.store.get_federation(&td)?.is_some())
    }

    pub(super) fn list_foreign_bundles(
        &self,
    ) -> Result<pb::ListForeignBundlesResponse, AdminError> {
        let federated: std::collections::BTreeSet<TrustDomain> =
            self.store.list_federations()?.into_iter().map(|r| r.trust_domain).collect();
        let bundles = self
            .store
            .list_bundles()?
            .iter()
            .map(|(td, json)| foreign_bundle_to_pb(td, json, federated.contains(td)))
            .collect::<Result<_, _>>()?;
        Ok(pb::ListForeignBundlesResponse { bundles })
    }

    pub(super) fn delete_foreign_bundle(
        &self,
        td: &str,
        caller: Caller,
    ) -> Result<pb::ForeignBundle, AdminError> {
        let td = self.foreign_domain(td)?;
        if self.store.get_federation(&td)?.is_some() {
            return Err(AdminError::BundleOfFederation(td.to_string()));
        }
        let not_found = || AdminError::ForeignNotFound {
            what: "foreign bundle of",
            trust_domain: td.to_string(),
            list: "bundle list",
        };
        let json = self.store.get_bundle(&td)?.ok_or_else(not_found)?;
        let reply = foreign_bundle_to_pb(&td, &json, false)?;
        if !self.store.delete_bundle(&td)? {
            return Err(not_found());
        }
        audit("delete_bundle", &td, caller);
        Ok(reply)
    }

    pub(super) fn federation_to_pb(
        &self,
        r: &FederationRecord,
    ) -> Result<pb::Federation, AdminError> {
        let held = self.store.get_bundle(&r.trust_domain)?;
        let bundle =
            held.as_deref().and_then(|j| SpiffeBundle::parse(r.trust_domain.clone(), j).ok());
        let (endpoint_spiffe_id, custom_ca) = match &r.profile {
            EndpointProfile::HttpsSpiffe { endpoint_id } => (endpoint_id.to_string(), false),
            EndpointProfile::HttpsWeb { ca_pem } => (String::new(), ca_pem.is_some()),
        };
        Ok(pb::Federation {
            trust_domain: r.trust_domain.name().to_owned(),
            bundle_endpoint_url: r.endpoint_url.clone(),
            bundle_endpoint_profile: r.profile.name().to_owned(),
            endpoint_spiffe_id,
            custom_ca,
            created_at: unix_secs(r.created_at),
            updated_at: unix_secs(r.updated_at),
            next_refresh_at: unix_secs(r.next_refresh_at),
            last_attempt_at: r.last_attempt_at.map_or(0, unix_secs),
            last_success_at: r.last_success_at.map_or(0, unix_secs),
            last_error: r.last_error.clone().unwrap_or_default(),
            bundle_held: bundle.is_some(),
            bundle_sequence: bundle.as_ref().and_then(|b| b.sequence).unwrap_or_default(),
            x509_authorities: bundle.as_ref().map_or(0, |b| b.x509_authorities.len() as u32),
            jwt_authorities: bundle.as_ref().map_or(0, |b| b.jwt_authorities.len() as u32),
        })
    }
}

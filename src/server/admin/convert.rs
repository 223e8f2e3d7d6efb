//! Conversions between the admin wire types and the server's own types.
//!
//! Inbound conversions parse (SPIFFE IDs, selectors) so that nothing unchecked reaches the
//! datastore; outbound ones only copy.

use std::time::{Duration, SystemTime};

use keycard_workload_api::SpiffeId;

use super::pb;
use super::status::AdminError;
use crate::ca::{AuthorityKind, AuthorityStatus, SlotState};
use crate::selector::{Selector, SelectorSet};
use crate::server::datastore::{AgentRecord, EntryFilter, PageRequest};
use crate::server::entry::{Entry, EntrySpec, JwtSvidBinding, parse_federates_with};

/// Seconds since the Unix epoch (negative before it).
pub fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Parses a required SPIFFE ID field.
pub fn parse_id(field: &'static str, value: &str) -> Result<SpiffeId, AdminError> {
    if value.is_empty() {
        return Err(AdminError::MissingField(field));
    }
    SpiffeId::parse(value).map_err(|source| AdminError::BadSpiffeId {
        field,
        value: value.to_owned(),
        source,
    })
}

/// Parses an optional SPIFFE ID field (empty means absent).
pub fn parse_optional_id(field: &'static str, value: &str) -> Result<Option<SpiffeId>, AdminError> {
    if value.is_empty() { Ok(None) } else { parse_id(field, value).map(Some) }
}

/// Parses selectors written `type:value`.
pub fn parse_selectors(items: &[String]) -> Result<SelectorSet, AdminError> {
    items.iter().map(|s| Selector::parse(s).map_err(AdminError::from)).collect()
}

fn ttl(seconds: u64) -> Option<Duration> {
    (seconds != 0).then(|| Duration::from_secs(seconds))
}

/// The entry specification in a request; the trust-domain rules are checked later.
pub fn spec_from_pb(spec: Option<pb::EntrySpec>) -> Result<EntrySpec, AdminError> {
    let spec = spec.ok_or(AdminError::MissingField("spec"))?;
    Ok(EntrySpec {
        spiffe_id: parse_id("spiffe_id", &spec.spiffe_id)?,
        parent_id: parse_id("parent_id", &spec.parent_id)?,
        selectors: parse_selectors(&spec.selectors)?,
        x509_ttl: ttl(spec.x509_ttl_seconds),
        jwt_ttl: ttl(spec.jwt_ttl_seconds),
        dns_names: spec.dns_names,
        hint: spec.hint,
        admin: spec.admin,
        jwt_svid_binding: JwtSvidBinding::parse(&spec.jwt_svid_binding)?,
        federates_with: parse_federates_with(&spec.federates_with)?,
    })
}

/// The wire form of an entry specification.
pub fn spec_to_pb(spec: &EntrySpec) -> pb::EntrySpec {
    pb::EntrySpec {
        spiffe_id: spec.spiffe_id.to_string(),
        parent_id: spec.parent_id.to_string(),
        selectors: spec.selectors.iter().map(Selector::to_string).collect(),
        x509_ttl_seconds: spec.x509_ttl.map_or(0, |d| d.as_secs()),
        jwt_ttl_seconds: spec.jwt_ttl.map_or(0, |d| d.as_secs()),
        dns_names: spec.dns_names.clone(),
        hint: spec.hint.clone(),
        admin: spec.admin,
        jwt_svid_binding: spec.jwt_svid_binding.as_str().to_owned(),
        federates_with: spec.federates_with.iter().map(|td| td.name().to_owned()).collect(),
    }
}

/// The wire form of a stored entry.
pub fn entry_to_pb(entry: &Entry) -> pb::Entry {
    pb::Entry {
        id: entry.id.clone(),
        spec: Some(spec_to_pb(&entry.spec)),
        revision: entry.revision,
        created_at: unix_secs(entry.created_at),
        updated_at: unix_secs(entry.updated_at),
        parent_missing: false,
    }
}

/// The filter of a list request.
pub fn filter_from_pb(req: &pb::ListEntriesRequest) -> Result<EntryFilter, AdminError> {
    Ok(EntryFilter {
        spiffe_id: parse_optional_id("by_spiffe_id", &req.by_spiffe_id)?,
        parent_id: parse_optional_id("by_parent_id", &req.by_parent_id)?,
        selectors: if req.by_selectors.is_empty() {
            None
        } else {
            Some(parse_selectors(&req.by_selectors)?)
        },
    })
}

/// The page of a list request.
pub fn page_request(size: u32, token: &str) -> PageRequest {
    PageRequest { token: (!token.is_empty()).then(|| token.to_owned()), size }
}

/// The wire form of an agent.
pub fn agent_to_pb(agent: &AgentRecord) -> pb::Agent {
    pb::Agent {
        id: agent.id.to_string(),
        attestation_type: agent.attestation_type.clone(),
        selectors: agent.selectors.iter().map(Selector::to_string).collect(),
        svid_serial: agent.svid_serial.clone(),
        svid_expires_at: unix_secs(agent.svid_expires_at),
        banned: agent.banned,
        can_reattest: agent.can_reattest,
        created_at: unix_secs(agent.created_at),
        updated_at: unix_secs(agent.updated_at),
    }
}

/// The authority kind of a request.
pub fn kind_from_pb(kind: i32) -> Result<AuthorityKind, AdminError> {
    match pb::AuthorityKind::try_from(kind) {
        Ok(pb::AuthorityKind::X509) => Ok(AuthorityKind::X509),
        Ok(pb::AuthorityKind::Jwt) => Ok(AuthorityKind::Jwt),
        _ => Err(AdminError::MissingAuthorityKind),
    }
}

fn kind_to_pb(kind: AuthorityKind) -> pb::AuthorityKind {
    match kind {
        AuthorityKind::X509 => pb::AuthorityKind::X509,
        AuthorityKind::Jwt => pb::AuthorityKind::Jwt,
    }
}

/// The wire form of an authority.
pub fn authority_to_pb(a: &AuthorityStatus, server_id: &str) -> pb::Authority {
    let state = match a.state {
        SlotState::Prepared => "prepared",
        SlotState::Active => "active",
        SlotState::Old => "old",
    };
    pb::Authority {
        kind: kind_to_pb(a.kind).into(),
        id: a.id.clone(),
        state: state.to_owned(),
        tainted: a.tainted,
        issued_at: unix_secs(a.issued_at),
        not_after: unix_secs(a.not_after),
        server_id: server_id.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire_spec() -> pb::EntrySpec {
        pb::EntrySpec {
            spiffe_id: "spiffe://example.org/web".into(),
            parent_id: "spiffe://example.org/keycard/server".into(),
            selectors: vec!["unix:uid:1000".into(), "unix:gid:1000".into()],
            x509_ttl_seconds: 3600,
            jwt_ttl_seconds: 0,
            dns_names: vec!["web.example.org".into()],
            hint: "h".into(),
            admin: true,
            jwt_svid_binding: "x509".into(),
            federates_with: vec!["spiffe://example.com".into(), "example.com".into()],
        }
    }

    #[test]
    fn entry_specs_round_trip_and_zero_ttl_means_default() {
        let spec = spec_from_pb(Some(wire_spec())).unwrap();
        assert_eq!(spec.x509_ttl, Some(Duration::from_secs(3600)));
        assert_eq!(spec.jwt_ttl, None);
        let back = spec_to_pb(&spec);
        assert_eq!(back.selectors, vec!["unix:gid:1000", "unix:uid:1000"]);
        assert_eq!(back.federates_with, vec!["example.com"], "one name, without spiffe://");
        assert_eq!(spec_from_pb(Some(back)).unwrap(), spec);
    }

    #[test]
    fn bad_fields_name_the_field() {
        assert!(matches!(spec_from_pb(None), Err(AdminError::MissingField("spec"))));
        let bad = pb::EntrySpec { parent_id: String::new(), ..wire_spec() };
        assert!(matches!(spec_from_pb(Some(bad)), Err(AdminError::MissingField("parent_id"))));
        let bad = pb::EntrySpec { spiffe_id: "http://x/y".into(), ..wire_spec() };
        let err = spec_from_pb(Some(bad)).unwrap_err();
        assert!(matches!(err, AdminError::BadSpiffeId { field: "spiffe_id", .. }), "{err}");
        let bad = pb::EntrySpec { selectors: vec!["unix".into()], ..wire_spec() };
        let err = spec_from_pb(Some(bad)).unwrap_err();
        assert!(err.to_string().contains("type:value"), "{err}");
        assert!(matches!(kind_from_pb(0), Err(AdminError::MissingAuthorityKind)));
    }

    #[test]
    fn times_are_unix_seconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(unix_secs(t), 1_700_000_000);
        assert_eq!(unix_secs(SystemTime::UNIX_EPOCH - Duration::from_secs(5)), -5);
        assert_eq!(page_request(5, "").token, None);
        assert_eq!(page_request(5, "t").token.as_deref(), Some("t"));
    }
}

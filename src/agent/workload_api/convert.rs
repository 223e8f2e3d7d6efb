//! Cache contents to Workload API messages.

use std::collections::HashMap;

use keycard_workload_api::proto::{X509svid, X509svidResponse};
use keycard_workload_api::{SpiffeBundle, TrustDomain};
use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use serde_json::{Map, Value as Json};
use tonic::Status;

use crate::agent::cache::{Snapshot, TrustBundle};

/// The bundle of a snapshot; a caller holding SVIDs always has one.
pub(super) fn bundle_of(snapshot: &Snapshot) -> Result<&TrustBundle, Status> {
    snapshot.bundle.as_deref().ok_or_else(|| Status::unavailable("no trust bundle yet"))
}

/// Whether two snapshots carry the same own and federated bundles (what the bundle
/// streams show).
pub(super) fn same_bundle(a: &Snapshot, b: &Snapshot) -> bool {
    a.same_bundles(b)
}

/// The key of a trust domain in bundle maps, own and federated alike, as the SPIFFE
/// Workload API specifies it: the trust domain's SPIFFE ID, `spiffe://<trust domain>`.
pub(super) fn td_key(td: &TrustDomain) -> String {
    td.id().to_string()
}

/// The X.509 bundles of the caller's federated trust domains, DER certificates
/// concatenated, by [`td_key`]. A foreign bundle without X.509 authorities (JWT only) is
/// left out: an empty value is not a bundle to clients (SPIRE's CLI refuses one).
pub(super) fn federated_x509(snapshot: &Snapshot) -> HashMap<String, Vec<u8>> {
    snapshot
        .federated
        .iter()
        .filter(|(_, b)| !b.x509.is_empty())
        .map(|(td, b)| (td_key(td), b.x509.to_der()))
        .collect()
}

/// Own and federated X.509 bundles (`FetchX509Bundles`).
pub(super) fn x509_bundles(snapshot: &Snapshot) -> Result<HashMap<String, Vec<u8>>, Status> {
    let own = bundle_of(snapshot)?;
    let mut bundles = federated_x509(snapshot);
    bundles.insert(td_key(own.x509.trust_domain()), own.x509.to_der());
    Ok(bundles)
}

/// Own and federated JWT bundles as JWKS documents (`FetchJWTBundles`).
pub(super) fn jwt_bundles(snapshot: &Snapshot) -> Result<HashMap<String, Vec<u8>>, Status> {
    let own = bundle_of(snapshot)?;
    let all = std::iter::once(own).chain(snapshot.federated.values().map(|b| &**b));
    let mut bundles = HashMap::new();
    for bundle in all {
        let json = SpiffeBundle::from_jwt_bundle(&bundle.jwt).to_json().map_err(|e| {
            tracing::error!(trust_domain = %bundle.jwt.trust_domain(), error = %e, "cannot write the JWT bundle");
            Status::internal("cannot write the JWT bundle")
        })?;
        bundles.insert(td_key(bundle.jwt.trust_domain()), json.into_bytes());
    }
    Ok(bundles)
}

/// The full `FetchX509SVID` message for a snapshot.
pub(super) fn x509_svid_response(snapshot: &Snapshot) -> Result<X509svidResponse, Status> {
    let bundle = bundle_of(snapshot)?.x509.to_der();
    let svids = snapshot
        .svids
        .iter()
        .map(|s| X509svid {
            spiffe_id: s.spiffe_id.to_string(),
            x509_svid: s.chain.iter().flat_map(|c| c.as_ref().iter().copied()).collect(),
            x509_svid_key: s.key_pkcs8_der().secret_pkcs8_der().to_vec(),
            bundle: bundle.clone(),
            hint: s.hint.to_string(),
        })
        .collect();
    Ok(X509svidResponse { svids, crl: Vec::new(), federated_bundles: federated_x509(snapshot) })
}

/// JWT claims as a protobuf `Struct`.
pub(super) fn claims_struct(claims: &Map<String, Json>) -> Struct {
    Struct { fields: claims.iter().map(|(k, v)| (k.clone(), json_value(v))).collect() }
}

fn json_value(v: &Json) -> Value {
    let kind = match v {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(items) => {
            Kind::ListValue(ListValue { values: items.iter().map(json_value).collect() })
        }
        Json::Object(map) => Kind::StructValue(claims_struct(map)),
    };
    Value { kind: Some(kind) }
}

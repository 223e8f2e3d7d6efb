//! Cache contents to Workload API messages.

use std::collections::HashMap;

use keycard_workload_api::proto::{X509svid, X509svidResponse};
use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use serde_json::{Map, Value as Json};
use tonic::Status;

use crate::agent::cache::{Snapshot, TrustBundle};

/// The bundle of a snapshot; a caller holding SVIDs always has one.
pub(super) fn bundle_of(snapshot: &Snapshot) -> Result<&TrustBundle, Status> {
    snapshot.bundle.as_deref().ok_or_else(|| Status::unavailable("no trust bundle yet"))
}

/// Whether two snapshots carry the same bundle (what the bundle streams show).
pub(super) fn same_bundle(a: &Snapshot, b: &Snapshot) -> bool {
    match (&a.bundle, &b.bundle) {
        (Some(x), Some(y)) => std::sync::Arc::ptr_eq(x, y) || x == y,
        (None, None) => true,
        _ => false,
    }
}

/// The key of a trust domain in bundle maps: `spiffe://<trust domain>`.
pub(super) fn td_key(bundle: &TrustBundle) -> String {
    format!("spiffe://{}", bundle.x509.trust_domain())
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
            hint: s.hint.clone(),
        })
        .collect();
    Ok(X509svidResponse { svids, crl: Vec::new(), federated_bundles: HashMap::new() })
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

//! Federated bundles in SDS names ([`render::secrets`] on a cache snapshot): a federated
//! trust domain ID the caller federates with, `ALL`, and the empty name list.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, SpiffeCertValidatorConfig,
};
use keycard_workload_api::{TrustDomain, X509Bundle};
use prost::Message as _;

use super::SdsConfig;
use super::render::{SPIFFE_VALIDATOR, secrets};
use crate::agent::cache::{FederatedBundles, Snapshot, SvidCache, TrustBundle, test_svid};
use crate::selector::{Selector, SelectorSet};
use crate::wire::proto as pb;

fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

fn foreign(name: &str) -> Arc<TrustBundle> {
    let ca = crate::ca::manager::test_ca(td(name));
    Arc::new(TrustBundle::of(&ca.bundle().unwrap()).unwrap())
}

/// The snapshot of a caller (uid 1) whose entry federates with example.com, on an agent
/// that holds example.com's and example.net's bundles.
fn snapshot() -> (Snapshot, Arc<TrustBundle>) {
    let ca = crate::ca::manager::test_ca(td("example.org"));
    let cache = SvidCache::new(Arc::new(crate::clock::SystemClock));
    let entry = pb::Entry {
        id: "e1".into(),
        spiffe_id: "spiffe://example.org/web".into(),
        selectors: vec!["unix:uid:1".into()],
        federates_with: vec!["example.com".into()],
        ..Default::default()
    };
    let entries = BTreeMap::from([("e1".to_string(), entry)]);
    let (com, net) = (foreign("example.com"), foreign("example.net"));
    let held: FederatedBundles =
        [(td("example.com"), com.clone()), (td("example.net"), net)].into_iter().collect();
    cache.set_synced(&entries, Some(&ca.bundle().unwrap()), &[], Some(held)).unwrap();
    let svid = test_svid(&ca, "e1", "spiffe://example.org/web", Duration::from_secs(600));
    cache.update_svids(vec![svid]).into_iter().for_each(|r| r.unwrap());
    let selectors: SelectorSet = [Selector::parse("unix:uid:1").unwrap()].into_iter().collect();
    let snapshot = cache.subscribe(selectors).borrow().clone();
    (snapshot, com)
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn validation(
    secret: &envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret,
) -> &CertificateValidationContext {
    match &secret.r#type {
        Some(Type::ValidationContext(v)) => v,
        other => panic!("not a validation context: {other:?}"),
    }
}

fn trusted_ca_pem(v: &CertificateValidationContext) -> String {
    match v.trusted_ca.as_ref().and_then(|d| d.specifier.as_ref()) {
        Some(Specifier::InlineBytes(b)) => String::from_utf8(b.clone()).unwrap(),
        other => panic!("no inline trusted_ca: {other:?}"),
    }
}

fn validator_domains(v: &CertificateValidationContext) -> Vec<String> {
    let custom = v.custom_validator_config.as_ref().expect("a custom validator");
    assert_eq!(custom.name, SPIFFE_VALIDATOR);
    let any = custom.typed_config.as_ref().unwrap();
    let config = SpiffeCertValidatorConfig::decode(any.value.as_slice()).unwrap();
    config.trust_domains.iter().map(|t| t.name.clone()).collect()
}

#[test]
fn a_federated_trust_domain_id_gives_its_bundle_only_to_callers_federating_with_it() {
    let (snapshot, com) = snapshot();
    let config = SdsConfig::default();
    let out = secrets(&config, &snapshot, &names(&["spiffe://example.com"]), true).unwrap();
    assert_eq!(out[0].name, "spiffe://example.com");
    let pem = trusted_ca_pem(validation(&out[0]));
    assert_eq!(X509Bundle::parse_pem(td("example.com"), &pem).unwrap(), com.x509);

    // Held by the agent, but not a domain this caller federates with.
    let err = secrets(&config, &snapshot, &names(&["spiffe://example.net"]), true).unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("spiffe://example.net"), "{err:?}");
}

#[test]
fn all_and_the_empty_name_list_include_the_federated_domains() {
    let (snapshot, _) = snapshot();
    let config = SdsConfig::default();
    let all = secrets(&config, &snapshot, &names(&["ALL"]), true).unwrap();
    assert_eq!(validator_domains(validation(&all[0])), ["example.com", "example.org"]);
    // An old Envoy: one trusted_ca holding both domains' roots.
    let old = secrets(&config, &snapshot, &names(&["ALL"]), false).unwrap();
    let pem = trusted_ca_pem(validation(&old[0]));
    assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 2, "{pem}");

    let everything = secrets(&config, &snapshot, &[], true).unwrap();
    let got: Vec<&str> = everything.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        got,
        [
            "ROOTCA",
            "ALL",
            "spiffe://example.com",
            "spiffe://example.org",
            "spiffe://example.org/web"
        ]
    );
    assert_eq!(validator_domains(validation(&everything[1])), ["example.com", "example.org"]);
}

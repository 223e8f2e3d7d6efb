//! What the agent sends Envoy for a set of resource names: cache contents as SDS
//! `Secret`s, named as SPIRE names them so existing Envoy and Istio configs work unchanged.
//!
//! | Resource name | Secret |
//! |---------------|--------|
//! | a SPIFFE ID the caller holds | `tls_certificate`: PEM chain and PKCS#8 PEM key |
//! | `default` (`default_svid_name`) | the same for the caller's first SVID |
//! | a trust domain ID (`spiffe://td`) | `validation_context.trusted_ca`: that domain's bundle, own or federated |
//! | `ROOTCA` (`default_bundle_name`) | the same for the agent's own trust domain |
//! | `ALL` (`default_all_bundles_name`) | the own and federated bundles in one `envoy.tls.cert_validator.spiffe` validator (or one `trusted_ca` for old Envoys) |
//!
//! An empty name list asks for everything the caller may have (all but the `default` alias).
//! The federated bundles a caller may have are those of the trust domains the entries of
//! its SVIDs federate with ([`Snapshot::federated`]).

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
use envoy_types::pb::envoy::config::core::v3::{DataSource, Node, TypedExtensionConfig};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::spiffe_cert_validator_config::TrustDomain as SpiffeTrustDomain;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, SpiffeCertValidatorConfig, TlsCertificate, secret,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::util::pack_any;
use keycard_workload_api::{SpiffeId, X509Bundle};
use tonic::Status;

use super::SdsConfig;
use crate::agent::cache::{Snapshot, WorkloadSvid};

/// The name of Envoy's SPIFFE certificate validator extension.
pub const SPIFFE_VALIDATOR: &str = "envoy.tls.cert_validator.spiffe";

/// The node metadata key that asks for plain `trusted_ca` instead of the SPIFFE validator.
pub const DISABLE_SPIFFE_VALIDATION: &str = "disable_spiffe_cert_validation";

/// Whether `ALL` is served as a SPIFFE validator config: not for an Envoy older than 1.17
/// (it has no such validator), nor when node metadata `disable_spiffe_cert_validation` is
/// true. A node that names no build version is taken as a current Envoy.
pub fn spiffe_validation(node: Option<&Node>) -> bool {
    let Some(node) = node else { return true };
    let disabled = node.metadata.as_ref().and_then(|m| m.fields.get(DISABLE_SPIFFE_VALIDATION));
    if let Some(Kind::BoolValue(true)) = disabled.and_then(|v| v.kind.as_ref()) {
        return false;
    }
    match &node.user_agent_version_type {
        Some(UserAgentVersionType::UserAgentBuildVersion(build)) => match &build.version {
            Some(v) => (v.major_number, v.minor_number) >= (1, 17),
            None => true,
        },
        _ => true,
    }
}

/// The X.509 bundles a caller may be sent, by trust domain name (no `spiffe://`): the own
/// bundle and those of the foreign trust domains the caller federates with (a foreign
/// bundle without X.509 authorities has nothing to validate with and is left out).
fn bundles(snapshot: &Snapshot) -> BTreeMap<String, &X509Bundle> {
    let mut map: BTreeMap<String, &X509Bundle> = snapshot
        .federated
        .iter()
        .filter(|(_, b)| !b.x509.is_empty())
        .map(|(td, b)| (td.name().to_owned(), &b.x509))
        .collect();
    if let Some(own) = snapshot.bundle.as_deref() {
        map.insert(own.x509.trust_domain().to_string(), &own.x509);
    }
    map
}

fn inline(bytes: Vec<u8>) -> Option<DataSource> {
    Some(DataSource { specifier: Some(Specifier::InlineBytes(bytes)), ..Default::default() })
}

fn tls_secret(name: &str, svid: &WorkloadSvid) -> Secret {
    let chain: String = svid
        .chain
        .iter()
        .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.as_ref().to_vec())))
        .collect();
    let key = pem::encode(&pem::Pem::new("PRIVATE KEY", svid.key_pkcs8_der().secret_pkcs8_der()));
    let cert = TlsCertificate {
        certificate_chain: inline(chain.into_bytes()),
        private_key: inline(key.into_bytes()),
        ..Default::default()
    };
    Secret { name: name.into(), r#type: Some(secret::Type::TlsCertificate(cert)) }
}

fn validation_secret(name: &str, context: CertificateValidationContext) -> Secret {
    Secret { name: name.into(), r#type: Some(secret::Type::ValidationContext(context)) }
}

fn trusted_ca<'a>(name: &str, bundles: impl IntoIterator<Item = &'a X509Bundle>) -> Secret {
    let pem: String = bundles.into_iter().map(X509Bundle::to_pem).collect();
    let context =
        CertificateValidationContext { trusted_ca: inline(pem.into_bytes()), ..Default::default() };
    validation_secret(name, context)
}

fn all_bundles(name: &str, bundles: &BTreeMap<String, &X509Bundle>, spiffe: bool) -> Secret {
    if !spiffe {
        return trusted_ca(name, bundles.values().copied());
    }
    let trust_domains = bundles
        .iter()
        .map(|(td, bundle)| SpiffeTrustDomain {
            name: td.clone(),
            trust_bundle: inline(bundle.to_pem().into_bytes()),
            ..Default::default()
        })
        .collect();
    let config = SpiffeCertValidatorConfig { trust_domains, trust_bundles: None };
    let context = CertificateValidationContext {
        custom_validator_config: Some(TypedExtensionConfig {
            name: SPIFFE_VALIDATOR.into(),
            typed_config: Some(pack_any(config)),
        }),
        ..Default::default()
    };
    validation_secret(name, context)
}

fn unknown(name: &str, config: &SdsConfig) -> Status {
    Status::invalid_argument(format!(
        "no secret named {name:?} for this caller: ask for a SPIFFE ID it holds, a trust \
         domain ID (spiffe://<trust domain>) it has a bundle for, {:?}, {:?} or {:?}",
        config.default_svid_name, config.default_bundle_name, config.default_all_bundles_name
    ))
}

/// The secrets `names` ask for (everything the caller may have when empty), in the order
/// asked; an error naming the first one the caller may not have.
pub fn secrets(
    config: &SdsConfig,
    snapshot: &Snapshot,
    names: &[String],
    spiffe: bool,
) -> Result<Vec<Secret>, Status> {
    let bundles = bundles(snapshot);
    let own = snapshot.bundle.as_deref().map(|b| &b.x509);
    if names.is_empty() {
        let mut out = Vec::new();
        if let Some(own) = own {
            out.push(trusted_ca(&config.default_bundle_name, [own]));
        }
        out.push(all_bundles(&config.default_all_bundles_name, &bundles, spiffe));
        for (td, bundle) in &bundles {
            out.push(trusted_ca(&format!("spiffe://{td}"), [*bundle]));
        }
        out.extend(snapshot.svids.iter().map(|s| tls_secret(s.spiffe_id.as_str(), s)));
        return Ok(out);
    }
    names
        .iter()
        .map(|name| {
            let n = name.as_str();
            if n == config.default_svid_name {
                return snapshot
                    .svids
                    .first()
                    .map(|s| tls_secret(n, s))
                    .ok_or_else(|| unknown(n, config));
            }
            if n == config.default_bundle_name {
                return own.map(|b| trusted_ca(n, [b])).ok_or_else(|| unknown(n, config));
            }
            if n == config.default_all_bundles_name {
                return Ok(all_bundles(n, &bundles, spiffe));
            }
            let id = SpiffeId::parse(n).map_err(|_| unknown(n, config))?;
            if id.path().is_empty() {
                return bundles
                    .get(id.trust_domain_name())
                    .map(|b| trusted_ca(n, [*b]))
                    .ok_or_else(|| unknown(n, config));
            }
            snapshot
                .svids
                .iter()
                .find(|s| s.spiffe_id == id)
                .map(|s| tls_secret(n, s))
                .ok_or_else(|| unknown(n, config))
        })
        .collect()
}

/// `secrets` packed as the `Any`s of a discovery response.
pub fn resources(secrets: Vec<Secret>) -> Vec<Any> {
    secrets.into_iter().map(pack_any).collect()
}

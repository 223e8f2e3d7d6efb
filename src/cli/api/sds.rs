//! `keycard api fetch sds --name NAME`: what the agent would send Envoy over SDS for these
//! resource names (all when none is given), decoded; private keys are never printed.

use std::io::Write;

use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, SpiffeCertValidatorConfig, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use prost::Message as _;
use serde_json::{Value, json};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::super::CliError;
use super::super::output::{OutputFormat, emit};
use crate::agent::sds::{render::SPIFFE_VALIDATOR, secret_type_url};

fn inline(d: &Option<DataSource>) -> Vec<u8> {
    match d.as_ref().and_then(|d| d.specifier.as_ref()) {
        Some(Specifier::InlineBytes(b)) => b.clone(),
        Some(Specifier::InlineString(s)) => s.clone().into_bytes(),
        _ => Vec::new(),
    }
}

/// One certificate of a PEM list: SPIFFE ID (or subject), serial, `notAfter`.
fn cert_json(der: &[u8]) -> Value {
    match X509Certificate::from_der(der) {
        Ok((_, c)) => {
            let uri = c.subject_alternative_name().ok().flatten().and_then(|san| {
                san.value.general_names.iter().find_map(|g| match g {
                    x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
                    _ => None,
                })
            });
            json!({
                "spiffe_id": uri,
                "subject": c.subject().to_string(),
                "serial": c.raw_serial_as_string(),
                "not_after": c.validity().not_after.to_string(),
            })
        }
        Err(e) => json!({ "error": e.to_string() }),
    }
}

fn pem_certs(bytes: &[u8]) -> Vec<Value> {
    pem::parse_many(bytes)
        .unwrap_or_default()
        .iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| cert_json(p.contents()))
        .collect()
}

fn validation_json(v: &CertificateValidationContext) -> Value {
    if let Some(custom) = &v.custom_validator_config {
        let config = custom
            .typed_config
            .as_ref()
            .filter(|_| custom.name == SPIFFE_VALIDATOR)
            .and_then(|any| SpiffeCertValidatorConfig::decode(any.value.as_slice()).ok());
        let domains: Vec<Value> = config
            .map(|c| c.trust_domains)
            .unwrap_or_default()
            .iter()
            .map(|td| json!({ "trust_domain": td.name, "cas": pem_certs(&inline(&td.trust_bundle)) }))
            .collect();
        return json!({ "validator": custom.name, "trust_domains": domains });
    }
    json!({ "trusted_ca": pem_certs(&inline(&v.trusted_ca)) })
}

fn secret_json(s: &Secret) -> Value {
    match &s.r#type {
        Some(secret::Type::TlsCertificate(t)) => json!({
            "name": s.name,
            "tls_certificate": {
                "chain": pem_certs(&inline(&t.certificate_chain)),
                "private_key": if inline(&t.private_key).is_empty() { "missing" } else { "PKCS#8 PEM (not shown)" },
            },
        }),
        Some(secret::Type::ValidationContext(v)) => {
            json!({ "name": s.name, "validation_context": validation_json(v) })
        }
        _ => json!({ "name": s.name, "other": true }),
    }
}

fn text(version: &str, secrets: &[Value]) -> String {
    let mut t = format!("SDS version {version}: {} secret(s)\n", secrets.len());
    for s in secrets {
        t += &format!("{}:\n", s["name"].as_str().unwrap_or_default());
        if let Some(tls) = s.get("tls_certificate") {
            for c in tls["chain"].as_array().into_iter().flatten() {
                let id =
                    c["spiffe_id"].as_str().unwrap_or_else(|| c["subject"].as_str().unwrap_or(""));
                t += &format!(
                    "  certificate {id} serial {} until {}\n",
                    c["serial"], c["not_after"]
                );
            }
            t += &format!("  private key: {}\n", tls["private_key"].as_str().unwrap_or_default());
        }
        if let Some(v) = s.get("validation_context") {
            if let Some(domains) = v["trust_domains"].as_array() {
                t += &format!("  SPIFFE validator ({})\n", v["validator"].as_str().unwrap_or(""));
                for d in domains {
                    let n = d["cas"].as_array().map_or(0, Vec::len);
                    t += &format!(
                        "  trust domain {}: {n} CA(s)\n",
                        d["trust_domain"].as_str().unwrap_or("")
                    );
                }
            } else {
                let n = v["trusted_ca"].as_array().map_or(0, Vec::len);
                t += &format!("  trusted_ca: {n} CA(s)\n");
            }
        }
    }
    t
}

/// Fetches `names` over SDS from the agent at `socket` and prints them decoded.
pub async fn fetch(
    socket: Option<&str>,
    names: Vec<String>,
    format: OutputFormat,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let path = keycard_workload_api::client::resolve_endpoint(socket)
        .map_err(|e| CliError::WorkloadApi(e.to_string()))?;
    let channel = keycard_workload_api::client::unix_channel(&path).await.map_err(|e| {
        CliError::WorkloadApi(format!(
            "cannot connect to the agent at {} ({e}): is it running? pass its socket with --socket",
            path.display()
        ))
    })?;
    let request = DiscoveryRequest {
        resource_names: names,
        type_url: secret_type_url(),
        ..Default::default()
    };
    let response = SecretDiscoveryServiceClient::new(channel)
        .fetch_secrets(request)
        .await
        .map_err(|s| CliError::WorkloadApi(format!("SDS FetchSecrets: {}", s.message())))?
        .into_inner();
    let secrets: Vec<Value> = response
        .resources
        .iter()
        .filter_map(|a| Secret::decode(a.value.as_slice()).ok())
        .map(|s| secret_json(&s))
        .collect();
    let version = response.version_info;
    emit(
        out,
        format,
        || text(&version, &secrets),
        || json!({ "version_info": version, "secrets": secrets }),
    )?;
    Ok(())
}

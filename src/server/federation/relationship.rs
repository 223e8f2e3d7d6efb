//! What makes a federation relationship acceptable, checked the same way whether an
//! operator asks through the admin API or declares it in the server config: a foreign
//! trust domain, an `https://` endpoint URL, and a profile with what it needs.

use keycard_workload_api::bundle_json::SpiffeBundle;
use keycard_workload_api::{SpiffeId, TrustDomain};

use super::fetch::EndpointUrl;
use super::fetch_tls::ClientTls;
use super::foreign::{BundleInputError, parse_bundle_input};
use crate::server::datastore::EndpointProfile;

/// Why a relationship was refused; every message names the field and the fix.
#[derive(Debug, thiserror::Error)]
pub enum RelationshipError {
    /// A required field is empty.
    #[error("{0} is required")]
    Missing(&'static str),
    /// A field's value is not acceptable (the message says why and what to give).
    #[error("{0}")]
    Invalid(String),
    /// The bootstrap bundle does not parse or holds nothing.
    #[error(transparent)]
    Bundle(#[from] BundleInputError),
}

/// A relationship as asked for, raw (the admin request's or the config table's fields).
#[derive(Debug, Default, Clone, Copy)]
pub struct RelationshipInput<'a> {
    /// Foreign trust domain (a name or a `spiffe://` ID without a path).
    pub trust_domain: &'a str,
    /// `https://host[:port][/path]`.
    pub url: &'a str,
    /// `https_spiffe` or `https_web`.
    pub profile: &'a str,
    /// https_spiffe: the endpoint's SPIFFE ID.
    pub endpoint_id: &'a str,
    /// The bootstrap bundle (SPIFFE JSON or PEM); empty: none given.
    pub bundle: &'a [u8],
    /// https_web: PEM CA certificates; empty: the system roots.
    pub ca_pem: &'a [u8],
}

/// A checked relationship.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relationship {
    /// The foreign trust domain.
    pub trust_domain: TrustDomain,
    /// Its bundle endpoint.
    pub url: String,
    /// How the endpoint authenticates.
    pub profile: EndpointProfile,
    /// The bundle to start from, if given.
    pub bootstrap: Option<SpiffeBundle>,
}

fn invalid(why: String) -> RelationshipError {
    RelationshipError::Invalid(why)
}

/// A foreign trust domain: valid, and not `own`.
pub fn foreign_domain(own: &TrustDomain, value: &str) -> Result<TrustDomain, RelationshipError> {
    if value.is_empty() {
        return Err(RelationshipError::Missing("trust_domain"));
    }
    let td = TrustDomain::new(value)
        .map_err(|e| invalid(format!("trust domain {value:?} is not valid: {e}")))?;
    if &td == own {
        return Err(invalid(format!(
            "{td} is this server's own trust domain; federation is with foreign ones"
        )));
    }
    Ok(td)
}

/// Checks a bundle endpoint URL by the rules the fetch client applies
/// ([`EndpointUrl::parse`]: `https://host[:port][/path]`, no credentials).
fn check_url(url: &str) -> Result<(), RelationshipError> {
    if url.is_empty() {
        return Err(RelationshipError::Missing("bundle_endpoint_url"));
    }
    EndpointUrl::parse(url).map(drop).map_err(|e| invalid(e.to_string()))
}

fn profile(
    input: &RelationshipInput<'_>,
    td: &TrustDomain,
) -> Result<EndpointProfile, RelationshipError> {
    match input.profile {
        "https_spiffe" => {
            if !input.ca_pem.is_empty() {
                return Err(invalid(
                    "a CA file is for the https_web profile; https_spiffe authenticates the \
                     endpoint with the trust domain's bundle"
                        .into(),
                ));
            }
            if input.endpoint_id.is_empty() {
                return Err(invalid(format!(
                    "the https_spiffe profile needs the endpoint's SPIFFE ID \
                     (--endpoint-spiffe-id; endpoint_spiffe_id in the config), for example \
                     spiffe://{td}/keycard/server"
                )));
            }
            let endpoint_id = SpiffeId::parse(input.endpoint_id).map_err(|e| {
                invalid(format!("endpoint SPIFFE ID {:?} is not valid: {e}", input.endpoint_id))
            })?;
            Ok(EndpointProfile::HttpsSpiffe { endpoint_id })
        }
        "https_web" => {
            if !input.endpoint_id.is_empty() {
                return Err(invalid(
                    "an endpoint SPIFFE ID is for the https_spiffe profile; https_web checks \
                     the endpoint's host name"
                        .into(),
                ));
            }
            if input.ca_pem.is_empty() {
                return Ok(EndpointProfile::HttpsWeb { ca_pem: None });
            }
            // The very trust store the fetch will build from it.
            ClientTls::web(Some(input.ca_pem)).map_err(|e| invalid(e.to_string()))?;
            Ok(EndpointProfile::HttpsWeb { ca_pem: Some(input.ca_pem.to_vec()) })
        }
        "" => Err(RelationshipError::Missing("bundle_endpoint_profile")),
        other => Err(invalid(format!(
            "bundle endpoint profile {other:?} is not known: use https_spiffe or https_web"
        ))),
    }
}

impl Relationship {
    /// Checks `input` for a server of trust domain `own`.
    pub fn check(
        own: &TrustDomain,
        input: &RelationshipInput<'_>,
    ) -> Result<Self, RelationshipError> {
        let trust_domain = foreign_domain(own, input.trust_domain)?;
        check_url(input.url)?;
        let bootstrap = match input.bundle.is_empty() {
            true => None,
            false => Some(parse_bundle_input(&trust_domain, input.bundle)?),
        };
        let profile = profile(input, &trust_domain)?;
        Ok(Self { trust_domain, url: input.url.to_owned(), profile, bootstrap })
    }

    /// The refusal of a new `https_spiffe` relationship without a bundle to authenticate
    /// its endpoint the first time, if that is the case.
    pub fn needs_bootstrap(&self) -> Option<RelationshipError> {
        let spiffe = matches!(self.profile, EndpointProfile::HttpsSpiffe { .. });
        (spiffe && self.bootstrap.is_none()).then(|| {
            invalid(format!(
                "the https_spiffe profile needs the bundle of {} to authenticate its endpoint the \
                 first time: give it with --trust-domain-bundle FILE (trust_domain_bundle in the \
                 config; SPIFFE bundle JSON or PEM, obtained out of band, for example from \
                 `keycard bundle show --format spiffe` on a server of that trust domain)",
                self.trust_domain
            ))
        })
    }

    /// The bootstrap bundle as stored (SPIFFE bundle JSON).
    pub fn bootstrap_json(&self) -> Result<Option<Vec<u8>>, RelationshipError> {
        self.bootstrap
            .as_ref()
            .map(|b| {
                b.to_json().map(String::into_bytes).map_err(|e| invalid(format!("bundle: {e}")))
            })
            .transpose()
    }
}

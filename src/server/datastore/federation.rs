//! What the datastore keeps for federation: relationships with foreign trust domains'
//! bundle endpoints, with their refresh state. The foreign bundles themselves live in the
//! `bundles` table ([`super::DataStore::get_bundle`]).

use std::fmt;
use std::time::SystemTime;

use keycard_workload_api::{SpiffeId, TrustDomain};

/// How a foreign bundle endpoint authenticates itself (SPIFFE Federation profiles).
#[derive(Clone, PartialEq, Eq)]
pub enum EndpointProfile {
    /// `https_spiffe`: the endpoint presents an X509-SVID with this SPIFFE ID, checked
    /// against the bundle held for the endpoint's trust domain.
    HttpsSpiffe {
        /// The SPIFFE ID the endpoint must present.
        endpoint_id: SpiffeId,
    },
    /// `https_web`: ordinary Web PKI server authentication.
    HttpsWeb {
        /// PEM CA certificates to trust instead of the system roots.
        ca_pem: Option<Vec<u8>>,
    },
}

impl EndpointProfile {
    /// The profile's name in the config, the CLI and the admin API.
    pub fn name(&self) -> &'static str {
        match self {
            Self::HttpsSpiffe { .. } => "https_spiffe",
            Self::HttpsWeb { .. } => "https_web",
        }
    }
}

impl fmt::Debug for EndpointProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HttpsSpiffe { endpoint_id } => write!(f, "https_spiffe({endpoint_id})"),
            Self::HttpsWeb { ca_pem: None } => f.write_str("https_web(system roots)"),
            Self::HttpsWeb { ca_pem: Some(pem) } => {
                write!(f, "https_web(CA file, {} B)", pem.len())
            }
        }
    }
}

/// A federation relationship as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederationRecord {
    /// The foreign trust domain.
    pub trust_domain: TrustDomain,
    /// Its bundle endpoint, `https://...`.
    pub endpoint_url: String,
    /// How the endpoint authenticates.
    pub profile: EndpointProfile,
    /// When the relationship was created.
    pub created_at: SystemTime,
    /// When it was last changed by an operator.
    pub updated_at: SystemTime,
    /// When the next fetch is due; a server claims it before fetching.
    pub next_refresh_at: SystemTime,
    /// The last fetch, whatever its outcome.
    pub last_attempt_at: Option<SystemTime>,
    /// The last fetch that brought a bundle.
    pub last_success_at: Option<SystemTime>,
    /// Why the last fetch failed; `None` after a success.
    pub last_error: Option<String>,
}

impl FederationRecord {
    /// A new relationship, due for a fetch at `now`.
    pub fn new(
        trust_domain: TrustDomain,
        endpoint_url: String,
        profile: EndpointProfile,
        now: SystemTime,
    ) -> Self {
        Self {
            trust_domain,
            endpoint_url,
            profile,
            created_at: now,
            updated_at: now,
            next_refresh_at: now,
            last_attempt_at: None,
            last_success_at: None,
            last_error: None,
        }
    }
}

/// What a fetch of a foreign bundle brought.
#[derive(Debug, Clone, Copy)]
pub enum RefreshOutcome<'a> {
    /// A bundle (SPIFFE bundle JSON), now the one held.
    Fetched(&'a [u8]),
    /// Nothing: the held bundle stays; the reason is kept for operators.
    Failed(&'a str),
}

/// A profile as its three columns: name, endpoint SPIFFE ID, CA PEM.
pub(super) fn profile_columns(
    profile: &EndpointProfile,
) -> (&'static str, Option<String>, Option<&[u8]>) {
    match profile {
        EndpointProfile::HttpsSpiffe { endpoint_id } => {
            (profile.name(), Some(endpoint_id.to_string()), None)
        }
        EndpointProfile::HttpsWeb { ca_pem } => (profile.name(), None, ca_pem.as_deref()),
    }
}

/// A profile back from its columns (`td` names the relationship in the error).
pub(super) fn profile_from_db(
    name: &str,
    endpoint_id: Option<String>,
    ca_pem: Option<Vec<u8>>,
    td: &str,
) -> Result<EndpointProfile, super::DataStoreError> {
    let corrupt = |what: String| {
        super::DataStoreError::Corrupt(format!("federation relationship {td}: {what}"))
    };
    match (name, endpoint_id) {
        ("https_spiffe", Some(id)) => Ok(EndpointProfile::HttpsSpiffe {
            endpoint_id: SpiffeId::parse(&id).map_err(|e| corrupt(format!("endpoint ID: {e}")))?,
        }),
        ("https_web", _) => Ok(EndpointProfile::HttpsWeb { ca_pem }),
        (other, _) => Err(corrupt(format!("profile {other:?} without what it needs"))),
    }
}

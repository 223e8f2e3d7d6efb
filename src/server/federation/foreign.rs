//! The foreign bundles the server holds, as agents receive them: read from the datastore
//! at most once a second (whatever the number of agents syncing), checked, and labelled
//! with a digest so that an agent that holds the same set is sent nothing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keycard_workload_api::TrustDomain;
use keycard_workload_api::bundle_json::SpiffeBundle;
use sha2::{Digest as _, Sha256};

use crate::server::datastore::{DataStore, DataStoreError};

/// How long a read of the foreign bundles serves syncs before the next read.
const FRESH_FOR: Duration = Duration::from_secs(1);

/// A bundle given by an operator or fetched: SPIFFE bundle JSON, or PEM certificates.
#[derive(Debug, thiserror::Error)]
pub enum BundleInputError {
    /// Neither form parsed.
    #[error(
        "the bundle of {trust_domain} is neither SPIFFE bundle JSON nor PEM certificates: {why}"
    )]
    Unreadable {
        /// The trust domain it was given for.
        trust_domain: TrustDomain,
        /// What the parser said.
        why: String,
    },
    /// A bundle without any authority would trust nothing.
    #[error("the bundle of {0} holds no X.509 or JWT authority")]
    Empty(TrustDomain),
}

/// Reads a bundle for `trust_domain` from SPIFFE bundle JSON (a document starting with
/// `{`) or from PEM certificates; refuses one with no authority.
pub fn parse_bundle_input(
    trust_domain: &TrustDomain,
    bytes: &[u8],
) -> Result<SpiffeBundle, BundleInputError> {
    let unreadable =
        |why: String| BundleInputError::Unreadable { trust_domain: trust_domain.clone(), why };
    let bundle = if bytes.trim_ascii_start().starts_with(b"{") {
        SpiffeBundle::parse(trust_domain.clone(), bytes).map_err(|e| unreadable(e.to_string()))?
    } else {
        let text = std::str::from_utf8(bytes).map_err(|e| unreadable(e.to_string()))?;
        let x509 = keycard_workload_api::X509Bundle::parse_pem(trust_domain.clone(), text)
            .map_err(|e| unreadable(e.to_string()))?;
        let mut bundle = SpiffeBundle::new(trust_domain.clone());
        bundle.x509_authorities = x509.authorities().to_vec();
        bundle
    };
    if bundle.x509_authorities.is_empty() && bundle.jwt_authorities.is_empty() {
        return Err(BundleInputError::Empty(trust_domain.clone()));
    }
    // Written back, it must be valid JSON the agents can read.
    bundle.to_json().map_err(|e| unreadable(e.to_string()))?;
    Ok(bundle)
}

/// One read of the foreign bundles.
#[derive(Debug, Default)]
pub struct ForeignSet {
    /// Trust domain name => SPIFFE bundle JSON, as stored.
    pub bundles: BTreeMap<String, Vec<u8>>,
    /// SHA-256 over the names and documents; empty when there are none (an agent that
    /// holds none sends an empty digest, and is sent nothing).
    pub digest: Vec<u8>,
}

impl ForeignSet {
    fn new(bundles: BTreeMap<String, Vec<u8>>) -> Self {
        if bundles.is_empty() {
            return Self::default();
        }
        let mut hash = Sha256::new();
        for (name, json) in &bundles {
            hash.update((name.len() as u64).to_be_bytes());
            hash.update(name.as_bytes());
            hash.update((json.len() as u64).to_be_bytes());
            hash.update(json);
        }
        Self { bundles, digest: hash.finalize().to_vec() }
    }
}

/// The cached foreign set. See the module documentation.
#[derive(Debug)]
pub struct ForeignBundles {
    store: Arc<dyn DataStore>,
    own: TrustDomain,
    current: Mutex<Option<(Instant, Arc<ForeignSet>)>>,
}

impl ForeignBundles {
    /// A cache over `store`, for a server of trust domain `own` (a stored bundle of the
    /// own trust domain is never sent as a foreign one).
    pub fn new(store: Arc<dyn DataStore>, own: TrustDomain) -> Self {
        Self { store, own, current: Mutex::new(None) }
    }

    /// The foreign set, read again when the last read is older than a second. Blocking:
    /// call it from a blocking thread.
    pub fn current(&self) -> Result<Arc<ForeignSet>, DataStoreError> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, set)) = current.as_ref()
            && at.elapsed() < FRESH_FOR
        {
            return Ok(set.clone());
        }
        let mut bundles = BTreeMap::new();
        for (td, json) in self.store.list_bundles()? {
            if td == self.own {
                continue;
            }
            // A stored document that does not parse is left out (and said), not sent to
            // every agent to be refused there.
            match SpiffeBundle::parse(td.clone(), &json) {
                Ok(_) => {
                    bundles.insert(td.name().to_owned(), json);
                }
                Err(e) => {
                    tracing::warn!(trust_domain = %td, error = %e, "stored foreign bundle does not parse; not sent to agents")
                }
            }
        }
        let set = Arc::new(ForeignSet::new(bundles));
        *current = Some((Instant::now(), set.clone()));
        Ok(set)
    }

    /// Forgets the last read, so that the next sync sees an operator's change at once.
    pub fn invalidate(&self) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

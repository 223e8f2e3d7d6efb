//! The foreign bundles the server holds, as agents receive them: read from the datastore
//! at most once a second (whatever the number of agents syncing), and not at all while the
//! store shows nothing committed since the last read; checked, and labelled with a digest
//! so that an agent that holds the same set is sent nothing.

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

/// SHA-256 over names and documents; empty for none (an agent that holds none sends an
/// empty digest, and is sent nothing).
fn digest_of(bundles: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    if bundles.is_empty() {
        return Vec::new();
    }
    let mut hash = Sha256::new();
    for (name, json) in bundles {
        hash.update((name.len() as u64).to_be_bytes());
        hash.update(name.as_bytes());
        hash.update((json.len() as u64).to_be_bytes());
        hash.update(json);
    }
    hash.finalize().to_vec()
}

/// One read of the foreign bundles.
#[derive(Debug, Default)]
pub struct ForeignSet {
    /// Trust domain name => SPIFFE bundle JSON, as stored.
    pub bundles: BTreeMap<String, Vec<u8>>,
    /// [`digest_of`] `bundles`: what agents hold and send back.
    pub digest: Vec<u8>,
    /// [`digest_of`] everything stored, before the check: tells an unchanged store.
    stored: Vec<u8>,
}

impl ForeignSet {
    /// The set from `stored` without a document that does not parse (said in the log,
    /// not sent to every agent to be refused there).
    fn checked(stored: BTreeMap<String, Vec<u8>>) -> Self {
        let stored_digest = digest_of(&stored);
        let mut bundles = stored;
        bundles.retain(|name, json| {
            let parsed = TrustDomain::new(name)
                .map_err(|e| e.to_string())
                .and_then(|td| SpiffeBundle::parse(td, json).map_err(|e| e.to_string()));
            if let Err(e) = &parsed {
                tracing::warn!(trust_domain = %name, error = %e, "stored foreign bundle does not parse; not sent to agents");
            }
            parsed.is_ok()
        });
        Self { digest: digest_of(&bundles), bundles, stored: stored_digest }
    }
}

/// The cached foreign set. See the module documentation.
#[derive(Debug)]
pub struct ForeignBundles {
    store: Arc<dyn DataStore>,
    own: TrustDomain,
    last: Mutex<LastRead>,
}

/// The last read of the foreign bundles.
#[derive(Debug, Default)]
struct LastRead {
    /// When it was made (`None`: read again at the next call).
    at: Option<Instant>,
    /// The store's [`DataStore::change_mark`] just before it.
    mark: Option<u64>,
    set: Option<Arc<ForeignSet>>,
}

impl LastRead {
    /// The set, if it still holds: read less than [`FRESH_FOR`] ago, or the store shows the
    /// same change mark as before that read (nothing was committed since).
    fn still_good(&self, mark: Option<u64>) -> Option<Arc<ForeignSet>> {
        let at = self.at?;
        let unchanged = mark.is_some() && mark == self.mark;
        (unchanged || at.elapsed() < FRESH_FOR).then(|| self.set.clone()).flatten()
    }
}

impl ForeignBundles {
    /// A cache over `store`, for a server of trust domain `own` (a stored bundle of the
    /// own trust domain is never sent as a foreign one).
    pub fn new(store: Arc<dyn DataStore>, own: TrustDomain) -> Self {
        Self { store, own, last: Mutex::new(LastRead::default()) }
    }

    /// The foreign set without touching the datastore, when the last read still holds (see
    /// [`LastRead::still_good`]) with `mark` the store's change mark as the caller read it,
    /// and no other call is reading: safe on an async thread.
    pub fn cached_at(&self, mark: Option<u64>) -> Option<Arc<ForeignSet>> {
        let last = match self.last.try_lock() {
            Ok(last) => last,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        last.still_good(mark)
    }

    /// The foreign set, read again unless the last read still holds. Blocking: call it
    /// from a blocking thread.
    pub fn current(&self) -> Result<Arc<ForeignSet>, DataStoreError> {
        let mark = self.store.change_mark();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(set) = last.still_good(mark) {
            return Ok(set);
        }
        let stored: BTreeMap<String, Vec<u8>> = self
            .store
            .list_bundles()?
            .into_iter()
            .filter(|(td, _)| *td != self.own)
            .map(|(td, json)| (td.name().to_owned(), json))
            .collect();
        let set = match &last.set {
            // Unchanged since the last read: already checked, not parsed again.
            Some(before) if before.stored == digest_of(&stored) => before.clone(),
            _ => Arc::new(ForeignSet::checked(stored)),
        };
        *last = LastRead { at: Some(Instant::now()), mark, set: Some(set.clone()) };
        Ok(set)
    }

    /// Forgets when the last read was made, so that the next sync reads the store again
    /// (tests use it instead of waiting a second).
    pub fn invalidate(&self) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        (last.at, last.mark) = (None, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::datastore::SqliteDataStore;

    fn json(td: &str) -> Vec<u8> {
        let ca = crate::ca::manager::test_ca(TrustDomain::new(td).unwrap());
        ca.bundle().unwrap().to_json().unwrap().into_bytes()
    }

    #[test]
    fn agents_get_the_parsing_foreign_bundles_and_an_unchanged_store_is_not_parsed_again() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn DataStore> =
            Arc::new(SqliteDataStore::open(&dir.path().join("db")).unwrap());
        let td = |n: &str| TrustDomain::new(n).unwrap();
        store.set_bundle(&td("example.com"), &json("example.com")).unwrap();
        store.set_bundle(&td("example.org"), &json("example.org")).unwrap();
        store.set_bundle(&td("broken.test"), b"{\"keys\": 7}").unwrap();
        let foreign = ForeignBundles::new(store.clone(), td("example.org"));
        let first = foreign.current().unwrap();
        let names: Vec<&str> = first.bundles.keys().map(String::as_str).collect();
        assert_eq!(names, ["example.com"], "own domain and a broken document are left out");
        assert_eq!(first.digest, digest_of(&first.bundles));

        let cached =
            foreign.cached_at(store.change_mark()).expect("just read: served without the store");
        assert!(Arc::ptr_eq(&first, &cached));
        foreign.invalidate();
        assert!(foreign.cached_at(store.change_mark()).is_none(), "invalidated: read again");
        assert!(Arc::ptr_eq(&first, &foreign.current().unwrap()), "unchanged: the same set");

        store.delete_bundle(&td("example.com")).unwrap();
        foreign.invalidate();
        let after = foreign.current().unwrap();
        assert!(after.bundles.is_empty() && after.digest.is_empty());
    }
}

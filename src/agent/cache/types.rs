//! The values the SVID cache holds and hands out, and why it refuses an update.
//!
//! An entry's ID is one shared [`EntryId`] (`Arc<str>`): the cache's map, its indexes, the
//! SVIDs and every caller set's copy of them point at the same bytes. Serials and hints
//! are shared the same way, so that handing an SVID to a caller set copies pointers.

use std::sync::Arc;
use std::time::SystemTime;

use keycard_workload_api::{JwtBundle, SpiffeBundle, SpiffeId, X509Bundle};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use super::federated::{FederatedBundles, same_federated};
use crate::ca::{KeyType, SigningKey};
use crate::selector::SelectorSet;

/// An entry's ID, shared by everything that names the entry (see the module documentation).
pub type EntryId = Arc<str>;

/// Why the cache refused an update.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The SVID is for an entry the cache does not hold (it was removed meanwhile).
    #[error("no entry {0} in the cache")]
    UnknownEntry(String),
    /// No trust bundle is loaded, so no SVID can be checked.
    #[error("no trust bundle loaded")]
    NoBundle,
    /// The bundle from the server is unusable.
    #[error("bad bundle: {0}")]
    BadBundle(String),
    /// The bundle holds no X.509 authority: nothing could be verified with it.
    #[error("refused a trust bundle without X.509 authorities; keeping the current one")]
    EmptyBundle,
    /// The bundle differs from the current one without a higher `spiffe_sequence`: an old
    /// bundle played back.
    #[error(
        "refused a trust bundle whose spiffe_sequence ({offered:?}) is not above the current \
         one ({held}); keeping the current one (if the CA was really rolled back, remove the \
         agent's bundle.json)"
    )]
    StaleBundle {
        /// The sequence of the bundle held.
        held: u64,
        /// The sequence of the bundle offered.
        offered: Option<u64>,
    },
    /// The chain does not verify against the current bundle (or is expired).
    #[error("SVID for entry {entry_id} does not verify: {reason}")]
    BadChain {
        /// The entry.
        entry_id: String,
        /// Why.
        reason: String,
    },
    /// The SVID names another SPIFFE ID than its entry.
    #[error("SVID for entry {entry_id} names {found}, expected {expected}")]
    WrongId {
        /// The entry.
        entry_id: String,
        /// The ID in the SVID.
        found: String,
        /// The entry's ID.
        expected: String,
    },
    /// The SVID does not certify the key the agent made for it.
    #[error("SVID for entry {0} does not certify the agent's key")]
    KeyMismatch(String),
}

/// The private key of a cached SVID, kept as the PKCS#8 DER the Workload API hands out.
/// Once its SVID has been checked against it, the agent never signs with a workload's key,
/// so the parsed signing state a [`SigningKey`] carries (rcgen's and ring's, about 560
/// bytes) is dropped: this is a quarter of that. `Debug` shows only the key type.
pub struct SvidKey {
    key_type: KeyType,
    pkcs8: Box<[u8]>,
}

impl SvidKey {
    /// The bytes of `key`, to hand out.
    pub fn of(key: &SigningKey) -> Self {
        Self { key_type: key.key_type(), pkcs8: key.pkcs8_der().secret_pkcs8_der().into() }
    }

    /// The key as PKCS#8 DER. Handle with care.
    pub fn pkcs8_der(&self) -> PrivatePkcs8KeyDer<'_> {
        PrivatePkcs8KeyDer::from(&self.pkcs8[..])
    }

    /// The key parsed again, for tests that offer it with another chain.
    #[cfg(test)]
    pub(crate) fn signing_key(&self) -> Arc<SigningKey> {
        Arc::new(SigningKey::from_pkcs8_der(&self.pkcs8).expect("made from a SigningKey"))
    }
}

impl std::fmt::Debug for SvidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SvidKey").field("key_type", &self.key_type).finish_non_exhaustive()
    }
}

/// An X.509-SVID held for an entry, with its agent-made key.
#[derive(Debug)]
pub struct CachedSvid {
    /// The entry it was issued for.
    pub entry_id: EntryId,
    /// The SPIFFE ID it carries (the entry's).
    pub spiffe_id: SpiffeId,
    /// Leaf first, then intermediates; shared with the callers' SVID sets.
    pub chain: Arc<[CertificateDer<'static>]>,
    /// The private key, made on this agent; never sent anywhere.
    pub key: Arc<SvidKey>,
    /// Serial number, hex (shared with the form workloads get).
    pub serial: Arc<str>,
    /// When the agent obtained it (the start of its validity as renewal counts it).
    pub issued_at: SystemTime,
    /// The leaf's `notAfter`.
    pub expires_at: SystemTime,
    /// The signing authority's key ID (the leaf's AKI, lowercase hex), when present: the
    /// server names tainted authorities by it.
    pub authority_id: Option<Arc<str>>,
    /// When it is due for renewal.
    pub renew_at: SystemTime,
}

/// A new SVID to put in the cache, before it is checked.
#[derive(Debug)]
pub struct NewSvid {
    /// The entry it was issued for.
    pub entry_id: EntryId,
    /// Leaf first, then intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// The key the agent made for its CSR.
    pub key: Arc<SigningKey>,
    /// Serial, hex.
    pub serial: String,
    /// When the agent obtained it.
    pub issued_at: SystemTime,
    /// When it should be renewed.
    pub renew_at: SystemTime,
}

/// An SVID as a workload receives it.
#[derive(Debug, Clone)]
pub struct WorkloadSvid {
    /// The entry it belongs to.
    pub entry_id: EntryId,
    /// Its SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// Leaf first, then intermediates; shared by every caller set that holds the SVID.
    pub chain: Arc<[CertificateDer<'static>]>,
    /// The private key (`Debug` shows only its type).
    pub key: Arc<SvidKey>,
    /// Serial, hex (identifies this issuance).
    pub serial: Arc<str>,
    /// The leaf's `notAfter`.
    pub expires_at: SystemTime,
    /// The entry's hint for workloads holding several SVIDs.
    pub hint: Arc<str>,
}

impl WorkloadSvid {
    /// The private key as PKCS#8 DER, for the Workload API response. Handle with care.
    pub fn key_pkcs8_der(&self) -> PrivatePkcs8KeyDer<'_> {
        self.key.pkcs8_der()
    }

    /// Whether a workload is served the same thing by `other` (same entry, issuance, ID
    /// and hint).
    pub fn serves_as(&self, other: &WorkloadSvid) -> bool {
        self.entry_id == other.entry_id
            && self.serial == other.serial
            && self.spiffe_id == other.spiffe_id
            && self.hint == other.hint
    }
}

/// A trust domain's bundle (the agent's own, or a federated one) in the forms the
/// Workload API serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustBundle {
    /// As the server sent it.
    pub spiffe: SpiffeBundle,
    /// The X.509 authorities.
    pub x509: X509Bundle,
    /// The JWT authorities.
    pub jwt: JwtBundle,
}

impl TrustBundle {
    /// The X.509 and JWT forms of `spiffe`; refused when either cannot be made.
    pub fn of(spiffe: &SpiffeBundle) -> Result<Self, CacheError> {
        Ok(Self {
            spiffe: spiffe.clone(),
            x509: spiffe.x509_bundle().map_err(|e| CacheError::BadBundle(e.to_string()))?,
            jwt: spiffe.jwt_bundle().map_err(|e| CacheError::BadBundle(e.to_string()))?,
        })
    }
}

/// What one caller set is entitled to: the value of its subscription, shared by every
/// stream of those callers (cloning it copies two pointers).
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The caller's SVIDs, lowest entry ID first.
    pub svids: Arc<[WorkloadSvid]>,
    /// The current bundle, once one is loaded.
    pub bundle: Option<Arc<TrustBundle>>,
    /// The foreign bundles this caller set may have: those of the trust domains the
    /// entries of its SVIDs federate with, among the ones the agent holds.
    pub federated: Arc<FederatedBundles>,
}

impl Default for Snapshot {
    fn default() -> Self {
        Self { svids: Arc::new([]), bundle: None, federated: Arc::default() }
    }
}

impl Snapshot {
    /// Whether `other` gives the caller the same SVIDs and bundles (a pointer comparison
    /// when both share them, as snapshots of one caller set do).
    pub fn serves_as(&self, other: &Snapshot) -> bool {
        let svids = Arc::ptr_eq(&self.svids, &other.svids)
            || (self.svids.len() == other.svids.len()
                && self.svids.iter().zip(other.svids.iter()).all(|(a, b)| a.serves_as(b)));
        svids && self.same_bundles(other)
    }

    /// Whether `other` carries the same own and federated bundles (what the bundle
    /// streams show).
    pub fn same_bundles(&self, other: &Snapshot) -> bool {
        let own = match (&self.bundle, &other.bundle) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
            (None, None) => true,
            _ => false,
        };
        own && (Arc::ptr_eq(&self.federated, &other.federated)
            || same_federated(&self.federated, &other.federated))
    }
}

/// What an entry sync changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryChanges {
    /// Entries new to the cache.
    pub added: usize,
    /// Entries dropped (their SVIDs with them).
    pub removed: usize,
    /// Entries from the server that could not be parsed, skipped (an entry held under
    /// that ID is dropped and counted in `removed`).
    pub skipped: usize,
    /// Entries held before whose revision or content changed.
    pub updated: usize,
    /// Whether the tainted authority list changed.
    pub tainted: bool,
}

impl EntryChanges {
    /// Whether the sync changed any entry or the tainted list.
    pub fn any(&self) -> bool {
        self.added + self.removed + self.updated > 0 || self.tainted
    }
}

/// An entry that needs an SVID now, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueEntry {
    /// The entry.
    pub entry_id: EntryId,
    /// When the current SVID was due (`None`: no SVID, or it must be replaced at once
    /// because its authority is tainted or the entry changed).
    pub previous_due: Option<SystemTime>,
}

/// One entry as `keycard agent explain` shows it.
#[derive(Debug, Clone)]
pub struct EntryView {
    /// The entry ID.
    pub entry_id: EntryId,
    /// The entry's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// The entry's selectors.
    pub selectors: SelectorSet,
    /// The entry's hint.
    pub hint: Arc<str>,
    /// The `notAfter` of the entry's current SVID, if it has one.
    pub svid_expires_at: Option<SystemTime>,
    /// Whether the entry's JWT-SVIDs are bound to its X.509-SVID.
    pub jwt_bound: bool,
}

//! The optional on-disk copy of the workload SVID cache (`disk_cache = true`), so that an
//! agent restarted while the server is down still serves its workloads.
//!
//! One JSON file, `<data_dir>/cache/workload_cache.json` (0600 in a 0700 directory),
//! written atomically after every round that changed the cache. It holds the entries
//! (protobuf, base64, rebuilt from the cache's own copy with the fields the agent uses),
//! the bundle, the federated bundles, and each SVID with its key.
//!
//! # What a loaded file must prove
//! The file is served from only after it passes every check below; a file that fails a
//! file-wide check is ignored whole (and rewritten after the next good round):
//! - **It is this agent's own, unedited**: the body carries an HMAC-SHA256 made with the
//!   agent's `workload_cache.key` (in the data directory, outside `cache/`). The entries'
//!   selectors (who gets which SVID) are signed by nothing the server sends, so only this
//!   tag vouches for them: an edited selector, an added entry, or a file copied from
//!   another agent is refused.
//! - **Its bundle is the agent's**: it must equal `bundle.json`, the bundle stored when the
//!   server last sent it. An authority added to the cached bundle (and an SVID it signed)
//!   is neither trusted nor handed to workloads.
//! - **Each SVID is what the server signed for its entry**: it goes through
//!   [`SvidCache::update_svids`] like one fresh from the server (chain to that bundle, the
//!   entry's SPIFFE ID, key match, not expired), and its DNS names must be the entry's.
//!   One that fails is dropped and issued anew once the server answers.
//! - **Its federated bundles are this agent's**: nothing but the tag vouches for them; one
//!   that does not parse, or names the agent's own trust domain, is left out. The server's
//!   digest of them is not kept, so the first sync after a restart brings the set again
//!   and replaces them all.
//!
//! # Threat model
//! The data directory is the agent user's (0700); nobody else can read or write it. The
//! checks stop a cache file that was edited or replaced on its own (a bug, a hand edit, a
//! restore of the wrong file, a copy from another node, a write primitive confined to the
//! cache) from widening what workloads get. Whoever can write the whole directory as the
//! agent's user (or root) can also read the key, and holds the agent's and every workload's
//! private key already: that attacker is out of scope for any file check.
//!
//! Writing and loading block on the disk; [`DiskCache::save`] runs on tokio's blocking
//! pool, and `agent run` loads the file there too.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use keycard_workload_api::{SpiffeBundle, TrustDomain};
use prost::Message as _;
use ring::hmac;
use sha2::{Digest as _, Sha256};

use super::cache::{CacheImage, FederatedBundles, SvidCache, TrustBundle};
use super::client::SyncedEntries;
use super::storage::{AgentStorage, StorageError};
use crate::clock::Clock;
use crate::wire::proto as pb;

mod format;

use format::{Body, Envelope, StoredSvid, decode_svid, dns_names_match};

/// The file's format version; a file of another version is ignored (and rewritten).
/// Version 3 added the federated bundles.
const VERSION: u32 = 3;

/// The previous version, still read: its body is version 3's without the federated bundles
/// (an agent upgraded while its server is down keeps serving from its cache).
const PREVIOUS_VERSION: u32 = 2;

fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// What was restored from disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    /// Entries put back.
    pub entries: usize,
    /// SVIDs that passed the checks and are served again.
    pub svids: usize,
    /// SVIDs dropped (expired, bad chain, wrong names, damaged).
    pub dropped: usize,
}

/// What one save writes: the cache's entries and SVIDs in one snapshot (made into protobuf
/// and JSON off the runtime), and what the last sync brought besides.
struct Image {
    revision: u64,
    cache: CacheImage,
    bundle: Option<SpiffeBundle>,
    federated: BTreeMap<TrustDomain, SpiffeBundle>,
}

/// A digest of the revision, the federated digest and every `(entry id, serial)` of a
/// save, to skip writes that change nothing (the server's digest changes with the
/// federated set).
type Fingerprint = [u8; 32];

fn fingerprint(revision: u64, federated_digest: &[u8], cache: &CacheImage) -> Fingerprint {
    let mut h = Sha256::new();
    h.update(revision.to_be_bytes());
    h.update((federated_digest.len() as u64).to_be_bytes());
    h.update(federated_digest);
    for s in cache.svids() {
        for part in [&*s.entry_id, &*s.serial] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
    }
    h.finalize().into()
}

/// The workload cache file; see the module documentation.
#[derive(Clone)]
pub struct DiskCache {
    path: PathBuf,
    /// Authenticates the file (from [`AgentStorage::cache_key`]).
    key: hmac::Key,
    clock: Arc<dyn Clock>,
    last_saved: Option<Fingerprint>,
}

impl std::fmt::Debug for DiskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskCache").field("path", &self.path).finish_non_exhaustive()
    }
}

impl DiskCache {
    /// The cache file in `storage`'s directory (its `cache/` directory is created 0700,
    /// and the key made if missing). Blocks on the disk.
    pub fn open(storage: &AgentStorage, clock: Arc<dyn Clock>) -> Result<Self, StorageError> {
        let dir = storage.dir().join("cache");
        crate::fsutil::create_private_dir(&dir)
            .map_err(|source| StorageError::Io { path: dir.display().to_string(), source })?;
        let key = hmac::Key::new(hmac::HMAC_SHA256, &storage.cache_key()?);
        Ok(Self { path: dir.join("workload_cache.json"), key, clock, last_saved: None })
    }

    fn invalid(&self, reason: impl Into<String>) -> StorageError {
        StorageError::Invalid { path: self.path.display().to_string(), reason: reason.into() }
    }

    /// Writes the cache if it changed since the last save, on tokio's blocking pool;
    /// returns whether it wrote. Only the snapshot is taken on the caller's thread.
    pub async fn save(
        &mut self,
        synced: &SyncedEntries,
        cache: &SvidCache,
    ) -> Result<bool, StorageError> {
        let held = cache.image();
        let fingerprint = fingerprint(synced.revision, &synced.federated_digest, &held);
        if self.last_saved.as_ref() == Some(&fingerprint) {
            return Ok(false);
        }
        let image = Image {
            revision: synced.revision,
            cache: held,
            bundle: synced.bundle.clone(),
            federated: synced.federated.clone(),
        };
        let this = self.clone();
        super::storage::off_runtime(move || this.write(&image)).await?;
        self.last_saved = Some(fingerprint);
        Ok(true)
    }

    /// Serializes, authenticates and writes `image` (blocking).
    fn write(&self, image: &Image) -> Result<(), StorageError> {
        let bundle = match &image.bundle {
            Some(b) => Some(b.to_json().map_err(|e| self.invalid(e.to_string()))?),
            None => None,
        };
        let body = Body {
            revision: image.revision,
            saved_at: secs(self.clock.now()),
            entries: image.cache.entries().iter().map(|e| B64.encode(e.encode_to_vec())).collect(),
            bundle,
            tainted_authority_ids: image.cache.tainted().to_vec(),
            svids: image.cache.svids().map(|s| StoredSvid::of(s)).collect(),
            federated_bundles: image
                .federated
                .iter()
                .map(|(td, b)| Ok((td.name().to_owned(), b.to_json()?)))
                .collect::<Result<_, keycard_workload_api::BundleJsonError>>()
                .map_err(|e| self.invalid(e.to_string()))?,
        };
        let body = serde_json::to_string(&body).map_err(|e| self.invalid(e.to_string()))?;
        let mac = hex::encode(hmac::sign(&self.key, body.as_bytes()).as_ref());
        let file = Envelope { version: VERSION, body, mac };
        let json = serde_json::to_vec(&file).map_err(|e| self.invalid(e.to_string()))?;
        crate::fsutil::write_private_atomic(&self.path, &json)
            .map_err(|source| StorageError::Io { path: self.path.display().to_string(), source })
    }

    /// Fills `cache` from the file after checking it (see the module documentation)
    /// against `stored_bundle`, the agent's `bundle.json`; a missing file restores nothing,
    /// and a file that fails a file-wide check is an error and changes nothing. Blocking.
    pub fn load(
        &self,
        trust_domain: &TrustDomain,
        stored_bundle: Option<&SpiffeBundle>,
        cache: &SvidCache,
    ) -> Result<Restored, StorageError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Restored::default()),
            Err(source) => {
                return Err(StorageError::Io { path: self.path.display().to_string(), source });
            }
        };
        self.load_bytes(&bytes, trust_domain, stored_bundle, cache)
    }

    /// [`DiskCache::load`] with the file's content given: every check is the same, only the
    /// read is left out (public for the fuzz targets in tests/fuzz).
    pub fn load_bytes(
        &self,
        bytes: &[u8],
        trust_domain: &TrustDomain,
        stored_bundle: Option<&SpiffeBundle>,
        cache: &SvidCache,
    ) -> Result<Restored, StorageError> {
        let file: Envelope =
            serde_json::from_slice(bytes).map_err(|e| self.invalid(e.to_string()))?;
        if file.version != VERSION && file.version != PREVIOUS_VERSION {
            tracing::warn!(path = %self.path.display(), version = file.version, "ignoring a workload cache file of another version");
            return Ok(Restored::default());
        }
        let tag = hex::decode(&file.mac).map_err(|_| self.invalid("its tag is not hex"))?;
        hmac::verify(&self.key, file.body.as_bytes(), &tag).map_err(|_| {
            self.invalid(
                "not authenticated by this agent's workload_cache.key (edited, or written by \
                 another agent); ignored",
            )
        })?;
        let body: Body =
            serde_json::from_str(&file.body).map_err(|e| self.invalid(e.to_string()))?;
        if file.version == PREVIOUS_VERSION && !body.federated_bundles.is_empty() {
            return Err(self.invalid("a version 2 file with federated bundles"));
        }
        let bundle = match &body.bundle {
            Some(json) => Some(
                SpiffeBundle::parse(trust_domain.clone(), json.as_bytes())
                    .map_err(|e| self.invalid(e.to_string()))?,
            ),
            None => None,
        };
        if bundle.as_ref() != stored_bundle {
            return Err(self.invalid(format!(
                "its bundle is not the agent's {}; ignored",
                super::storage::BUNDLE_FILE
            )));
        }
        let mut entries = BTreeMap::new();
        for e in &body.entries {
            let raw = B64.decode(e).map_err(|e| self.invalid(e.to_string()))?;
            let entry =
                pb::Entry::decode(raw.as_slice()).map_err(|e| self.invalid(e.to_string()))?;
            entries.insert(entry.id.clone(), entry);
        }
        let age = self.clock.now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        tracing::info!(age = ?age.saturating_sub(Duration::from_secs(body.saved_at)), "loading the on-disk workload cache");
        let federated = federated_of(trust_domain, &body.federated_bundles);
        cache
            .set_synced(&entries, bundle.as_ref(), &body.tainted_authority_ids, Some(federated))
            .map_err(|e| self.invalid(e.to_string()))?;
        let mut restored = Restored { entries: entries.len(), ..Default::default() };
        let mut offered = Vec::new();
        for s in body.svids {
            let names_ok = |leaf: &[u8]| {
                entries.get(&s.entry_id).is_some_and(|e| dns_names_match(leaf, &e.dns_names))
            };
            match decode_svid(&s) {
                Some(svid) if svid.chain.first().is_some_and(|leaf| names_ok(leaf)) => {
                    offered.push(svid)
                }
                Some(_) => {
                    tracing::info!(entry_id = %s.entry_id, "dropping a stored workload SVID whose DNS names are not its entry's");
                    restored.dropped += 1;
                }
                None => restored.dropped += 1,
            }
        }
        for result in cache.update_svids(offered) {
            match result {
                Ok(()) => restored.svids += 1,
                Err(e) => {
                    tracing::info!(error = %e, "dropping a stored workload SVID");
                    restored.dropped += 1;
                }
            }
        }
        Ok(restored)
    }
}

/// The federated bundles of a loaded body: each one that parses (the tag vouches that
/// this agent wrote them; one that does not parse is logged and left out), never one of
/// the agent's own trust domain.
fn federated_of(own: &TrustDomain, stored: &BTreeMap<String, String>) -> FederatedBundles {
    let mut out = FederatedBundles::new();
    for (name, json) in stored {
        let parsed = TrustDomain::new(name).map_err(|e| e.to_string()).and_then(|td| {
            let b = SpiffeBundle::parse(td.clone(), json.as_bytes()).map_err(|e| e.to_string())?;
            Ok((td, TrustBundle::of(&b).map_err(|e| e.to_string())?))
        });
        match parsed {
            Ok((td, bundle)) if td != *own => {
                out.insert(td, Arc::new(bundle));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(trust_domain = %name, error = %e, "dropping a stored federated bundle")
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;

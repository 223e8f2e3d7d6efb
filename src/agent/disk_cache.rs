//! The optional on-disk copy of the workload SVID cache (`disk_cache = true`), so that an
//! agent restarted while the server is down still serves its workloads.
//!
//! One JSON file, `<data_dir>/cache/workload_cache.json` (0600 in a 0700 directory),
//! written atomically after every round that changed the cache. It holds the synced
//! entries (protobuf, base64), the bundle, and each SVID with its key. Loading puts the
//! entries and bundle in the cache and then offers every SVID through
//! [`SvidCache::update_svids`], which checks it like one fresh from the server (chain to
//! the bundle, the entry's SPIFFE ID, key match, not expired): what fails is dropped and
//! will be issued anew once the server answers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use keycard_workload_api::{SpiffeBundle, TrustDomain};
use prost::Message as _;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use super::cache::{NewSvid, SvidCache};
use super::client::SyncedEntries;
use super::storage::StorageError;
use crate::ca::SigningKey;
use crate::wire::proto as pb;

/// The file's format version; a file of another version is ignored (and rewritten).
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    revision: u64,
    entries: Vec<String>,
    bundle: Option<String>,
    tainted_authority_ids: Vec<String>,
    svids: Vec<StoredSvid>,
}

#[derive(Serialize, Deserialize)]
struct StoredSvid {
    entry_id: String,
    chain: Vec<String>,
    key: String,
    serial: String,
    issued_at: u64,
    renew_at: u64,
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs()
}

fn time(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// What was restored from disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    /// Entries put back.
    pub entries: usize,
    /// SVIDs that passed the checks and are served again.
    pub svids: usize,
    /// SVIDs dropped (expired, bad chain, damaged).
    pub dropped: usize,
}

/// The workload cache file; see the module documentation.
#[derive(Debug, Clone)]
pub struct DiskCache {
    path: PathBuf,
    /// `(revision, entry id, serial)` of the last save, to skip writes that change nothing.
    last_saved: Option<(u64, Vec<(String, String)>)>,
}

impl DiskCache {
    /// The cache file under `data_dir` (its directory is created 0700).
    pub fn open(data_dir: &Path) -> Result<Self, StorageError> {
        let dir = data_dir.join("cache");
        crate::fsutil::create_private_dir(&dir)
            .map_err(|source| StorageError::Io { path: dir.display().to_string(), source })?;
        Ok(Self { path: dir.join("workload_cache.json"), last_saved: None })
    }

    fn invalid(&self, reason: impl Into<String>) -> StorageError {
        StorageError::Invalid { path: self.path.display().to_string(), reason: reason.into() }
    }

    /// Writes the cache if it changed since the last save; returns whether it wrote.
    pub fn save(
        &mut self,
        synced: &SyncedEntries,
        cache: &SvidCache,
    ) -> Result<bool, StorageError> {
        let svids: Vec<_> =
            cache.entry_ids().into_iter().filter_map(|id| cache.svid(&id)).collect();
        let fingerprint = (
            synced.revision,
            svids.iter().map(|s| (s.entry_id.clone(), s.serial.clone())).collect(),
        );
        if self.last_saved.as_ref() == Some(&fingerprint) {
            return Ok(false);
        }
        let bundle = match &synced.bundle {
            Some(b) => Some(b.to_json().map_err(|e| self.invalid(e.to_string()))?),
            None => None,
        };
        let file = File {
            version: VERSION,
            revision: synced.revision,
            entries: synced.entries.values().map(|e| B64.encode(e.encode_to_vec())).collect(),
            bundle,
            tainted_authority_ids: synced.tainted_authority_ids.clone(),
            svids: svids
                .iter()
                .map(|s| StoredSvid {
                    entry_id: s.entry_id.clone(),
                    chain: s.chain.iter().map(|c| B64.encode(c)).collect(),
                    key: B64.encode(s.key.key_pair().serialize_der()),
                    serial: s.serial.clone(),
                    issued_at: secs(s.issued_at),
                    renew_at: secs(s.renew_at),
                })
                .collect(),
        };
        let json = serde_json::to_vec(&file).map_err(|e| self.invalid(e.to_string()))?;
        crate::fsutil::write_private_atomic(&self.path, &json)
            .map_err(|source| StorageError::Io { path: self.path.display().to_string(), source })?;
        self.last_saved = Some(fingerprint);
        Ok(true)
    }

    /// Fills `cache` from the file, checking every SVID; a missing file restores nothing.
    pub fn load(
        &self,
        trust_domain: &TrustDomain,
        cache: &SvidCache,
    ) -> Result<Restored, StorageError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Restored::default()),
            Err(source) => {
                return Err(StorageError::Io { path: self.path.display().to_string(), source });
            }
        };
        let file: File = serde_json::from_slice(&bytes).map_err(|e| self.invalid(e.to_string()))?;
        if file.version != VERSION {
            tracing::warn!(path = %self.path.display(), version = file.version, "ignoring a workload cache file of another version");
            return Ok(Restored::default());
        }
        let mut entries = BTreeMap::new();
        for e in &file.entries {
            let raw = B64.decode(e).map_err(|e| self.invalid(e.to_string()))?;
            let entry =
                pb::Entry::decode(raw.as_slice()).map_err(|e| self.invalid(e.to_string()))?;
            entries.insert(entry.id.clone(), entry);
        }
        let bundle = match &file.bundle {
            Some(json) => Some(
                SpiffeBundle::parse(trust_domain.clone(), json.as_bytes())
                    .map_err(|e| self.invalid(e.to_string()))?,
            ),
            None => None,
        };
        cache
            .set_entries(&entries, bundle.as_ref(), &file.tainted_authority_ids)
            .map_err(|e| self.invalid(e.to_string()))?;
        let mut restored = Restored { entries: entries.len(), ..Default::default() };
        let mut offered = Vec::new();
        for s in file.svids {
            match decode_svid(s) {
                Some(svid) => offered.push(svid),
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

fn decode_svid(s: StoredSvid) -> Option<NewSvid> {
    let chain = s
        .chain
        .iter()
        .map(|c| B64.decode(c).ok().map(CertificateDer::from))
        .collect::<Option<Vec<_>>>()?;
    let key = SigningKey::from_pkcs8_der(&B64.decode(&s.key).ok()?).ok()?;
    Some(NewSvid {
        entry_id: s.entry_id,
        chain,
        key: Arc::new(key),
        serial: s.serial,
        issued_at: time(s.issued_at),
        renew_at: time(s.renew_at),
    })
}

#[cfg(test)]
mod tests;

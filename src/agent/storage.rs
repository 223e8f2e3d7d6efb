//! What the agent keeps in its data directory between runs: its own SVID with its key,
//! and the trust bundle last received from the server.
//!
//! - `agent_svid.pem`: the SVID chain (leaf first) followed by the PKCS#8 key, in ONE file,
//!   so the certificate and its key are replaced together by one atomic rename;
//! - `bundle.json`: the SPIFFE bundle document of the trust domain.
//!
//! - `agent_id`: the agent ID the server assigned at attestation;
//! - `workload_cache.key`: the key that authenticates the on-disk workload cache
//!   ([`super::disk_cache`]), made on first use.
//!
//! All are written atomically with mode 0600 in a 0700 directory ([`crate::fsutil`]).
//! Loading checks what it reads: an SVID whose chain does not lead to the stored bundle,
//! which names another trust domain, whose key does not match, or whose ID is not an agent
//! ID (under `/keycard/agent/`, or the recorded `agent_id`: a workload SVID copied there
//! is not the agent) is refused rather than used.
//!
//! Threat model: the directory belongs to the agent's user and nobody else can read or
//! write it. Whoever can write it as that user (or as root) already holds the agent's key
//! and every workload key; the checks here stop mistakes and partial tampering (a file
//! copied from elsewhere, a cache file edited alone), not that user.
//!
//! The functions here block on the disk (fsync); async code calls them through
//! [`off_runtime`], on tokio's blocking pool.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keycard_workload_api::{SpiffeBundle, SpiffeId, TrustDomain, X509BundleSet};
use rustls::pki_types::{CertificateDer, UnixTime};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::identity::AgentIdentity;
use crate::ca::SigningKey;

/// File of the agent SVID and key.
pub const AGENT_SVID_FILE: &str = "agent_svid.pem";
/// File of the trust bundle.
pub const BUNDLE_FILE: &str = "bundle.json";
/// File of the agent ID recorded at attestation.
pub const AGENT_ID_FILE: &str = "agent_id";
/// File of the key that authenticates the workload cache.
pub const CACHE_KEY_FILE: &str = "workload_cache.key";
/// Length of the workload cache key, bytes.
pub const CACHE_KEY_LEN: usize = 32;

/// Why the agent's state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A file or the directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// What the OS said.
        source: io::Error,
    },
    /// A stored file is damaged or does not fit the rest of the state.
    #[error("{path}: {reason}; remove it and attest the agent again")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The stored SVID names an ID that is not the agent's (a workload SVID, say).
    #[error(
        "{path}: {found} is not an agent ID (expected {expected}); remove the file and attest \
         the agent again"
    )]
    NotAnAgent {
        /// The file.
        path: String,
        /// The ID the SVID names.
        found: String,
        /// What an agent ID looks like here.
        expected: String,
    },
}

/// Runs blocking file work (reads, fsync'd writes) on tokio's blocking pool, so that no
/// runtime thread waits for the disk.
pub async fn off_runtime<T, F>(work: F) -> Result<T, StorageError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
{
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
        Err(StorageError::Io { path: "(blocking task)".into(), source: io::Error::other(e) })
    })
}

/// The agent SVID found on disk.
#[derive(Debug, Clone)]
pub enum StoredIdentity {
    /// Valid now: usable as the client certificate at once.
    Valid(AgentIdentity),
    /// Expired: the agent must attest again (x509pop can; a join token cannot).
    Expired {
        /// The agent ID it named.
        spiffe_id: SpiffeId,
        /// When it expired.
        expired_at: SystemTime,
    },
}

/// The agent's data directory; see the module documentation.
#[derive(Debug, Clone)]
pub struct AgentStorage {
    dir: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |source| StorageError::Io { path: path.display().to_string(), source }
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StorageError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

impl AgentStorage {
    /// Opens (creating it 0700 if needed) the data directory `dir`.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        crate::fsutil::create_private_dir(dir).map_err(io_err(dir))?;
        Ok(Self { dir: dir.to_path_buf() })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn invalid(&self, name: &str, reason: impl Into<String>) -> StorageError {
        StorageError::Invalid { path: self.path(name).display().to_string(), reason: reason.into() }
    }

    /// Replaces the stored agent SVID and key (recording its ID as the agent ID first).
    pub fn save_identity(&self, identity: &AgentIdentity) -> Result<(), StorageError> {
        self.record_agent_id(&identity.spiffe_id)?;
        let mut text: String = identity
            .chain
            .iter()
            .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.to_vec())))
            .collect();
        text.push_str(&pem::encode(&pem::Pem::new(
            "PRIVATE KEY",
            identity.key.key_pair().serialize_der(),
        )));
        let path = self.path(AGENT_SVID_FILE);
        crate::fsutil::write_private_atomic(&path, text.as_bytes()).map_err(io_err(&path))
    }

    /// Records `id` as the agent ID (done when the server assigns it, at attestation), so
    /// that an agent ID outside `/keycard/agent/` (one an operator chose for a join token)
    /// is recognized at the next start. Writes only when it changed.
    pub fn record_agent_id(&self, id: &SpiffeId) -> Result<(), StorageError> {
        let path = self.path(AGENT_ID_FILE);
        if read_optional(&path)?.is_some_and(|old| old == id.to_string().as_bytes()) {
            return Ok(());
        }
        crate::fsutil::write_private_atomic(&path, id.to_string().as_bytes()).map_err(io_err(&path))
    }

    /// Whether `id` may be the agent's: under `/keycard/agent/` of the trust domain, or the
    /// recorded agent ID.
    fn check_agent_id(&self, id: &SpiffeId) -> Result<(), StorageError> {
        if id.path().starts_with(crate::wire::AGENT_PATH_PREFIX) {
            return Ok(());
        }
        let recorded = read_optional(&self.path(AGENT_ID_FILE))?;
        let recorded = recorded.as_deref().map(String::from_utf8_lossy);
        if recorded.as_deref().map(str::trim) == Some(id.to_string().as_str()) {
            return Ok(());
        }
        let mut expected = format!("an ID under {}", crate::wire::AGENT_PATH_PREFIX);
        if let Some(r) = recorded {
            expected.push_str(&format!(" or the recorded agent ID {}", r.trim()));
        }
        Err(StorageError::NotAnAgent {
            path: self.path(AGENT_SVID_FILE).display().to_string(),
            found: id.to_string(),
            expected,
        })
    }

    /// The key that authenticates the workload cache file; made (random, 0600) if missing.
    pub fn cache_key(&self) -> Result<[u8; CACHE_KEY_LEN], StorageError> {
        let path = self.path(CACHE_KEY_FILE);
        if let Some(bytes) = read_optional(&path)? {
            return <[u8; CACHE_KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| {
                self.invalid(CACHE_KEY_FILE, format!("expected {CACHE_KEY_LEN} bytes"))
            });
        }
        let key: [u8; CACHE_KEY_LEN] = rand::random();
        crate::fsutil::write_private_atomic(&path, &key).map_err(io_err(&path))?;
        Ok(key)
    }

    /// Replaces the stored bundle.
    pub fn save_bundle(&self, bundle: &SpiffeBundle) -> Result<(), StorageError> {
        let json = bundle.to_json().map_err(|e| self.invalid(BUNDLE_FILE, e.to_string()))?;
        let path = self.path(BUNDLE_FILE);
        crate::fsutil::write_private_atomic(&path, json.as_bytes()).map_err(io_err(&path))
    }

    /// The stored bundle of `trust_domain`, if any.
    pub fn load_bundle(
        &self,
        trust_domain: &TrustDomain,
    ) -> Result<Option<SpiffeBundle>, StorageError> {
        let Some(bytes) = read_optional(&self.path(BUNDLE_FILE))? else { return Ok(None) };
        let bundle = SpiffeBundle::parse(trust_domain.clone(), &bytes)
            .map_err(|e| self.invalid(BUNDLE_FILE, e.to_string()))?;
        Ok(Some(bundle))
    }

    /// The stored agent SVID, checked against `bundle` at `now`; `None` when there is none.
    pub fn load_identity(
        &self,
        bundle: &SpiffeBundle,
        now: SystemTime,
    ) -> Result<Option<StoredIdentity>, StorageError> {
        let Some(bytes) = read_optional(&self.path(AGENT_SVID_FILE))? else { return Ok(None) };
        let bad = |reason: String| self.invalid(AGENT_SVID_FILE, reason);
        let blocks = pem::parse_many(&bytes).map_err(|e| bad(e.to_string()))?;
        let mut chain = Vec::new();
        let mut key = None;
        for block in blocks {
            match block.tag() {
                "CERTIFICATE" => chain.push(CertificateDer::from(block.into_contents())),
                "PRIVATE KEY" => {
                    let k = SigningKey::from_pkcs8_der(block.contents())
                        .map_err(|e| bad(e.to_string()))?;
                    key = Some(Arc::new(k));
                }
                other => return Err(bad(format!("unexpected PEM block {other:?}"))),
            }
        }
        let key = key.ok_or_else(|| bad("no PRIVATE KEY block".into()))?;
        let leaf = chain.first().ok_or_else(|| bad("no CERTIFICATE block".into()))?;
        let (_, cert) = X509Certificate::from_der(leaf).map_err(|e| bad(e.to_string()))?;
        if cert.public_key().raw != key.public_key_der().as_slice() {
            return Err(bad("the certificate does not match the key".into()));
        }
        let expires_at = SystemTime::UNIX_EPOCH
            + Duration::from_secs(
                u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0),
            );
        let serial = hex::encode(cert.raw_serial());
        let spiffe_id = keycard_workload_api::spiffe_id_of(leaf).map_err(|e| bad(e.to_string()))?;
        if spiffe_id.trust_domain() != bundle.trust_domain {
            return Err(bad(format!("{spiffe_id} is not in trust domain {}", bundle.trust_domain)));
        }
        self.check_agent_id(&spiffe_id)?;
        if expires_at <= now {
            return Ok(Some(StoredIdentity::Expired { spiffe_id, expired_at: expires_at }));
        }
        let x509 = bundle.x509_bundle().map_err(|e| self.invalid(BUNDLE_FILE, e.to_string()))?;
        let mut set = X509BundleSet::new();
        set.insert(x509);
        let unix = UnixTime::since_unix_epoch(
            now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default(),
        );
        keycard_workload_api::verify_chain(&chain, &set, unix)
            .map_err(|e| bad(format!("does not verify against the stored bundle: {e}")))?;
        Ok(Some(StoredIdentity::Valid(AgentIdentity { spiffe_id, chain, key, serial, expires_at })))
    }
}

#[cfg(test)]
mod tests;

//! The authority journal: which signing authorities exist and where each is in its life.
//!
//! Each kind of authority (X.509 and JWT) has a set of slots. At most one authority is
//! *prepared* (published in the bundle, not yet signing), exactly one is *active* once the
//! CA has started (signing), and any number are *old* (no longer signing, still published
//! until they expire so that what they signed keeps verifying). An old authority can be
//! *tainted* (agents renew what it signed early) and then *revoked* (dropped from the
//! bundle). The rules of those transitions live here, so that a caller cannot, say, revoke
//! the active authority; the keys themselves live in the key manager under `key_id`.
//!
//! The journal is saved whole, atomically, after every change: a crash leaves either the
//! previous journal or the new one on disk, never a mix.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::fsutil;

/// Where an authority is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotState {
    /// Published in the bundle, not yet signing.
    Prepared,
    /// The one authority that signs.
    Active,
    /// Retired: published until it expires, signs nothing.
    Old,
}

/// Which kind of authority a set holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthorityKind {
    /// Signs X.509-SVIDs.
    X509,
    /// Signs JWT-SVIDs.
    Jwt,
}

/// An operator's mark on an authority, kept in the datastore so that every server applies
/// it, whichever server the operator asked and whichever server owns the authority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AuthorityMark {
    /// Agents renew what it signed early.
    Tainted,
    /// Dropped from the bundle (it was tainted first).
    Revoked,
}

impl AuthorityMark {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tainted => "tainted",
            Self::Revoked => "revoked",
        }
    }

    /// Reads the stored form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "tainted" => Some(Self::Tainted),
            "revoked" => Some(Self::Revoked),
            _ => None,
        }
    }
}

/// One authority, as the journal records it. Holds no secret: the key is in the key manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorityRecord {
    /// Stable identifier shown to operators: the hex subject key ID of an X.509 authority,
    /// the `kid` of a JWT authority.
    pub id: String,
    /// The key manager's name for this authority's private key.
    pub key_id: String,
    /// Where the authority is in its life.
    pub state: SlotState,
    /// Set by an operator who no longer trusts the key: agents renew its SVIDs early.
    pub tainted: bool,
    /// When the authority was made, in milliseconds since the Unix epoch. The schedule
    /// counts its life from here; an X.509 certificate's own notBefore is earlier by the
    /// clock-skew backdate.
    pub issued_at_ms: u64,
    /// End of validity, in milliseconds since the Unix epoch.
    pub not_after_ms: u64,
    /// X.509: the authority's certificate (DER). JWT: its public key (SubjectPublicKeyInfo).
    #[serde(with = "base64_bytes")]
    pub public_der: Vec<u8>,
    /// X.509 under an upstream authority: the certificates between this authority and the
    /// upstream root (DER, excluding the root), sent with every SVID chain.
    #[serde(default, with = "base64_list")]
    pub upstream_chain: Vec<Vec<u8>>,
}

impl AuthorityRecord {
    /// When the authority was made.
    pub fn issued_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.issued_at_ms)
    }

    /// End of validity.
    pub fn not_after(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.not_after_ms)
    }

    /// From issuance to expiry.
    pub fn lifetime(&self) -> Duration {
        Duration::from_millis(self.not_after_ms.saturating_sub(self.issued_at_ms))
    }

    /// When the next authority should be prepared: half-way through this one's life.
    pub fn prepare_at(&self) -> SystemTime {
        self.issued_at() + self.lifetime() / 2
    }

    /// When the prepared authority should take over: when a sixth of this one's life
    /// remains, so the successor has been in bundles for a third of this one's life.
    pub fn activate_at(&self) -> SystemTime {
        self.not_after() - self.lifetime() / 6
    }
}

/// Milliseconds since the Unix epoch, for the journal's timestamps.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Why a journal operation was refused or the journal could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading or writing the journal file failed.
    #[error("authority journal {path}: {source}")]
    Io {
        /// The journal file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The journal file is not valid JSON of the expected shape.
    #[error("authority journal {path} is corrupt ({detail}); restore it from a backup")]
    Corrupt {
        /// The journal file.
        path: String,
        /// What the parser said.
        detail: String,
    },
    /// No authority has this ID.
    #[error("no {kind:?} authority with ID {id}; list them with `keycard authority show`")]
    Unknown {
        /// The kind of authority asked for.
        kind: AuthorityKind,
        /// The ID asked for.
        id: String,
    },
    /// An authority is already prepared; activate it (or let the schedule do it) first.
    #[error("authority {0} is already prepared; activate it before preparing another")]
    AlreadyPrepared(String),
    /// Only the prepared authority can be activated.
    #[error("authority {0} is not the prepared one; only a prepared authority can be activated")]
    NotPrepared(String),
    /// The active authority cannot be tainted or revoked: prepare and activate a successor.
    #[error(
        "authority {0} is active; prepare and activate a successor before tainting or revoking it"
    )]
    ActiveAuthority(String),
    /// Only old authorities can be tainted (a prepared one is simply not activated).
    #[error("authority {0} is prepared, not old; only an old authority can be tainted")]
    TaintPrepared(String),
    /// The authority is tainted already.
    #[error("authority {0} is already tainted")]
    AlreadyTainted(String),
    /// Revocation needs a tainted authority, so its SVIDs have been renewed first.
    #[error("authority {0} is not tainted; taint it and let agents renew before revoking it")]
    NotTainted(String),
}

/// All the authorities of one kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthoritySet {
    /// Every authority not yet revoked or pruned, oldest first.
    pub records: Vec<AuthorityRecord>,
}

impl AuthoritySet {
    /// The signing authority, if any.
    pub fn active(&self) -> Option<&AuthorityRecord> {
        self.records.iter().find(|r| r.state == SlotState::Active)
    }

    /// The authority waiting to take over, if any.
    pub fn prepared(&self) -> Option<&AuthorityRecord> {
        self.records.iter().find(|r| r.state == SlotState::Prepared)
    }

    /// The authority with this ID.
    pub fn get(&self, id: &str) -> Option<&AuthorityRecord> {
        self.records.iter().find(|r| r.id == id)
    }

    fn position(&self, kind: AuthorityKind, id: &str) -> Result<usize, JournalError> {
        self.records
            .iter()
            .position(|r| r.id == id)
            .ok_or_else(|| JournalError::Unknown { kind, id: id.to_owned() })
    }

    /// Adds a new authority in the prepared slot, or straight into the active slot when
    /// there is no active authority yet (first start).
    pub fn add(&mut self, mut record: AuthorityRecord) -> Result<SlotState, JournalError> {
        if let Some(prepared) = self.prepared() {
            return Err(JournalError::AlreadyPrepared(prepared.id.clone()));
        }
        record.state =
            if self.active().is_some() { SlotState::Prepared } else { SlotState::Active };
        record.tainted = false;
        let state = record.state;
        self.records.push(record);
        Ok(state)
    }

    /// Makes the prepared authority `id` active; the previous active one becomes old.
    pub fn activate(&mut self, kind: AuthorityKind, id: &str) -> Result<(), JournalError> {
        let at = self.position(kind, id)?;
        if self.records[at].state != SlotState::Prepared {
            return Err(JournalError::NotPrepared(id.to_owned()));
        }
        for record in &mut self.records {
            if record.state == SlotState::Active {
                record.state = SlotState::Old;
            }
        }
        self.records[at].state = SlotState::Active;
        Ok(())
    }

    /// Marks the old authority `id` as no longer trusted.
    pub fn taint(&mut self, kind: AuthorityKind, id: &str) -> Result<(), JournalError> {
        let at = self.position(kind, id)?;
        let record = &mut self.records[at];
        match (record.state, record.tainted) {
            (SlotState::Active, _) => Err(JournalError::ActiveAuthority(id.to_owned())),
            (SlotState::Prepared, _) => Err(JournalError::TaintPrepared(id.to_owned())),
            (SlotState::Old, true) => Err(JournalError::AlreadyTainted(id.to_owned())),
            (SlotState::Old, false) => {
                record.tainted = true;
                Ok(())
            }
        }
    }

    /// Removes the tainted, non-active authority `id` and returns it (its key can then go).
    pub fn revoke(
        &mut self,
        kind: AuthorityKind,
        id: &str,
    ) -> Result<AuthorityRecord, JournalError> {
        let at = self.position(kind, id)?;
        let record = &self.records[at];
        if record.state == SlotState::Active {
            return Err(JournalError::ActiveAuthority(id.to_owned()));
        }
        if !record.tainted {
            return Err(JournalError::NotTainted(id.to_owned()));
        }
        Ok(self.records.remove(at))
    }

    /// Drops old authorities that have expired: nothing they signed can still verify.
    pub fn prune_expired(&mut self, now: SystemTime) -> Vec<AuthorityRecord> {
        let (expired, kept) = std::mem::take(&mut self.records)
            .into_iter()
            .partition(|r| r.state == SlotState::Old && r.not_after() <= now);
        self.records = kept;
        expired
    }
}

/// The persisted state of both authority kinds and the bundle's sequence number.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    /// X.509 authorities.
    pub x509: AuthoritySet,
    /// JWT authorities.
    pub jwt: AuthoritySet,
    /// `spiffe_sequence` of the bundle: raised on every change of the published keys.
    pub bundle_sequence: u64,
}

impl Journal {
    /// The set of authorities of `kind`.
    pub fn set(&self, kind: AuthorityKind) -> &AuthoritySet {
        match kind {
            AuthorityKind::X509 => &self.x509,
            AuthorityKind::Jwt => &self.jwt,
        }
    }

    /// The set of authorities of `kind`, to change.
    pub fn set_mut(&mut self, kind: AuthorityKind) -> &mut AuthoritySet {
        match kind {
            AuthorityKind::X509 => &mut self.x509,
            AuthorityKind::Jwt => &mut self.jwt,
        }
    }

    /// Reads the journal at `path`; a missing file is an empty journal (first start).
    pub fn load(path: &Path) -> Result<Self, JournalError> {
        let shown = path.display().to_string();
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| JournalError::Corrupt { path: shown, detail: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(JournalError::Io { path: shown, source }),
        }
    }

    /// Writes the whole journal to `path` atomically, readable by the owner only.
    pub fn save(&self, path: &Path) -> Result<(), JournalError> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| JournalError::Corrupt {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        fsutil::write_private_atomic(path, &bytes)
            .map_err(|source| JournalError::Io { path: path.display().to_string(), source })
    }
}

/// Where the journal is kept: a file for a single server, the datastore for HA servers.
pub trait JournalStore: Send + Sync + std::fmt::Debug {
    /// The journal as last saved; an empty journal when none was ever saved.
    fn load(&self) -> Result<Journal, JournalError>;
    /// Replaces the saved journal, atomically.
    fn save(&self, journal: &Journal) -> Result<(), JournalError>;
}

/// A journal kept in one JSON file, replaced atomically on every save.
#[derive(Debug, Clone)]
pub struct FileJournal(pub std::path::PathBuf);

impl JournalStore for FileJournal {
    fn load(&self) -> Result<Journal, JournalError> {
        Journal::load(&self.0)
    }

    fn save(&self, journal: &Journal) -> Result<(), JournalError> {
        journal.save(&self.0)
    }
}

/// A journal kept only in memory (tests and throw-away CAs).
#[derive(Debug, Default)]
pub struct MemoryJournal(std::sync::Mutex<Journal>);

impl JournalStore for MemoryJournal {
    fn load(&self) -> Result<Journal, JournalError> {
        Ok(self.0.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    fn save(&self, journal: &Journal) -> Result<(), JournalError> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = journal.clone();
        Ok(())
    }
}

/// Serde for bytes as standard base64 text.
mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// Serde for a list of byte strings as a list of base64 texts.
mod base64_list {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(list: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(list.iter().map(|b| STANDARD.encode(b)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let texts = Vec::<String>::deserialize(d)?;
        texts.into_iter().map(|t| STANDARD.decode(t).map_err(serde::de::Error::custom)).collect()
    }
}

#[cfg(test)]
mod tests;

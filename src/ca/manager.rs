//! The CA manager: the server's signing authorities over time.
//!
//! It owns the authority journal and the loaded X.509 and JWT authorities, signs with the
//! active ones, and runs the rotation schedule whenever [`CaManager::rotate`] is called
//! (the server calls it on a timer; tests call it on a manual clock):
//! - no active authority (first start, or everything expired while the server was down):
//!   make one and activate it at once;
//! - the active one is half-way through its life: prepare the next one, which is published
//!   in the bundle from that moment;
//! - a sixth of the active one's life remains: self-test the prepared one (it must sign a
//!   throw-away SVID that verifies against the bundle) and activate it;
//! - old authorities that have expired leave the bundle.
//!
//! Operators can do the same by hand (prepare, activate) and also taint and revoke. Every
//! change is saved to the journal before it takes effect and emits one audit event.
//!
//! Locking: signers read the state behind an `RwLock`. A change is serialized by its own
//! mutex, computes the next journal from a copy, does its disk work (key file, journal,
//! fsync) holding only that mutex, and takes the write lock just to swap the new journal
//! and authorities in; a signer therefore never waits for a disk.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use keycard_workload_api::{Jwk, JwtBundle, SpiffeBundle, SpiffeId, TrustDomain, X509Bundle};
use rustls_pki_types::CertificateDer;

use super::journal::{AuthorityKind, AuthorityRecord, Journal, JournalStore, SlotState};
use super::jwt_authority::{JwtAuthority, MintedJwtSvid};
use super::{
    CaError, KeyId, KeyManager, KeyType, SignedSvid, SvidRequest, UpstreamAuthority, X509Authority,
};
use crate::clock::Clock;

/// What the CA manager needs to know, from the server's configuration.
#[derive(Debug, Clone)]
pub struct CaConfig {
    /// The trust domain every authority issues for.
    pub trust_domain: TrustDomain,
    /// Key type of X.509 authorities.
    pub x509_key_type: KeyType,
    /// Key type of JWT authorities (ECDSA only).
    pub jwt_key_type: KeyType,
    /// Lifetime of every authority.
    pub ca_ttl: Duration,
    /// How far certificates' `notBefore` is backdated for clock skew.
    pub backdate: Duration,
    /// When set, X.509 authorities are intermediates under this upstream CA.
    pub upstream: Option<Arc<UpstreamAuthority>>,
    /// `spiffe_refresh_hint` published with the bundle.
    pub refresh_hint: Duration,
}

/// One authority as reported to operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorityStatus {
    /// X.509 or JWT.
    pub kind: AuthorityKind,
    /// Subject key ID (hex) or `kid`.
    pub id: String,
    /// Prepared, active or old.
    pub state: SlotState,
    /// Whether an operator tainted it.
    pub tainted: bool,
    /// When it was made.
    pub issued_at: SystemTime,
    /// When it expires.
    pub not_after: SystemTime,
}

/// An X.509-SVID with the ID of the authority that signed it.
#[derive(Debug, Clone)]
pub struct IssuedX509Svid {
    /// The certificate and its chain.
    pub svid: SignedSvid,
    /// The signing authority's ID.
    pub authority_id: String,
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) journal: Journal,
    pub(super) x509: BTreeMap<String, Arc<X509Authority>>,
    pub(super) jwt: BTreeMap<String, Arc<JwtAuthority>>,
}

/// The server's signing authorities; see the module documentation.
#[derive(Debug)]
pub struct CaManager {
    pub(super) config: CaConfig,
    pub(super) keys: Arc<dyn KeyManager>,
    pub(super) clock: Arc<dyn Clock>,
    /// Where the journal is saved before any change takes effect.
    pub(super) journal_store: Arc<dyn JournalStore>,
    /// What signers read; written only to swap in a change already saved to disk.
    pub(super) state: RwLock<State>,
    /// Held by a change (rotation, operator command) from its first read of the journal to
    /// its swap, so that two changes cannot interleave, while signers keep reading `state`.
    pub(super) changes: Mutex<()>,
    /// The other servers' authorities (HA), published next to this server's own.
    pub(super) peers: RwLock<Peers>,
}

impl CaManager {
    /// Loads the journal and every authority it names, then runs the schedule once so that
    /// active authorities exist.
    pub fn open(
        config: CaConfig,
        keys: Arc<dyn KeyManager>,
        clock: Arc<dyn Clock>,
        journal_store: Arc<dyn JournalStore>,
    ) -> Result<Self, CaError> {
        let journal = journal_store.load()?;
        let mut state = State { journal, ..State::default() };
        for record in state.journal.x509.records.clone() {
            let key = load_key(keys.as_ref(), &record)?;
            let upstream = record.upstream_chain.iter().cloned().map(CertificateDer::from);
            let cert = CertificateDer::from(record.public_der.clone());
            let authority = X509Authority::load(cert, upstream.collect(), key, config.backdate)?;
            state.x509.insert(record.id.clone(), Arc::new(authority));
        }
        for record in state.journal.jwt.records.clone() {
            let key = load_key(keys.as_ref(), &record)?;
            let td = config.trust_domain.clone();
            let authority = JwtAuthority::new(
                td,
                record.id.clone(),
                key,
                record.issued_at(),
                record.not_after(),
            )?;
            state.jwt.insert(record.id.clone(), Arc::new(authority));
        }
        let manager = Self {
            config,
            keys,
            clock,
            journal_store,
            state: RwLock::new(state),
            changes: Mutex::new(()),
            peers: RwLock::new(Peers::default()),
        };
        manager.rotate()?;
        Ok(manager)
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.config.trust_domain
    }

    /// The longest SVID lifetime this CA hands out (a sixth of `ca_ttl`, see
    /// [`super::max_svid_ttl`]): an entry that asks for more would get less.
    pub fn max_svid_ttl(&self) -> Duration {
        super::max_svid_ttl(self.config.ca_ttl)
    }

    pub(super) fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts a change: serializes it with every other change (signers are not held up).
    pub(super) fn begin_change(&self) -> MutexGuard<'_, ()> {
        self.changes.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A copy of the current journal, the base of a change.
    pub(super) fn journal(&self) -> Journal {
        self.read().journal.clone()
    }

    /// Saves `next` as the journal (disk I/O, with no lock that signers take), then swaps it
    /// and the `new` authority in under the write lock, drops the `removed` authorities of
    /// `kind` from memory, and deletes their keys (disk I/O again, after the swap). The
    /// caller holds [`Self::begin_change`].
    pub(super) fn commit(
        &self,
        kind: AuthorityKind,
        next: Journal,
        new: Option<Loaded>,
        removed: &[AuthorityRecord],
    ) -> Result<(), CaError> {
        self.journal_store.save(&next)?;
        {
            let mut state = self.write();
            state.journal = next;
            match new {
                Some(Loaded::X509(id, a)) => {
                    state.x509.insert(id, a);
                }
                Some(Loaded::Jwt(id, a)) => {
                    state.jwt.insert(id, a);
                }
                None => {}
            }
            for record in removed {
                match kind {
                    AuthorityKind::X509 => state.x509.remove(&record.id).map(drop),
                    AuthorityKind::Jwt => state.jwt.remove(&record.id).map(drop),
                };
            }
        }
        for record in removed {
            self.delete_key(record);
        }
        Ok(())
    }

    /// Deletes a removed authority's key (a failure is logged: the key is merely orphaned).
    fn delete_key(&self, record: &AuthorityRecord) {
        if let Ok(key_id) = KeyId::new(&record.key_id)
            && let Err(e) = self.keys.delete(&key_id)
        {
            tracing::warn!(id = %record.id, error = %e, "could not delete a removed authority's key");
        }
    }

    pub(super) fn audit_slots(&self, kind: AuthorityKind, cause: &str) {
        let state = self.read();
        let set = state.journal.set(kind);
        tracing::info!(
            target: "keycard::audit",
            event = "authority_change",
            cause,
            kind = ?kind,
            active = set.active().map(|r| r.id.as_str()).unwrap_or("-"),
            prepared = set.prepared().map(|r| r.id.as_str()).unwrap_or("-"),
            published = set.records.len(),
            bundle_sequence = state.journal.bundle_sequence,
        );
    }

    /// Every authority of `kind`, oldest first.
    pub fn authorities(&self, kind: AuthorityKind) -> Vec<AuthorityStatus> {
        let state = self.read();
        state
            .journal
            .set(kind)
            .records
            .iter()
            .map(|r| AuthorityStatus {
                kind,
                id: r.id.clone(),
                state: r.state,
                tainted: r.tainted,
                issued_at: r.issued_at(),
                not_after: r.not_after(),
            })
            .collect()
    }

    /// Signs an X.509-SVID with the active authority.
    pub fn sign_x509_svid(&self, req: &SvidRequest) -> Result<IssuedX509Svid, CaError> {
        let state = self.read();
        let active = state.journal.x509.active().ok_or(CaError::NoActiveAuthority)?;
        let authority = state.x509.get(&active.id).ok_or(CaError::NoActiveAuthority)?;
        let svid = authority.sign_x509_svid(req, self.clock.as_ref())?;
        Ok(IssuedX509Svid { svid, authority_id: active.id.clone() })
    }

    /// Signs a JWT-SVID with the active JWT authority.
    pub fn sign_jwt_svid(
        &self,
        spiffe_id: &SpiffeId,
        audiences: &[String],
        ttl: Duration,
    ) -> Result<MintedJwtSvid, CaError> {
        self.sign_bound_jwt_svid(spiffe_id, audiences, ttl, None)
    }

    /// [`CaManager::sign_jwt_svid`], bound to a certificate when `x5t_s256` (its RFC 8705
    /// thumbprint) is given: the token carries `cnf: {"x5t#S256": ...}`.
    pub fn sign_bound_jwt_svid(
        &self,
        spiffe_id: &SpiffeId,
        audiences: &[String],
        ttl: Duration,
        x5t_s256: Option<&str>,
    ) -> Result<MintedJwtSvid, CaError> {
        let state = self.read();
        let active = state.journal.jwt.active().ok_or(CaError::NoActiveAuthority)?;
        let authority = state.jwt.get(&active.id).ok_or(CaError::NoActiveAuthority)?;
        authority.sign_bound_jwt_svid(spiffe_id, audiences, ttl, self.clock.now(), x5t_s256)
    }

    /// The X.509 roots: the upstream root, or this server's authorities and its peers'.
    pub(super) fn x509_bundle_of(&self, journal: &Journal) -> X509Bundle {
        let mut bundle = X509Bundle::new(self.config.trust_domain.clone());
        let peers = self.read_peers();
        let now = self.clock.now();
        let roots: Vec<CertificateDer<'static>> = match &self.config.upstream {
            Some(up) => vec![up.root().clone()],
            None => journal
                .x509
                .records
                .iter()
                .chain(peers.records(AuthorityKind::X509, now).map(|(_, r)| r))
                .map(|r| r.public_der.clone().into())
                .collect(),
        };
        for root in roots {
            // A record's certificate was parsed when it was made or loaded.
            let _ = bundle.add_authority(root);
        }
        bundle
    }

    /// The X.509 part of the bundle alone, without building the SPIFFE bundle document:
    /// what verifiers of agent certificates need on every handshake.
    pub fn x509_bundle(&self) -> X509Bundle {
        self.x509_bundle_of(&self.read().journal)
    }

    /// The trust domain's bundle: every authority not revoked or expired, this server's
    /// and its peers', with the sequence number that rises on every change (the sum of
    /// every server's).
    pub fn bundle(&self) -> Result<SpiffeBundle, CaError> {
        let state = self.read();
        let x509 = self.x509_bundle_of(&state.journal);
        let mut jwt = JwtBundle::new(self.config.trust_domain.clone());
        for (kid, authority) in &state.jwt {
            jwt.add_authority(kid.clone(), authority.public_key().clone())
                .map_err(|e| CaError::Signing(e.to_string()))?;
        }
        let peers = self.read_peers();
        for (server, record) in peers.records(AuthorityKind::Jwt, self.clock.now()) {
            match Jwk::from_spki_der(&record.public_der) {
                Ok(key) => {
                    jwt.add_authority(record.id.clone(), key)
                        .map_err(|e| CaError::Signing(e.to_string()))?;
                }
                Err(e) => {
                    tracing::warn!(server, kid = %record.id, error = %e, "a peer's JWT authority has an unreadable key; not published");
                }
            }
        }
        let sequence = state.journal.bundle_sequence + peers.sequence();
        SpiffeBundle::from_parts(&x509, &jwt, Some(sequence), Some(self.config.refresh_hint))
            .map_err(|e| CaError::Signing(e.to_string()))
    }

    /// IDs of tainted authorities of `kind`, this server's and its peers'.
    fn tainted_of(&self, kind: AuthorityKind) -> Vec<String> {
        let state = self.read();
        let peers = self.read_peers();
        let now = self.clock.now();
        let own = state.journal.set(kind).records.iter();
        own.chain(peers.records(kind, now).map(|(_, r)| r))
            .filter(|r| r.tainted)
            .map(|r| r.id.clone())
            .collect()
    }

    /// IDs of tainted X.509 authorities: agents renew SVIDs they signed.
    pub fn tainted_x509_authorities(&self) -> Vec<String> {
        self.tainted_of(AuthorityKind::X509)
    }

    /// IDs of every tainted authority, for agents: X.509 ones (hex subject key IDs, 40
    /// characters), whose SVIDs they renew, then JWT ones (`kid`s, 32 characters), whose
    /// cached tokens they stop handing out. The two forms never collide.
    pub fn tainted_authorities(&self) -> Vec<String> {
        let mut ids = self.tainted_of(AuthorityKind::X509);
        ids.extend(self.tainted_of(AuthorityKind::Jwt));
        ids
    }
}

/// A newly made authority, before it is stored in the manager.
pub(super) enum Loaded {
    X509(String, Arc<X509Authority>),
    Jwt(String, Arc<JwtAuthority>),
}

pub(super) fn kind_name(kind: AuthorityKind) -> &'static str {
    match kind {
        AuthorityKind::X509 => "x509",
        AuthorityKind::Jwt => "jwt",
    }
}

pub(super) fn missing(kind: AuthorityKind, id: &str) -> CaError {
    super::journal::JournalError::Unknown { kind, id: id.to_owned() }.into()
}

fn load_key(
    keys: &dyn KeyManager,
    record: &AuthorityRecord,
) -> Result<Arc<super::SigningKey>, CaError> {
    let key_id = KeyId::new(&record.key_id)?;
    keys.get(&key_id)?.ok_or_else(|| CaError::MissingAuthorityKey(record.key_id.clone()))
}

/// A CA for tests elsewhere in the crate: in-memory keys and journal, the system clock,
/// 24 h ec-p256 authorities, a 10 s backdate.
#[cfg(test)]
pub(crate) fn test_ca(trust_domain: TrustDomain) -> Arc<CaManager> {
    let config = CaConfig {
        trust_domain,
        x509_key_type: KeyType::EcP256,
        jwt_key_type: KeyType::EcP256,
        ca_ttl: Duration::from_secs(24 * 3600),
        backdate: Duration::from_secs(10),
        upstream: None,
        refresh_hint: Duration::from_secs(60),
    };
    let keys = Arc::new(super::MemoryKeyManager::new());
    let clock = Arc::new(crate::clock::SystemClock);
    let journal = Arc::new(super::journal::MemoryJournal::default());
    Arc::new(CaManager::open(config, keys, clock, journal).expect("a test CA starts"))
}

mod commands;
#[cfg(test)]
mod lock_tests;
pub mod peers;
#[cfg(test)]
mod peers_tests;

pub use peers::Peers;

//! A change to the authorities does its disk work (key file, journal) without holding the
//! lock that signers read: a signature requested while that work is stuck completes.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use keycard_workload_api::{SpiffeId, TrustDomain};
use rustls_pki_types::SubjectPublicKeyInfoDer;

use super::*;
use crate::ca::journal::MemoryJournal;
use crate::ca::{MemoryKeyManager, SigningKey};
use crate::clock::ManualClock;

/// How long a test waits for something that should happen at once.
const PATIENCE: Duration = Duration::from_secs(10);

/// A gate a disk operation stops at, once armed: it says it arrived, then waits for the
/// test to let it through (or for `PATIENCE`, so a broken test cannot hang).
#[derive(Debug, Default)]
struct Gate(Mutex<Option<(Sender<()>, Receiver<()>)>>);

impl Gate {
    /// Arms the gate: the first operation to reach it reports on the returned receiver and
    /// waits until the returned sender sends.
    fn arm(&self) -> (Receiver<()>, Sender<()>) {
        let (arrived_tx, arrived_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some((arrived_tx, release_rx));
        (arrived_rx, release_tx)
    }

    fn pass(&self) {
        let armed = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some((arrived, release)) = armed {
            let _ = arrived.send(());
            let _ = release.recv_timeout(PATIENCE);
        }
    }
}

/// A journal whose saves stop at a gate.
#[derive(Debug, Default)]
struct GatedJournal {
    inner: MemoryJournal,
    gate: Gate,
}

impl JournalStore for GatedJournal {
    fn load(&self) -> Result<Journal, super::super::journal::JournalError> {
        self.inner.load()
    }

    fn save(&self, journal: &Journal) -> Result<(), super::super::journal::JournalError> {
        self.gate.pass();
        self.inner.save(journal)
    }
}

/// A key manager whose key generation stops at a gate.
#[derive(Debug, Default)]
struct GatedKeys {
    inner: MemoryKeyManager,
    gate: Gate,
}

impl KeyManager for GatedKeys {
    fn generate(&self, id: &KeyId, key_type: KeyType) -> Result<Arc<SigningKey>, CaError> {
        self.gate.pass();
        self.inner.generate(id, key_type)
    }

    fn get(&self, id: &KeyId) -> Result<Option<Arc<SigningKey>>, CaError> {
        self.inner.get(id)
    }

    fn delete(&self, id: &KeyId) -> Result<(), CaError> {
        self.inner.delete(id)
    }
}

fn config() -> CaConfig {
    CaConfig {
        trust_domain: TrustDomain::new("example.org").unwrap(),
        x509_key_type: KeyType::EcP256,
        jwt_key_type: KeyType::EcP256,
        ca_ttl: Duration::from_secs(600),
        backdate: Duration::from_secs(1),
        upstream: None,
        refresh_hint: Duration::from_secs(5),
    }
}

fn request() -> SvidRequest {
    let key = SigningKey::generate(KeyType::EcP256).unwrap();
    SvidRequest {
        public_key: SubjectPublicKeyInfoDer::from(key.public_key_der()),
        spiffe_id: SpiffeId::parse("spiffe://example.org/web").unwrap(),
        dns_names: vec![],
        ttl: Duration::from_secs(60),
    }
}

/// Runs `change` on its own thread until it is stuck at the armed gate, then signs an
/// X.509-SVID and a JWT-SVID and reads the bundle on another thread; returns whether those
/// finished while the change was still stuck. The change must succeed once released.
fn signs_while_stuck(
    ca: &Arc<CaManager>,
    gate: (Receiver<()>, Sender<()>),
    change: impl FnOnce(&CaManager) -> Result<(), CaError> + Send + 'static,
) -> bool {
    let (arrived, release) = gate;
    let changing = {
        let ca = ca.clone();
        thread::spawn(move || change(&ca))
    };
    arrived.recv_timeout(PATIENCE).expect("the change reached its disk work");
    let (done_tx, done_rx) = mpsc::channel();
    let signer = {
        let ca = ca.clone();
        thread::spawn(move || {
            let x509 = ca.sign_x509_svid(&request()).is_ok();
            let audience = ["db".to_owned()];
            let web = SpiffeId::parse("spiffe://example.org/web").unwrap();
            let jwt = ca.sign_jwt_svid(&web, &audience, Duration::from_secs(60)).is_ok();
            let bundle = ca.bundle().is_ok();
            let _ = done_tx.send(x509 && jwt && bundle);
        })
    };
    let signed = done_rx.recv_timeout(Duration::from_secs(5));
    let _ = release.send(());
    changing.join().expect("the change does not panic").expect("the change succeeds");
    signer.join().expect("the signer does not panic");
    signed == Ok(true)
}

#[test]
fn a_rotation_making_its_key_does_not_hold_up_signers() {
    let clock = ManualClock::starting_now();
    let keys = Arc::new(GatedKeys::default());
    let journal = Arc::new(MemoryJournal::default());
    let ca = Arc::new(
        CaManager::open(config(), keys.clone(), Arc::new(clock.clone()), journal).unwrap(),
    );
    // Past half-life the rotation makes the next authority: its key generation stops.
    clock.advance(Duration::from_secs(301));
    let gate = keys.gate.arm();
    let signed = signs_while_stuck(&ca, gate, |ca| ca.rotate().map(drop));
    assert!(signed, "a signer waited for the rotation's key file");
    assert_eq!(ca.authorities(AuthorityKind::X509).len(), 2, "the rotation prepared one");
}

#[test]
fn a_change_writing_its_journal_does_not_hold_up_signers() {
    let journal = Arc::new(GatedJournal::default());
    let keys = Arc::new(MemoryKeyManager::new());
    let ca = Arc::new(
        CaManager::open(config(), keys, Arc::new(crate::clock::SystemClock), journal.clone())
            .unwrap(),
    );
    let gate = journal.gate.arm();
    let signed = signs_while_stuck(&ca, gate, |ca| ca.prepare(AuthorityKind::Jwt).map(drop));
    assert!(signed, "a signer waited for the journal write");
    assert_eq!(ca.authorities(AuthorityKind::Jwt).len(), 2);
    assert_eq!(
        journal.inner.load().unwrap(),
        ca.read().journal,
        "the saved journal is the live one"
    );
}

#[test]
fn changes_do_not_interleave() {
    let journal = Arc::new(GatedJournal::default());
    let keys = Arc::new(MemoryKeyManager::new());
    let ca = Arc::new(
        CaManager::open(config(), keys, Arc::new(crate::clock::SystemClock), journal.clone())
            .unwrap(),
    );
    let (arrived, release) = journal.gate.arm();
    let first = {
        let ca = ca.clone();
        thread::spawn(move || ca.prepare(AuthorityKind::X509))
    };
    arrived.recv_timeout(PATIENCE).unwrap();
    // A second prepare started now must see the first one's authority, not the old journal.
    let second = {
        let ca = ca.clone();
        thread::spawn(move || ca.prepare(AuthorityKind::X509))
    };
    thread::sleep(Duration::from_millis(50));
    release.send(()).unwrap();
    first.join().unwrap().unwrap();
    let err = second.join().unwrap().unwrap_err();
    assert!(err.to_string().contains("prepared"), "{err}");
    assert_eq!(ca.authorities(AuthorityKind::X509).len(), 2);
}

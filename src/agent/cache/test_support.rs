//! Test helpers: SVIDs minted by a real CA, and a clock that can hold a caller inside
//! `now()` so that a test can act while a writer is mid-way through its work.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use keycard_workload_api::SpiffeId;

use super::NewSvid;
use crate::clock::{Clock, ManualClock};

/// A fresh SVID minted by `ca` for `spiffe_id`, ready for [`super::SvidCache::update_svids`]
/// (renewal due at half its life). For tests only.
pub(crate) fn test_svid(
    ca: &crate::ca::CaManager,
    entry_id: &str,
    spiffe_id: &str,
    ttl: Duration,
) -> NewSvid {
    use crate::ca::{KeyType, SigningKey, SvidRequest};
    let key = Arc::new(SigningKey::generate(KeyType::EcP256).expect("key"));
    let issued = ca
        .sign_x509_svid(&SvidRequest {
            public_key: rustls_pki_types::SubjectPublicKeyInfoDer::from(key.public_key_der()),
            spiffe_id: SpiffeId::parse(spiffe_id).expect("a valid test ID"),
            dns_names: Vec::new(),
            ttl,
        })
        .expect("the test CA signs");
    let now = SystemTime::now();
    NewSvid {
        entry_id: entry_id.into(),
        chain: issued.svid.chain_without_root,
        key,
        serial: hex::encode(issued.svid.serial),
        issued_at: now,
        renew_at: now + ttl / 2,
    }
}

/// A manual clock whose next `now()`, once armed, reports that it was entered and then
/// waits until released: it holds whoever asks for the time exactly there.
#[derive(Debug)]
pub(crate) struct GateClock {
    pub(crate) time: ManualClock,
    armed: AtomicBool,
    entered: Mutex<Option<Sender<()>>>,
    release: Mutex<Option<Receiver<()>>>,
}

/// The test's side of a [`GateClock`]: learns when a caller is held, and lets it go.
pub(crate) struct Gate {
    pub(crate) entered: Receiver<()>,
    pub(crate) release: Sender<()>,
}

impl GateClock {
    /// A clock at the current time, not armed.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            time: ManualClock::starting_now(),
            armed: AtomicBool::new(false),
            entered: Mutex::new(None),
            release: Mutex::new(None),
        })
    }

    /// Holds the next caller of `now()` until the returned gate is released (or dropped).
    pub(crate) fn arm(&self) -> Gate {
        let (entered_tx, entered) = channel();
        let (release, release_rx) = channel();
        *self.entered.lock().unwrap_or_else(PoisonError::into_inner) = Some(entered_tx);
        *self.release.lock().unwrap_or_else(PoisonError::into_inner) = Some(release_rx);
        self.armed.store(true, Ordering::SeqCst);
        Gate { entered, release }
    }
}

impl Clock for GateClock {
    fn now(&self) -> SystemTime {
        if self.armed.swap(false, Ordering::SeqCst) {
            let entered = self.entered.lock().unwrap_or_else(PoisonError::into_inner).take();
            let release = self.release.lock().unwrap_or_else(PoisonError::into_inner).take();
            if let Some(tx) = entered {
                let _ = tx.send(());
            }
            if let Some(rx) = release {
                // Released by a send, or by the gate being dropped: either way, go on.
                let _ = rx.recv_timeout(Duration::from_secs(30));
            }
        }
        self.time.now()
    }
}

//! Agent API tests: a real server on 127.0.0.1:0 with real rustls, a real CA manager and a
//! real SQLite datastore, driven by the real agent client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keycard_workload_api::{SpiffeId, TrustDomain, X509Bundle, X509BundleSet};
use rustls_pki_types::{CertificateDer, UnixTime};
use tempfile::TempDir;
use tokio::net::TcpListener;

use super::{AgentApiOptions, MAX_BATCH, MAX_MESSAGE_SIZE, Rate, proto as pb, serve};
use crate::agent::ServerClient;
use crate::ca::{CaManager, SigningKey};
use crate::clock::SystemClock;
use crate::selector::{Selector, SelectorSet};
use crate::server::datastore::{DataStore, JoinTokenRecord, SqliteDataStore};
use crate::server::entry::{Entry, EntrySpec};
use crate::server::join_token;
use crate::telemetry::metrics::ServerMetrics;

mod attest;
mod binding;
mod cursor;
mod deadlines;
mod matrix;
mod proxy;
mod renewal;
mod sync;

/// A running agent API server and what the tests need to look at it.
pub struct Harness {
    pub addr: SocketAddr,
    pub td: TrustDomain,
    pub ca: Arc<CaManager>,
    pub store: Arc<dyn DataStore>,
    pub metrics: Arc<ServerMetrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), super::AgentApiError>>>,
    _dir: TempDir,
}

pub fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

pub fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

pub fn selectors(items: &[&str]) -> SelectorSet {
    items.iter().map(|s| Selector::parse(s).unwrap()).collect()
}

pub fn certs_dev(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("certs-dev").join(path)
}

pub fn pem_certs(path: &str) -> Vec<CertificateDer<'static>> {
    let text = std::fs::read_to_string(certs_dev(path)).unwrap();
    pem::parse_many(text)
        .unwrap()
        .into_iter()
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect()
}

pub fn pem_key(path: &str) -> SigningKey {
    SigningKey::from_pkcs8_pem(&std::fs::read_to_string(certs_dev(path)).unwrap()).unwrap()
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(edit: impl FnOnce(&mut AgentApiOptions)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::ca::manager::test_ca(td());
        let store: Arc<dyn DataStore> =
            Arc::new(SqliteDataStore::open(&dir.path().join("keycard.db")).unwrap());
        let metrics = Arc::new(ServerMetrics::new());
        let mut options = AgentApiOptions::new(td());
        options.x509pop_ca_bundle = Some(pem_certs("nodes/ca.pem"));
        options.attest_rate = Rate { per_second: 1000.0, burst: 1000.0 };
        edit(&mut options);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            listener,
            options,
            ca.clone(),
            store.clone(),
            metrics.clone(),
            Arc::new(SystemClock),
            async move {
                let _ = stopped.await;
            },
        ));
        Self { addr, td: td(), ca, store, metrics, stop: Some(stop), task: Some(task), _dir: dir }
    }

    /// The CA's X.509 bundle: what an agent is given as its bootstrap bundle.
    pub fn bundle(&self) -> X509Bundle {
        self.ca.bundle().unwrap().x509_bundle().unwrap()
    }

    pub fn bundle_set(&self) -> X509BundleSet {
        let mut set = X509BundleSet::new();
        set.insert(self.bundle());
        set
    }

    /// A client without an agent SVID.
    pub async fn client(&self) -> ServerClient {
        ServerClient::connect(&self.addr.to_string(), self.td.clone(), self.bundle()).await.unwrap()
    }

    /// A stored join token expiring after `ttl` (or already expired, for a negative case).
    pub fn token_expiring_at(&self, expires_at: SystemTime) -> (String, JoinTokenRecord) {
        let (token, mut record) =
            join_token::new_token(&self.td, Duration::from_secs(600), None, SystemTime::now())
                .unwrap();
        record.expires_at = expires_at;
        self.store.create_join_token(&record).unwrap();
        (token.secret().to_owned(), record)
    }

    pub fn token(&self) -> String {
        self.token_expiring_at(SystemTime::now() + Duration::from_secs(600)).0
    }

    /// A client attested with a fresh join token.
    pub async fn agent(&self) -> ServerClient {
        let mut client = self.client().await;
        client.attest_join_token(&self.token()).await.unwrap();
        client
    }

    pub fn entry(&self, spiffe_id: &str, parent: &SpiffeId, sel: &[&str]) -> Entry {
        self.entry_with(spiffe_id, parent, sel, |_| {})
    }

    pub fn entry_with(
        &self,
        spiffe_id: &str,
        parent: &SpiffeId,
        sel: &[&str],
        edit: impl FnOnce(&mut EntrySpec),
    ) -> Entry {
        let mut spec = EntrySpec::new(id(spiffe_id), parent.clone(), selectors(sel));
        edit(&mut spec);
        self.store.create_entry(&spec, SystemTime::now()).unwrap()
    }

    pub fn server_id(&self) -> SpiffeId {
        super::server_id(&self.td)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A DER CSR for a fresh P-256 key, edited by `edit`.
pub fn csr_with(edit: impl FnOnce(&mut rcgen::CertificateParams)) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    edit(&mut params);
    params.serialize_request(&key).unwrap().der().to_vec()
}

pub fn csr() -> Vec<u8> {
    csr_with(|_| {})
}

pub fn now() -> UnixTime {
    UnixTime::now()
}

#[tokio::test]
async fn the_server_presents_its_own_svid_and_rotates_it() {
    let h = Harness::start().await;
    // A client that trusts the bundle and expects the server ID connects...
    let mut client = h.agent().await;
    client.fetch_bundle().await.unwrap();
    // ...and one that trusts another trust domain's bundle does not.
    let other = X509Bundle::parse_pem(
        TrustDomain::new("example.com").unwrap(),
        &std::fs::read_to_string(certs_dev("example.com/bundle.pem")).unwrap(),
    )
    .unwrap();
    let err = ServerClient::connect(&h.addr.to_string(), td(), other).await.unwrap_err();
    assert!(matches!(err, crate::agent::ClientError::Connect { .. }), "{err}");
    let ca = h.ca.clone();
    let svid = super::server_svid::ServerSvid::mint(
        ca,
        h.server_id(),
        Duration::from_secs(600),
        Arc::new(SystemClock),
    )
    .unwrap();
    let before = svid.chain();
    svid.renew().unwrap();
    assert_ne!(before, svid.chain());
    let id = keycard_workload_api::verify_chain(&svid.chain(), &h.bundle_set(), now()).unwrap();
    assert_eq!(id, h.server_id());
}

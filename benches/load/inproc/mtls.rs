//! Target 8: mutual-TLS handshakes per second through keycard's rustls configs (the
//! workload-api crate's `server_config_from` / `client_config_from` with an X.509-SVID and
//! its bundle) against plain rustls mTLS with the same certificates (rustls'
//! `WebPkiClientVerifier` and its default server verifier). Both run in memory, on one
//! thread, with resumption off (keycard turns it off; the baseline is set the same way so
//! that every handshake is a full one on both sides).

use std::sync::Arc;
use std::time::{Duration, Instant};

use keycard::ca::{CaManager, SvidRequest};
use keycard_workload_api::tls::{client_config_from, server_config_from};
use keycard_workload_api::{Authorizer, X509BundleSet, X509Context, X509Svid};
use rcgen::PublicKeyData as _;
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{
    ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig, ServerConnection,
};
use rustls_pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer,
};

use super::common::{alternate, system_ca, td, workload_id};
use crate::table::{Goal, Row};

/// The DNS name the server SVID also carries, so that rustls' stock verifier accepts it.
const SERVER_DNS: &str = "server.bench.example";

/// A certificate chain (leaf first, without the root) and its PKCS#8 key.
struct Credential {
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
}

fn mint(ca: &CaManager, n: usize, dns_names: Vec<String>) -> Credential {
    let key = rcgen::KeyPair::generate().expect("a P-256 key");
    let request = SvidRequest {
        public_key: SubjectPublicKeyInfoDer::from(key.subject_public_key_info()),
        spiffe_id: workload_id(n),
        dns_names,
        ttl: Duration::from_secs(3600),
    };
    let issued = ca.sign_x509_svid(&request).expect("the CA signs");
    Credential {
        chain: issued.svid.chain_without_root,
        key: PrivatePkcs8KeyDer::from(key.serialize_der()),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Both sides' configs through keycard's builders.
fn keycard_configs(
    server: &Credential,
    client: &Credential,
    bundles: &X509BundleSet,
) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let context = |c: &Credential| {
        let svid = X509Svid::from_der(c.chain.clone(), c.key.clone_key()).expect("a valid SVID");
        Arc::new(X509Context { svids: vec![svid], bundles: bundles.clone() })
    };
    // The receivers keep the contexts alive; the senders may go.
    let (_server_tx, server_rx) = tokio::sync::watch::channel(context(server));
    let (_client_tx, client_rx) = tokio::sync::watch::channel(context(client));
    let server_id = workload_id(0);
    let server_config = server_config_from(server_rx, None, Authorizer::MemberOf(td()))
        .expect("keycard's server config");
    let client_config = client_config_from(client_rx, None, Authorizer::Exact(server_id))
        .expect("keycard's client config");
    (Arc::new(server_config), Arc::new(client_config))
}

/// Both sides' configs with rustls' own verifiers and the same certificates.
fn plain_configs(
    server: &Credential,
    client: &Credential,
    roots: &[CertificateDer<'static>],
) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).expect("the CA certificate is a valid root");
    }
    let store = Arc::new(store);
    let verifier = WebPkiClientVerifier::builder_with_provider(store.clone(), provider())
        .build()
        .expect("rustls' client verifier");
    let mut server_config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .expect("TLS versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(server.chain.clone(), PrivateKeyDer::Pkcs8(server.key.clone_key()))
        .expect("the server certificate");
    server_config.session_storage = Arc::new(NoServerSessionStorage {});
    server_config.send_tls13_tickets = 0;
    let mut client_config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .expect("TLS versions")
        .with_root_certificates(store)
        .with_client_auth_cert(client.chain.clone(), PrivateKeyDer::Pkcs8(client.key.clone_key()))
        .expect("the client certificate");
    client_config.resumption = Resumption::disabled();
    client_config.enable_sni = false;
    (Arc::new(server_config), Arc::new(client_config))
}

/// Moves every pending TLS record from `from` to `to`.
fn transfer(from: &mut Connection, to: &mut Connection, buf: &mut Vec<u8>) {
    buf.clear();
    while from.wants_write() {
        from.write_tls(buf).expect("writing to memory");
    }
    let mut rest = &buf[..];
    while !rest.is_empty() {
        to.read_tls(&mut rest).expect("reading from memory");
        to.process_new_packets().expect("the handshake goes on");
    }
}

/// One full mutual-TLS handshake in memory.
fn handshake(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>, buf: &mut Vec<u8>) {
    let name = ServerName::try_from(SERVER_DNS).expect("a DNS name");
    let mut c =
        Connection::from(ClientConnection::new(client.clone(), name).expect("a client connection"));
    let mut s =
        Connection::from(ServerConnection::new(server.clone()).expect("a server connection"));
    for _ in 0..10 {
        if !c.is_handshaking() && !s.is_handshaking() {
            return;
        }
        transfer(&mut c, &mut s, buf);
        transfer(&mut s, &mut c, buf);
    }
    panic!("the handshake did not finish in 10 flights");
}

fn rate(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>, count: usize) -> f64 {
    let mut buf = Vec::with_capacity(16 * 1024);
    let started = Instant::now();
    for _ in 0..count {
        handshake(server, client, &mut buf);
    }
    count as f64 / started.elapsed().as_secs_f64()
}

/// The row of target 8.
pub fn row(quick: bool) -> Row {
    let (per_round, rounds) = if quick { (100, 3) } else { (1000, 5) };
    let ca = system_ca();
    let server = mint(&ca, 0, vec![SERVER_DNS.to_owned()]);
    let client = mint(&ca, 1, Vec::new());
    let bundle = ca.x509_bundle();
    let roots = bundle.authorities().to_vec();
    let mut bundles = X509BundleSet::new();
    bundles.insert(bundle);
    let (ks, kc) = keycard_configs(&server, &client, &bundles);
    let (ps, pc) = plain_configs(&server, &client, &roots);
    // Both must work before either is timed.
    handshake(&ks, &kc, &mut Vec::new());
    handshake(&ps, &pc, &mut Vec::new());
    let (keycard, plain) =
        alternate(rounds, || rate(&ks, &kc, per_round), || rate(&ps, &pc, per_round));
    Row {
        what: "mTLS handshakes/s, keycard's rustls configs (in memory, one thread)".into(),
        keycard,
        baseline: Some(plain),
        baseline_name: "plain rustls mTLS, WebPkiClientVerifier, same certs".into(),
        unit: "handshakes/s".into(),
        goal: Goal::AtLeast(0.9),
    }
}

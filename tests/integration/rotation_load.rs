//! CA rotation under load: ten X.509 and JWT authority rotations by the operator commands
//! (`keycard authority x509|jwt prepare|activate`) while two workloads talk mTLS
//! ([`MtlsLoad`]) and a third fetches and validates JWT-SVIDs ([`JwtLoad`]); then the old
//! authorities are tainted and revoked.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keycard_workload_api::proto::X509svidResponse;
use keycard_workload_api::{JwtSource, SpiffeBundle, SpiffeId, TrustDomain, WorkloadApiClient};
use tonic::Streaming;
use x509_parser::prelude::{FromDer as _, ParsedExtension, X509Certificate};

use crate::agent::{FAST_ROTATION, PATIENCE, Setup, open_stream};
use crate::jwt_load::{JwtLoad, kid};
use crate::pair::MtlsLoad;
use crate::procs::Server;

/// Rotations of each kind.
const ROTATIONS: usize = 10;
/// Half the X.509-SVID lifetime of [`FAST_ROTATION`] (6 s): when the agent renews by itself.
const RENEWAL_PERIOD: Duration = Duration::from_secs(3);
const FRONT: &str = "spiffe://example.org/workload/front";
const BACK: &str = "spiffe://example.org/workload/back";
const JWT: &str = "spiffe://example.org/workload/jwt";
/// An SVID living 90 s: it renews by itself only after 22 s at the earliest, so only the
/// taint can replace it within the test.
const HELD: &str = "spiffe://example.org/workload/held";

/// The hex key identifier (subject or authority, as `subject` says) of a certificate.
fn key_id(der: &[u8], subject: bool) -> String {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) if subject => return hex::encode(k.0),
            ParsedExtension::AuthorityKeyIdentifier(a) if !subject => {
                return hex::encode(a.key_identifier.as_ref().map(|k| k.0).unwrap_or_default());
            }
            _ => {}
        }
    }
    String::new()
}

/// Splits concatenated DER certificates.
fn certs(mut der: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while !der.is_empty() {
        let (rest, _) = X509Certificate::from_der(der).unwrap();
        out.push(&der[..der.len() - rest.len()]);
        der = rest;
    }
    out
}

/// A FetchX509SVID stream of the test's uid and the last state it delivered.
struct Watcher {
    stream: Streaming<X509svidResponse>,
    last: X509svidResponse,
}

impl Watcher {
    async fn open(socket: &Path) -> Watcher {
        let mut stream = open_stream(socket).await;
        let last = stream.message().await.unwrap().unwrap();
        Watcher { stream, last }
    }

    /// The authority (AKI) of each SVID's leaf but [`HELD`]'s.
    fn leaf_authorities(&self) -> Vec<String> {
        let svids = self.last.svids.iter().filter(|s| s.spiffe_id != HELD);
        svids.map(|s| key_id(certs(&s.x509_svid)[0], false)).collect()
    }

    /// The authority (AKI) of [`HELD`]'s leaf.
    fn held_authority(&self) -> String {
        let held = self.last.svids.iter().find(|s| s.spiffe_id == HELD);
        held.map(|s| key_id(certs(&s.x509_svid)[0], false)).unwrap_or_default()
    }

    /// The X.509 authorities (SKI) of the bundle that comes with the SVIDs.
    fn bundle(&self) -> BTreeSet<String> {
        let der = self.last.svids.first().map(|s| s.bundle.as_slice()).unwrap_or_default();
        certs(der).into_iter().map(|c| key_id(c, true)).collect()
    }

    /// Reads updates until `done` holds, within [`PATIENCE`].
    async fn until(&mut self, what: &str, done: impl Fn(&Watcher) -> bool) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !done(self) {
            let next = tokio::time::timeout_at(deadline, self.stream.message()).await;
            let next = next.unwrap_or_else(|_| panic!("not within PATIENCE: {what}"));
            self.last = next.unwrap().expect("the stream ended");
        }
    }

    /// Takes the updates that arrive within `wait`.
    async fn poll(&mut self, wait: Duration) {
        if let Ok(next) = tokio::time::timeout(wait, self.stream.message()).await {
            self.last = next.unwrap().expect("the stream ended");
        }
    }
}

/// `keycard authority <kind> prepare`: the new authority's ID.
fn prepare(server: &Server, kind: &str) -> String {
    server.admin(&["authority", kind, "prepare"])["id"].as_str().unwrap().to_owned()
}

/// The (ID, state) of every authority of `kind`.
fn authorities(server: &Server, kind: &str) -> Vec<(String, String)> {
    let shown = server.admin(&["authority", kind, "show"]);
    let list = shown["authorities"].as_array().unwrap();
    let field = |a: &serde_json::Value, k: &str| a[k].as_str().unwrap().to_owned();
    list.iter().map(|a| (field(a, "id"), field(a, "state"))).collect()
}

/// The X.509 authorities (SKI) and JWT keys (`kid`) of the server's `bundle show`.
fn server_bundle(server: &Server) -> (BTreeSet<String>, BTreeSet<String>) {
    let json = server.admin_text(&["bundle", "show", "--format", "spiffe"]);
    let td = TrustDomain::new("example.org").unwrap();
    let bundle = SpiffeBundle::parse(td, json.as_bytes()).unwrap();
    let x509 = bundle.x509_bundle().unwrap();
    let skis = x509.authorities().iter().map(|c| key_id(c, true)).collect();
    (skis, bundle.jwt_bundle().unwrap().authorities().keys().cloned().collect())
}

/// The authority (AKI) of the agent's own SVID, as stored in its data directory.
fn agent_svid_authority(admin_socket: &Path) -> String {
    let dir = admin_socket.parent().and_then(Path::parent).unwrap();
    let text = std::fs::read_to_string(dir.join("agent_svid.pem")).unwrap();
    key_id(pem::parse_many(text).unwrap()[0].contents(), false)
}

/// The kids of the JWT bundles a source holds.
fn kids(source: &JwtSource) -> BTreeSet<String> {
    let td = TrustDomain::new("example.org").unwrap();
    source.bundles().get(&td).map(|b| b.authorities().keys().cloned().collect()).unwrap_or_default()
}

/// Polls `done` every 20 ms within [`PATIENCE`].
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "not within PATIENCE: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `kid` of a token the agent hands out now for `audience`.
async fn token_kid(client: &mut WorkloadApiClient, audience: &str) -> String {
    let id = SpiffeId::parse(JWT).unwrap();
    kid(&client.fetch_jwt_svids(&[audience.to_owned()], Some(&id)).await.unwrap()[0].token)
}

#[test]
fn ten_ca_rotations_under_mtls_and_jwt_load_then_taint_and_revoke() {
    let setup = Setup::start_with("127.0.0.1:0", FAST_ROTATION);
    for name in ["front", "back", "jwt"] {
        setup.entry(name);
    }
    // SAFETY: getuid(2) cannot fail and touches no memory.
    let uid = format!("unix:uid:{}", unsafe { libc::getuid() });
    let (parent, ttl) = ("spiffe://example.org/node/1", "90s");
    let held = ["entry", "create", "--spiffe-id", HELD, "--parent-id", parent, "--selector", &uid];
    setup.server().admin(&[&held[..], &["--x509-ttl", ttl]].concat());
    let agent = setup.agent("");
    let server = setup.server();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut watcher = runtime.block_on(Watcher::open(&agent.socket));
    runtime.block_on(watcher.until("four SVIDs", |w| w.last.svids.len() == 4));
    let load = MtlsLoad::start(&agent.socket, FRONT, BACK, Duration::from_millis(20));
    let endpoint = format!("unix://{}", agent.socket.display());
    let jwt_id = SpiffeId::parse(JWT).unwrap();
    let (source, jwt, mut client, first_token) = runtime.block_on(async {
        let source = tokio::time::timeout(PATIENCE, JwtSource::new(Some(&endpoint))).await;
        let source = Arc::new(source.expect("no JwtSource within PATIENCE").unwrap());
        let pause = Duration::from_millis(30);
        let jwt = JwtLoad::start(&agent.socket, jwt_id.clone(), source.clone(), pause).await;
        let mut client = WorkloadApiClient::connect_path(&agent.socket).await.unwrap();
        let first = client.fetch_jwt_svids(&["first".to_owned()], Some(&jwt_id)).await;
        (source, jwt, client, first.unwrap().remove(0).token)
    });
    let active =
        |kind| crate::authority::active_authority_id(&server.admin(&["authority", kind, "show"]));
    let (mut x509_ids, mut jwt_kids) = (vec![active("x509")], vec![active("jwt")]);

    let started = Instant::now();
    for round in 1..=ROTATIONS {
        let (x, j) = (prepare(server, "x509"), prepare(server, "jwt"));
        // As an operator would: activate only once the workloads hold the new keys.
        runtime.block_on(async {
            watcher.until("the new CA in the bundle", |w| w.bundle().contains(&x)).await;
            eventually("the new kid in the JWT bundle", || kids(&source).contains(&j)).await;
        });
        if round == ROTATIONS {
            // A token the agent caches, signed by the key about to be replaced and tainted.
            let held = runtime.block_on(token_kid(&mut client, "held"));
            assert_eq!(&held, jwt_kids.last().unwrap());
        }
        for (kind, id) in [("x509", &x), ("jwt", &j)] {
            server.admin(&["authority", kind, "activate", "--id", id]);
        }
        x509_ids.push(x.clone());
        jwt_kids.push(j.clone());
        if round == ROTATIONS {
            break; // The last one is followed by the taint, below.
        }
        runtime.block_on(async {
            let all_new = |w: &Watcher| w.leaf_authorities().iter().all(|a| *a == x);
            watcher.until("every SVID from the new CA", all_new).await;
            assert_eq!(token_kid(&mut client, &format!("probe-{round}")).await, j);
        });
        // Stop at the first failure: the assertions below show it.
        if !load.failures().is_empty() || !jwt.refusals().is_empty() {
            break;
        }
    }
    let rotating = started.elapsed();

    // Taint every old authority: everything they signed must be replaced at once.
    let (x, j) = (x509_ids.last().unwrap().clone(), jwt_kids.last().unwrap().clone());
    let tainted = Instant::now();
    for kind in ["x509", "jwt"] {
        for (id, _) in authorities(server, kind).into_iter().filter(|(_, s)| s == "old") {
            server.admin(&["authority", kind, "taint", "--id", &id]);
        }
    }
    // When each was seen from the new authorities: the SVIDs, the long-lived one, the
    // agent's own, the cached token.
    let mut when: [Option<Duration>; 4] = [None; 4];
    runtime.block_on(async {
        let deadline = Instant::now() + PATIENCE;
        while when.iter().any(Option::is_none) {
            let now = [
                watcher.leaf_authorities().iter().all(|a| *a == x),
                watcher.held_authority() == x,
                agent_svid_authority(&agent.admin_socket) == x,
                token_kid(&mut client, "held").await == j,
            ];
            for (w, new) in when.iter_mut().zip(now) {
                if new && w.is_none() {
                    *w = Some(tainted.elapsed());
                }
            }
            assert!(
                Instant::now() < deadline,
                "after the taint, new (SVIDs, held, agent, token): {when:?}"
            );
            watcher.poll(Duration::from_millis(50)).await;
        }
    });
    let all_new = when.iter().flatten().max().copied().unwrap_or_default();
    // Let both workloads shake hands on their new SVIDs before the old CAs go.
    let seen = load.handshakes();
    runtime.block_on(eventually("20 more handshakes", || load.handshakes() >= seen + 20));
    let jwt_report = runtime.block_on(jwt.stop());

    // Revoke them: they must leave the server's bundle and every bundle the agent serves.
    for kind in ["x509", "jwt"] {
        for (id, _) in authorities(server, kind).into_iter().filter(|(_, s)| s == "old") {
            server.admin(&["authority", kind, "revoke", "--id", &id]);
        }
    }
    let only = |id: &String| BTreeSet::from([id.clone()]);
    assert_eq!(server_bundle(server), (only(&x), only(&j)), "the server's bundle after revoke");
    runtime.block_on(async {
        watcher.until("only the new CA in the SVID bundle", |w| w.bundle() == only(&x)).await;
        eventually("only the new kid in the JWT bundle", || kids(&source) == only(&j)).await;
        let bundles = client.fetch_x509_bundles().await.unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        let served: BTreeSet<String> =
            bundles.get(&td).unwrap().authorities().iter().map(|c| key_id(c, true)).collect();
        assert_eq!(served, only(&x), "FetchX509Bundles after revoke");
        // A token of a revoked key is refused by both; a new one is accepted by both.
        assert!(source.validate(&first_token, "first").is_err());
        assert!(client.validate_jwt_svid("first", &first_token).await.is_err());
        let id = SpiffeId::parse(JWT).unwrap();
        let fresh = client.fetch_jwt_svids(&["last".to_owned()], Some(&id)).await.unwrap();
        assert_eq!(source.validate(&fresh[0].token, "last").unwrap().spiffe_id, id);
        assert_eq!(client.validate_jwt_svid("last", &fresh[0].token).await.unwrap().0, id);
    });
    let seen = load.handshakes();
    runtime.block_on(eventually("20 handshakes after revoke", || load.handshakes() >= seen + 20));
    let report = load.stop();

    assert!(
        report.failures.is_empty(),
        "{} failed handshakes: {:?}",
        report.failures.len(),
        report.failures
    );
    assert!(jwt_report.refusals.is_empty(), "refused valid tokens: {:?}", jwt_report.refusals);
    let leaf_cas = |leaves: &BTreeSet<Vec<u8>>| -> BTreeSet<String> {
        leaves.iter().map(|l| key_id(l, false)).collect()
    };
    let every = x509_ids.iter().cloned().collect::<BTreeSet<_>>();
    assert_eq!(x509_ids.len(), ROTATIONS + 1, "rotations done: {}", x509_ids.len() - 1);
    assert_eq!(leaf_cas(&report.server_leaves), every, "CAs of the server's leaves");
    assert_eq!(leaf_cas(&report.client_leaves), every, "CAs of the client's leaves");
    let every_kid = jwt_kids.iter().cloned().collect::<BTreeSet<_>>();
    assert!(jwt_report.kids.is_superset(&every_kid), "kids seen: {:?}", jwt_report.kids);
    assert!(
        all_new <= RENEWAL_PERIOD,
        "new (SVIDs, held, agent, token) after {when:?}: more than one renewal period"
    );
    println!(
        "{ROTATIONS} X.509 and {ROTATIONS} JWT rotations in {rotating:.1?}: {} handshakes, 0 failed; \
         {} JWT-SVIDs fetched ({} kids), {} validations, 0 refused; every SVID, the agent's \
         own and the cached token from the new authorities {all_new:.2?} after the taint \
         (SVIDs, 90 s SVID, agent SVID, token: {when:.2?})",
        report.handshakes,
        jwt_report.fetched,
        jwt_report.kids.len(),
        jwt_report.validated,
    );
    drop(source);
    agent.stop();
}

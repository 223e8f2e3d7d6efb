//! Real rustls handshakes (tokio-rustls over an in-memory duplex stream) between configs
//! built from contexts of test-made SVIDs.

use rcgen::date_time_ymd;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use crate::x509::test_support::{Ca, bundles, ca_params, leaf, leaf_params, root};
use crate::{X509BundleSet, X509Svid};

/// A leaf for `id` under `ca`, valid from 2025 to 2035 (or expired in 2021).
fn svid(ca: &Ca, id: &str, expired: bool) -> X509Svid {
    let mut p = leaf_params(id);
    if expired {
        (p.not_before, p.not_after) = (date_time_ymd(2020, 1, 1), date_time_ymd(2021, 1, 1));
    } else {
        (p.not_before, p.not_after) = (date_time_ymd(2025, 1, 1), date_time_ymd(2035, 1, 1));
    }
    let l = leaf(p, ca);
    X509Svid::from_der(vec![l.cert], l.key).unwrap()
}

fn context(svids: Vec<X509Svid>, bundles: X509BundleSet) -> watch::Receiver<Arc<X509Context>> {
    watch::channel(Arc::new(X509Context { svids, bundles })).1
}

/// Handshakes and exchanges one byte; returns what each side saw of the other, or the
/// first error either side hit.
async fn handshake(
    server: ServerConfig,
    client: ClientConfig,
) -> Result<(SpiffeId, SpiffeId), String> {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let connector = TlsConnector::from(Arc::new(client));
    let name = ServerName::try_from("workload").unwrap();
    let (s, c) = tokio::join!(acceptor.accept(a), connector.connect(name, b));
    let (s, c) = match (s, c) {
        (Ok(s), Ok(c)) => (s, c),
        (s, c) => {
            let mut errors = Vec::new();
            if let Err(e) = s {
                errors.push(format!("server: {e}"));
            }
            if let Err(e) = c {
                errors.push(format!("client: {e}"));
            }
            return Err(errors.join("; "));
        }
    };
    let client_seen = peer_spiffe_id(c.get_ref().1).ok_or("no server ID")?;
    let server_seen = peer_spiffe_id(s.get_ref().1).ok_or("no client ID")?;
    Ok((server_seen, client_seen))
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

struct Pki {
    org: Ca,
    com: Ca,
}

fn pki() -> Pki {
    Pki { org: root(ca_params("example.org", "org")), com: root(ca_params("example.com", "com")) }
}

#[tokio::test]
async fn mutual_tls_sees_each_others_spiffe_id() {
    let p = pki();
    let set = bundles(&[("example.org", &p.org)]);
    let server = server_config_from(
        context(vec![svid(&p.org, "spiffe://example.org/a", false)], set.clone()),
        None,
        Authorizer::Exact(id("spiffe://example.org/b")),
    )
    .unwrap();
    let client = client_config_from(
        context(vec![svid(&p.org, "spiffe://example.org/b", false)], set),
        None,
        Authorizer::MemberOf(TrustDomain::new("example.org").unwrap()),
    )
    .unwrap();
    let (server_saw, client_saw) = handshake(server, client).await.unwrap();
    assert_eq!(server_saw, id("spiffe://example.org/b"));
    assert_eq!(client_saw, id("spiffe://example.org/a"));
}

#[tokio::test]
async fn a_rotation_is_used_by_the_next_handshake_without_a_new_config() {
    let p = pki();
    let set = bundles(&[("example.org", &p.org)]);
    let first = svid(&p.org, "spiffe://example.org/a", false);
    let first_leaf = first.leaf().to_vec();
    let (tx, rx) =
        watch::channel(Arc::new(X509Context { svids: vec![first], bundles: set.clone() }));
    let server = Arc::new(server_config_from(rx, None, Authorizer::Any).unwrap());
    let client_ctx = context(vec![svid(&p.org, "spiffe://example.org/b", false)], set.clone());
    let client = Arc::new(client_config_from(client_ctx, None, Authorizer::Any).unwrap());

    let leaf_seen = |server: Arc<ServerConfig>, client: Arc<ClientConfig>| async move {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let name = ServerName::try_from("workload").unwrap();
        let (s, c) = tokio::join!(
            TlsAcceptor::from(server).accept(a),
            TlsConnector::from(client).connect(name, b)
        );
        s.unwrap();
        c.unwrap().get_ref().1.peer_certificates().unwrap()[0].to_vec()
    };
    assert_eq!(leaf_seen(server.clone(), client.clone()).await, first_leaf);
    let second = svid(&p.org, "spiffe://example.org/a", false);
    let second_leaf = second.leaf().to_vec();
    tx.send(Arc::new(X509Context { svids: vec![second], bundles: set })).unwrap();
    assert_eq!(leaf_seen(server, client).await, second_leaf);
}

#[tokio::test]
async fn unauthorized_untrusted_and_expired_peers_are_refused_with_the_reason() {
    let p = pki();
    let org = bundles(&[("example.org", &p.org)]);
    let server_with = |authorizer: Authorizer, set: X509BundleSet| {
        server_config_from(
            context(vec![svid(&p.org, "spiffe://example.org/a", false)], set),
            None,
            authorizer,
        )
        .unwrap()
    };
    let client_as = |ca: &Ca, who: &str, expired: bool| {
        let set = bundles(&[("example.org", &p.org)]);
        client_config_from(context(vec![svid(ca, who, expired)], set), None, Authorizer::Any)
            .unwrap()
    };

    let e = handshake(
        server_with(Authorizer::Exact(id("spiffe://example.org/b")), org.clone()),
        client_as(&p.org, "spiffe://example.org/c", false),
    )
    .await
    .unwrap_err();
    assert!(e.contains("spiffe://example.org/c is not authorized"), "{e}");

    let e = handshake(
        server_with(Authorizer::Any, org.clone()),
        client_as(&p.com, "spiffe://example.com/c", false),
    )
    .await
    .unwrap_err();
    assert!(e.contains("peer SVID refused") && e.contains("example.com"), "{e}");

    let e = handshake(
        server_with(Authorizer::Any, org.clone()),
        client_as(&p.org, "spiffe://example.org/b", true),
    )
    .await
    .unwrap_err();
    assert!(e.contains("peer SVID refused"), "{e}");

    // A federated bundle lets example.com in, when the authorizer allows it.
    let federated = bundles(&[("example.org", &p.org), ("example.com", &p.com)]);
    let com = TrustDomain::new("example.com").unwrap();
    let (server_saw, _) = handshake(
        server_with(Authorizer::MemberOf(com), federated.clone()),
        client_as(&p.com, "spiffe://example.com/c", false),
    )
    .await
    .unwrap();
    assert_eq!(server_saw, id("spiffe://example.com/c"));
    let only_one = Authorizer::OneOf(vec![id("spiffe://example.org/x")]);
    let custom = Authorizer::Custom(Arc::new(|i: &SpiffeId| i.path().starts_with("/c")));
    assert!(only_one.authorize(&id("spiffe://example.org/x")).is_ok());
    assert!(only_one.authorize(&id("spiffe://example.org/y")).is_err());
    assert!(custom.authorize(&id("spiffe://example.com/c")).is_ok());
    assert!(custom.authorize(&id("spiffe://example.com/d")).is_err());
}

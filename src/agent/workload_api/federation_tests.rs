//! Federated bundles over the real socket: in FetchX509SVID's `federated_bundles`, in
//! FetchX509Bundles and FetchJWTBundles (keyed `spiffe://<td>` like the own bundle), in
//! ValidateJWTSVID, and their streams following the federated set.

use std::sync::Arc;
use std::time::Duration;

use keycard_workload_api::client::parse_x509_response;
use keycard_workload_api::{JwtBundle, SpiffeBundle, SpiffeId, TrustDomain, X509Bundle};
use tonic::Code;

use super::tests::{Setup, client, entry, open_x509, with_header};
use super::*;
use crate::agent::cache::{FederatedBundles, TrustBundle};
use crate::ca::CaManager;
use crate::wire::proto as pb;

fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

/// A foreign trust domain: its CA and its bundle as the cache holds it.
fn foreign(name: &str) -> (Arc<CaManager>, Arc<TrustBundle>) {
    let ca = crate::ca::manager::test_ca(td(name));
    let bundle = Arc::new(TrustBundle::of(&ca.bundle().unwrap()).unwrap());
    (ca, bundle)
}

fn set(bundles: &[&Arc<TrustBundle>]) -> FederatedBundles {
    bundles.iter().map(|b| (b.x509.trust_domain().clone(), (*b).clone())).collect()
}

fn federating(id: &str, spiffe_id: &str, selector: &str, tds: &[&str]) -> pb::Entry {
    let mut e = entry(id, spiffe_id, selector);
    e.federates_with = tds.iter().map(|s| s.to_string()).collect();
    e
}

/// The caller (e1, this uid) federates with example.com; an entry of another uid with
/// example.net; the agent holds both foreign bundles and example.edu's.
struct Fed {
    s: Setup,
    com: (Arc<CaManager>, Arc<TrustBundle>),
    net: (Arc<CaManager>, Arc<TrustBundle>),
    edu: Arc<TrustBundle>,
}

impl Fed {
    async fn start() -> Self {
        let mut s = Setup::start().await;
        let (com, net, (_, edu)) =
            (foreign("example.com"), foreign("example.net"), foreign("example.edu"));
        let held = set(&[&com.1, &net.1, &edu]);
        s.sync_federated(Self::entries(&s, &["example.com"]), Some(held));
        s.mint("e1");
        s.mint("e2");
        Self { s, com, net, edu }
    }

    fn entries(s: &Setup, mine: &[&str]) -> Vec<pb::Entry> {
        vec![
            federating("e1", "spiffe://example.org/me", &s.my_selector(), mine),
            federating("e2", "spiffe://example.org/other", "unix:uid:4242424", &["example.net"]),
        ]
    }
}

#[tokio::test]
async fn fetch_x509_svid_sends_the_federated_bundles_of_the_callers_entries() {
    let mut f = Fed::start().await;
    let mut stream = open_x509(&f.s).await;
    let first = stream.message().await.unwrap().unwrap();
    let keys: Vec<&String> = first.federated_bundles.keys().collect();
    assert_eq!(keys, ["spiffe://example.com"], "keyed by trust domain ID, only what e1 names");
    let der = &first.federated_bundles["spiffe://example.com"];
    assert_eq!(der, &f.com.1.x509.to_der(), "DER certificates concatenated");
    assert_eq!(X509Bundle::parse_der(td("example.com"), der).unwrap(), f.com.1.x509);
    // As the workload-api client reads it: the federated domain joins the bundle set.
    let context = parse_x509_response(&first).unwrap();
    assert!(context.bundles.get(&td("example.com")).is_some());
    assert!(context.bundles.get(&td("example.org")).is_some());

    // e1 now federates with example.net too: the stream follows at once.
    let entries = Fed::entries(&f.s, &["example.com", "example.net"]);
    f.s.sync_federated(entries.clone(), None);
    let next = stream.message().await.unwrap().unwrap();
    let mut keys: Vec<&String> = next.federated_bundles.keys().collect();
    keys.sort();
    assert_eq!(keys, ["spiffe://example.com", "spiffe://example.net"]);

    // The federation with example.com is deleted on the server: it leaves the stream.
    let held = set(&[&f.net.1, &f.edu]);
    f.s.sync_federated(entries.clone(), Some(held.clone()));
    let next = stream.message().await.unwrap().unwrap();
    let keys: Vec<&String> = next.federated_bundles.keys().collect();
    assert_eq!(keys, ["spiffe://example.net"]);
    // A change the caller does not see (example.edu goes) sends nothing: the next message
    // is the one after the set empties.
    f.s.sync_federated(entries.clone(), Some(set(&[&f.net.1])));
    f.s.sync_federated(entries, Some(FederatedBundles::new()));
    let next = tokio::time::timeout(Duration::from_secs(5), stream.message()).await;
    let next = next.expect("a message").unwrap().unwrap();
    assert!(next.federated_bundles.is_empty(), "{:?}", next.federated_bundles.keys());
}

#[tokio::test]
async fn the_bundle_streams_carry_own_and_federated_bundles() {
    let mut f = Fed::start().await;
    let mut c = client(&f.s.socket).await;
    let mut x509 =
        c.fetch_x509_bundles(with_header(X509BundlesRequest {})).await.unwrap().into_inner();
    let first = x509.message().await.unwrap().unwrap();
    let mut keys: Vec<&String> = first.bundles.keys().collect();
    keys.sort();
    assert_eq!(keys, ["spiffe://example.com", "spiffe://example.org"]);
    assert_eq!(first.bundles["spiffe://example.com"], f.com.1.x509.to_der());

    let mut jwt =
        c.fetch_jwt_bundles(with_header(JwtBundlesRequest {})).await.unwrap().into_inner();
    let first = jwt.message().await.unwrap().unwrap();
    let mut keys: Vec<&String> = first.bundles.keys().collect();
    keys.sort();
    assert_eq!(keys, ["spiffe://example.com", "spiffe://example.org"]);
    let jwks = SpiffeBundle::parse(td("example.com"), &first.bundles["spiffe://example.com"]);
    let jwks = jwks.unwrap().jwt_bundle().unwrap();
    assert_eq!(jwks, f.com.1.jwt);
    assert!(!JwtBundle::is_empty(&jwks));

    // The federation is removed: both streams drop the foreign bundle.
    let entries = Fed::entries(&f.s, &["example.com"]);
    f.s.sync_federated(entries, Some(set(&[&f.net.1])));
    let next = x509.message().await.unwrap().unwrap();
    assert_eq!(next.bundles.keys().collect::<Vec<_>>(), ["spiffe://example.org"]);
    let next = jwt.message().await.unwrap().unwrap();
    assert_eq!(next.bundles.keys().collect::<Vec<_>>(), ["spiffe://example.org"]);
}

#[tokio::test]
async fn validate_jwt_svid_accepts_tokens_of_the_domains_the_caller_federates_with() {
    let f = Fed::start().await;
    let mut c = client(&f.s.socket).await;
    let validate = |svid: &str| {
        with_header(ValidateJwtsvidRequest { audience: "me".into(), svid: svid.into() })
    };
    let mint = |ca: &CaManager, id: &str| {
        let id = SpiffeId::parse(id).unwrap();
        ca.sign_jwt_svid(&id, &["me".to_owned()], Duration::from_secs(60)).unwrap().token
    };
    let from_com = mint(&f.com.0, "spiffe://example.com/api");
    let ok = c.validate_jwtsvid(validate(&from_com)).await.unwrap().into_inner();
    assert_eq!(ok.spiffe_id, "spiffe://example.com/api");

    // example.net's bundle is held, but only for another caller's entry.
    let from_net = mint(&f.net.0, "spiffe://example.net/api");
    let err = c.validate_jwtsvid(validate(&from_net)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // example.com's header and claims under a signature of example.net's key.
    let (signed, _) = from_com.rsplit_once('.').unwrap();
    let (_, net_signature) = from_net.rsplit_once('.').unwrap();
    let forged = format!("{signed}.{net_signature}");
    let err = c.validate_jwtsvid(validate(&forged)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // The own domain's tokens still validate.
    let own = mint(&f.s.ca, "spiffe://example.org/web");
    assert!(c.validate_jwtsvid(validate(&own)).await.is_ok());
}

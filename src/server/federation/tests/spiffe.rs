//! `https_spiffe`: the endpoint presents the server's SVID, the client authenticates it
//! with the held bundle and the configured endpoint SPIFFE ID.

use keycard_workload_api::{SpiffeBundle, X509Bundle};

use super::*;
use crate::ca::AuthorityKind;

#[tokio::test]
async fn round_trip_fetches_exactly_the_cas_bundle() {
    let (running, _svid) = start_spiffe().await;
    let held = running.ca.bundle().unwrap();
    let fetched = fetch_spiffe(&running.url(), Some(&held)).await.unwrap();
    assert_eq!(fetched, running.ca.bundle().unwrap());
    assert!(fetched.sequence.is_some() && fetched.refresh_hint.is_some());
    assert!(!fetched.x509_authorities.is_empty() && !fetched.jwt_authorities.is_empty());
    // A bootstrap bundle with the X.509 authorities alone (from PEM) is enough.
    let pem = running.ca.x509_bundle().to_pem();
    let x509 = X509Bundle::parse_pem(td(), &pem).unwrap();
    let bootstrap =
        SpiffeBundle::from_parts(&x509, &keycard_workload_api::JwtBundle::new(td()), None, None)
            .unwrap();
    assert_eq!(fetch_spiffe(&running.url(), Some(&bootstrap)).await.unwrap(), fetched);
    assert_eq!(running.requests("200"), 2);
    running.stop().await;
}

#[tokio::test]
async fn the_document_holds_only_svid_keys_with_sequence_and_hint() {
    let (running, _svid) = start_spiffe().await;
    let endpoint = BundleEndpoint::new(running.ca.clone(), running.metrics.clone());
    let json: serde_json::Value = serde_json::from_slice(&endpoint.document().unwrap()).unwrap();
    let keys = json["keys"].as_array().unwrap();
    assert!(!keys.is_empty());
    for key in keys {
        let use_ = key["use"].as_str().unwrap();
        assert!(use_ == "x509-svid" || use_ == "jwt-svid", "{key}");
    }
    assert!(json["spiffe_sequence"].as_u64().is_some(), "{json}");
    assert_eq!(json["spiffe_refresh_hint"].as_u64(), Some(60), "the test CA's hint");
    // The same document again, from the cache, while the bundle does not change.
    assert_eq!(endpoint.document().unwrap(), endpoint.document().unwrap());
}

#[tokio::test]
async fn an_endpoint_with_another_spiffe_id_is_refused_naming_both() {
    let ca = crate::ca::manager::test_ca(td());
    let other = td().spiffe_id("/not/the/bundle/server").unwrap();
    let (ca, svid) = svid_for(ca, other.clone());
    let running = start(ca, svid).await;
    let held = running.ca.bundle().unwrap();
    let e = fetch_spiffe(&running.url(), Some(&held)).await.unwrap_err();
    match &e {
        FetchError::WrongSpiffeId { expected, presented, .. } => {
            assert_eq!((expected, presented), (&server_id(), &other));
        }
        e => panic!("{e:?}"),
    }
    let text = e.to_string();
    assert!(text.contains(other.as_str()) && text.contains(server_id().as_str()), "{text}");
}

#[tokio::test]
async fn an_endpoint_of_another_trust_domain_is_a_wrong_id() {
    let com = TrustDomain::new("example.com").unwrap();
    let (ca, svid) =
        svid_for(crate::ca::manager::test_ca(com.clone()), crate::wire::server_id(&com));
    let running = start(ca, svid).await;
    // The client holds example.org's bundle and expects example.org's server.
    let (org_ca, _) = ca_and_svid();
    let e = fetch_spiffe(&running.url(), Some(&org_ca.bundle().unwrap())).await.unwrap_err();
    assert!(matches!(e, FetchError::WrongSpiffeId { .. }), "{e:?}");
    assert!(e.to_string().contains("spiffe://example.com/keycard/server"), "{e}");
}

#[tokio::test]
async fn an_endpoint_signed_by_a_ca_not_in_the_held_bundle_is_refused() {
    let (running, _svid) = start_spiffe().await;
    let (stranger, _) = ca_and_svid();
    let e = fetch_spiffe(&running.url(), Some(&stranger.bundle().unwrap())).await.unwrap_err();
    assert!(matches!(e, FetchError::UnknownIssuer { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("unknown issuer") && text.contains("held for example.org"), "{text}");
}

#[tokio::test]
async fn https_spiffe_needs_a_held_bundle_of_the_endpoints_trust_domain() {
    let (running, _svid) = start_spiffe().await;
    let e = fetch_spiffe(&running.url(), None).await.unwrap_err();
    assert!(matches!(e, FetchError::NoHeldBundle { .. }), "{e:?}");
    assert!(e.to_string().contains("bootstrap"), "{e}");
    let com = crate::ca::manager::test_ca(TrustDomain::new("example.com").unwrap());
    let e = fetch_spiffe(&running.url(), Some(&com.bundle().unwrap())).await.unwrap_err();
    assert!(matches!(e, FetchError::HeldBundleMismatch { .. }), "{e:?}");
    let jwt_only =
        SpiffeBundle::from_jwt_bundle(&running.ca.bundle().unwrap().jwt_bundle().unwrap());
    let e = fetch_spiffe(&running.url(), Some(&jwt_only)).await.unwrap_err();
    assert!(matches!(e, FetchError::HeldBundleUnusable { .. }), "{e:?}");
    assert_eq!(running.requests("200"), 0, "nothing was fetched");
}

#[tokio::test]
async fn a_rotation_is_published_and_followed_with_the_newest_held_bundle() {
    let (running, svid) = start_spiffe().await;
    let before = running.ca.bundle().unwrap();
    let first = fetch_spiffe(&running.url(), Some(&before)).await.unwrap();
    let id = running.ca.prepare(AuthorityKind::X509).unwrap();
    running.ca.activate(AuthorityKind::X509, &id).unwrap();
    let second = fetch_spiffe(&running.url(), Some(&first)).await.unwrap();
    assert!(second.sequence > first.sequence, "{:?} {:?}", second.sequence, first.sequence);
    let new_keys: Vec<_> =
        second.x509_authorities.iter().filter(|a| !first.x509_authorities.contains(a)).collect();
    assert_eq!(new_keys.len(), 1, "the new authority is published");
    // The endpoint's SVID is now signed by the new authority: the bundle held before the
    // rotation cannot authenticate it, the one fetched since can.
    svid.renew().unwrap();
    let e = fetch_spiffe(&running.url(), Some(&first)).await.unwrap_err();
    assert!(matches!(e, FetchError::UnknownIssuer { .. }), "{e:?}");
    let third = fetch_spiffe(&running.url(), Some(&second)).await.unwrap();
    assert_eq!(third, running.ca.bundle().unwrap());
}

//! Federation relationships and foreign bundles through the admin API (see tests.rs):
//! each refusal gets its status and names the fix; deleting a relationship deletes its
//! bundle; a refresh that cannot reach the endpoint fails with the reason.

use keycard_workload_api::TrustDomain;
use tonic::Code;

use super::pb;
use super::tests::Harness;
use crate::server::datastore::DataStore as _;

fn com_bundle() -> Vec<u8> {
    let ca = crate::ca::manager::test_ca(TrustDomain::new("example.com").unwrap());
    ca.bundle().unwrap().to_json().unwrap().into_bytes()
}

fn request(url: &str, bundle: Vec<u8>) -> pb::FederationRequest {
    pb::FederationRequest {
        trust_domain: "example.com".into(),
        bundle_endpoint_url: url.into(),
        bundle_endpoint_profile: "https_spiffe".into(),
        endpoint_spiffe_id: "spiffe://example.com/keycard/server".into(),
        trust_domain_bundle: bundle,
        ca_pem: Vec::new(),
    }
}

fn td(name: &str) -> pb::TrustDomainRequest {
    pb::TrustDomainRequest { trust_domain: name.into() }
}

fn refused<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> (Code, String) {
    let s = r.unwrap_err();
    (s.code(), s.message().to_owned())
}

#[tokio::test]
async fn relationships_are_checked_stored_and_deleted_with_their_bundle() {
    let mut h = Harness::start(vec![]).await;
    // A port nothing listens on: the endpoint is unreachable.
    let unreachable = "https://127.0.0.1:1/";
    let cases = [
        (request(unreachable, Vec::new()), "--trust-domain-bundle"),
        (
            pb::FederationRequest {
                trust_domain: "example.org".into(),
                ..request(unreachable, com_bundle())
            },
            "own trust domain",
        ),
        (request("http://127.0.0.1:1/", com_bundle()), "https"),
        (
            pb::FederationRequest {
                bundle_endpoint_profile: "https_ftp".into(),
                ..request(unreachable, com_bundle())
            },
            "https_spiffe or https_web",
        ),
        (
            pb::FederationRequest {
                endpoint_spiffe_id: String::new(),
                ..request(unreachable, com_bundle())
            },
            "--endpoint-spiffe-id",
        ),
        (request(unreachable, b"not a bundle".to_vec()), "neither SPIFFE bundle JSON nor PEM"),
    ];
    for (req, want) in cases {
        let (code, message) = refused(h.client.create_federation(req).await);
        assert_eq!(code, Code::InvalidArgument, "{message}");
        assert!(message.contains(want), "{want:?} not in {message:?}");
    }

    let created = h.client.create_federation(request(unreachable, com_bundle())).await.unwrap();
    let created = created.into_inner();
    assert!(created.bundle_held && created.x509_authorities >= 1, "{created:?}");
    let (code, message) =
        refused(h.client.create_federation(request(unreachable, com_bundle())).await);
    assert_eq!(code, Code::AlreadyExists);
    assert!(message.contains("keycard federation update"), "{message}");
    assert_eq!(refused(h.client.get_federation(td("example.net")).await).0, Code::NotFound);

    // A refresh that cannot reach the endpoint fails with the reason; the bundle stays.
    let (code, message) = refused(h.client.refresh_federation(td("example.com")).await);
    assert_eq!(code, Code::FailedPrecondition, "{message}");
    assert!(message.contains("127.0.0.1:1") && message.contains("last good bundle"), "{message}");
    let shown = h.client.get_federation(td("example.com")).await.unwrap().into_inner();
    assert!(shown.bundle_held && !shown.last_error.is_empty(), "{shown:?}");

    // Its bundle is not deleted on its own; a bundle set by hand is.
    let (code, message) = refused(h.client.delete_foreign_bundle(td("example.com")).await);
    assert_eq!(code, Code::FailedPrecondition);
    assert!(message.contains("keycard federation delete"), "{message}");
    let set = pb::SetForeignBundleRequest {
        trust_domain: "example.net".into(),
        bundle: crate::ca::manager::test_ca(TrustDomain::new("example.net").unwrap())
            .x509_bundle()
            .to_pem()
            .into_bytes(),
    };
    let net = h.client.set_foreign_bundle(set).await.unwrap().into_inner();
    assert!(!net.federated && net.x509_authorities == 1, "{net:?}");
    let listed = h.client.list_foreign_bundles(pb::ListForeignBundlesRequest {}).await.unwrap();
    let names: Vec<_> = listed.into_inner().bundles.into_iter().map(|b| b.trust_domain).collect();
    assert_eq!(names, ["example.com", "example.net"]);
    h.client.delete_foreign_bundle(td("example.net")).await.unwrap();
    assert_eq!(refused(h.client.delete_foreign_bundle(td("example.net")).await).0, Code::NotFound);

    // Deleting the relationship deletes its bundle.
    h.client.delete_federation(td("example.com")).await.unwrap();
    assert_eq!(h.store.get_bundle(&TrustDomain::new("example.com").unwrap()).unwrap(), None);
    assert_eq!(refused(h.client.delete_federation(td("example.com")).await).0, Code::NotFound);
    h.stop().await;
}

//! Interop with an independent Workload API client: the `spiffe` crate from crates.io
//! (its low-level client, `X509Source` and `JwtSource`) against a real keycard agent.
//! Whatever it rejects is our bug.

use std::time::Duration;

use crate::agent::{PATIENCE, Setup, open_stream};

#[test]
fn the_spiffe_crate_fetches_follows_and_validates_from_our_agent() {
    let setup = Setup::start("127.0.0.1:0");
    setup.entry("a");
    let agent = setup.agent("");
    let endpoint = format!("unix://{}", agent.socket.display());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // Wait until the agent holds the SVID (our own client retries PermissionDenied).
        let mut ours = open_stream(&agent.socket).await;
        ours.message().await.unwrap().unwrap();

        let client = spiffe::WorkloadApiClient::connect_to(&endpoint).await.unwrap();
        let context = client.fetch_x509_context().await.unwrap();
        let svid = context.default_svid().expect("an SVID");
        assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/workload/a");
        let td = spiffe::TrustDomain::new("example.org").unwrap();
        let bundle = context.bundle_set().get(&td).expect("the trust domain's bundle");
        let theirs: Vec<&[u8]> = bundle.authorities().iter().map(|c| c.as_bytes()).collect();
        let mine: Vec<&[u8]> = setup.bundle.authorities().iter().map(|c| c.as_ref()).collect();
        assert_eq!(theirs, mine);
        let bundles = client.fetch_x509_bundles().await.unwrap();
        assert!(bundles.get(&td).is_some());
        let jwt_bundles = client.fetch_jwt_bundles().await.unwrap();
        assert!(jwt_bundles.get(&td).is_some());

        // X509Source follows a rotation (SVIDs live 20 s here; renewal comes within ~15 s).
        let source = spiffe::X509Source::builder().endpoint(&endpoint).build().await.unwrap();
        let first = source.svid().unwrap().leaf().as_bytes().to_vec();
        let mut updates = source.updated();
        tokio::time::timeout(PATIENCE, async {
            while source.svid().unwrap().leaf().as_bytes() == first.as_slice() {
                updates.changed().await.unwrap();
            }
        })
        .await
        .expect("X509Source saw no rotation");
        assert_eq!(
            source.svid().unwrap().spiffe_id().to_string(),
            "spiffe://example.org/workload/a"
        );
        source.shutdown().await;

        // JWT-SVIDs: fetched, validated by the agent, and validated locally by JwtSource's bundles.
        let jwt = client.fetch_jwt_svid(["db"], None).await.unwrap();
        assert_eq!(jwt.spiffe_id().to_string(), "spiffe://example.org/workload/a");
        let checked = client.validate_jwt_token("db", jwt.token()).await.unwrap();
        assert_eq!(checked.spiffe_id(), jwt.spiffe_id());
        assert!(client.validate_jwt_token("other", jwt.token()).await.is_err());
        let jwt_source = spiffe::JwtSource::builder().endpoint(&endpoint).build().await.unwrap();
        let token = jwt_source.fetch_jwt_svid(["db", "cache"]).await.unwrap();
        let valid = spiffe::JwtSvid::parse_and_validate(token.token(), &jwt_source, &["cache"]);
        assert_eq!(valid.unwrap().spiffe_id().to_string(), "spiffe://example.org/workload/a");
        tokio::time::timeout(Duration::from_secs(10), jwt_source.shutdown()).await.unwrap();
    });
    agent.stop();
}

//! Input limits of real daemons (issue 18, build 5): a message over the size cap on every
//! API (Workload API, agent API over mTLS, the server's and the agent's admin sockets) is
//! answered `ResourceExhausted` and the daemon goes on serving; signing requests over an
//! agent's rate get `ResourceExhausted` with a retry time, and nothing is signed beyond
//! the rate. Floods of connections are in [`crate::flood`].

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keycard::agent::TlsConnectorService;
use keycard_workload_api::tls::{Authorizer, SpiffePeerVerifier};
use keycard_workload_api::{TrustDomain, X509Bundle, X509BundleSet};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};

use crate::agent::{PATIENCE, Setup, open_stream};
use crate::procs::{metric, metrics};

/// Any request: the servers refuse it by its length prefix, before decoding it.
#[derive(Clone, PartialEq, prost::Message)]
struct Padding {
    #[prost(bytes = "vec", tag = "15")]
    pad: Vec<u8>,
}

/// Sends one message of `len` bytes to `path` on `channel` and returns the error status.
async fn oversized(channel: Channel, path: &'static str, len: usize) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut request = Request::new(Padding { pad: vec![7; len] });
    request.metadata_mut().insert("workload.spiffe.io", "true".parse().unwrap());
    let codec = tonic_prost::ProstCodec::<Padding, Padding>::default();
    let answer = grpc.unary(request, PathAndQuery::from_static(path), codec);
    let answer = tokio::time::timeout(Duration::from_secs(60), answer).await;
    answer.expect("no answer in 60 s").expect_err("an oversized message was accepted")
}

async fn unix(path: &Path) -> Channel {
    keycard_workload_api::client::unix_channel(path).await.unwrap()
}

/// A TLS channel to the agent API with no client certificate, trusting `bundle`.
async fn agent_api(address: &str, bundle: &X509Bundle) -> Channel {
    let bundles: X509BundleSet = [bundle.clone()].into_iter().collect();
    let server = keycard::wire::server_id(&TrustDomain::new("example.org").unwrap());
    let verifier = SpiffePeerVerifier::new(move || bundles.clone(), Authorizer::Exact(server));
    let mut config = rustls::ClientConfig::builder_with_provider(keycard::wire::tls_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.enable_sni = false;
    let connector = TlsConnectorService::new(Arc::new(config));
    let endpoint = Endpoint::from_shared(format!("http://{address}")).unwrap();
    endpoint.connect_with_connector(connector).await.unwrap()
}

#[test]
fn a_message_over_the_cap_gets_resource_exhausted_on_every_api_and_nothing_stops_serving() {
    let setup = Setup::start("127.0.0.1:0");
    setup.entry("a");
    let agent = setup.agent("");
    let server = setup.server();
    let over = |cap: usize| cap + 1024;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut stream = open_stream(&agent.socket).await;
        assert_eq!(stream.message().await.unwrap().unwrap().svids.len(), 1);

        // The Workload API (tonic's default cap: 4 MiB), a unary and a streaming method.
        let cap = keycard::wire::MAX_MESSAGE_SIZE;
        for path in ["/SpiffeWorkloadAPI/FetchJWTSVID", "/SpiffeWorkloadAPI/FetchX509SVID"] {
            let status = oversized(unix(&agent.socket).await, path, over(cap)).await;
            assert_eq!(status.code(), Code::ResourceExhausted, "{path}: {status:?}");
        }
        // The agent API, before any authentication.
        let channel = agent_api(&server.address, &setup.bundle).await;
        let status = oversized(channel, "/keycard.agent.v1.Agent/RenewAgent", over(cap)).await;
        assert_eq!(status.code(), Code::ResourceExhausted, "agent API: {status:?}");
        // The agent's admin socket.
        let path = "/keycard.agentadmin.v1.AgentAdmin/Explain";
        let status = oversized(unix(&agent.admin_socket).await, path, over(cap)).await;
        assert_eq!(status.code(), Code::ResourceExhausted, "agent admin: {status:?}");
        // The server's admin socket, whose cap is 64 MiB (entry batches).
        let cap = keycard::server::admin::MAX_MESSAGE_BYTES;
        let path = "/keycard.admin.v1.Admin/CreateEntry";
        let status = oversized(unix(&server.admin_socket).await, path, over(cap)).await;
        assert_eq!(status.code(), Code::ResourceExhausted, "server admin: {status:?}");

        // Everything still serves: a new entry goes through the admin socket, the agent
        // API (the agent's sync and signing) and the Workload API to the open stream.
        setup.entry("b");
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = tokio::time::timeout(left, stream.message()).await;
            let msg = next.expect("no SVID for the new entry in time").unwrap().unwrap();
            if msg.svids.len() == 2 {
                break;
            }
        }
    });
    let out = agent.explain(std::process::id());
    assert!(out.status.success(), "the agent admin socket stopped serving: {out:?}");
    agent.stop();
}

#[test]
fn signing_over_an_agents_rate_gets_resource_exhausted_with_a_retry_time_and_no_more() {
    let rate: u64 = 20;
    let health = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = format!(
        "trust_domain = \"example.org\"\nca_ttl = \"24h\"\ndefault_x509_svid_ttl = \"1h\"\n\
         svids_per_second_per_agent = {rate}\nhealth_address = \"{health}\"\n"
    );
    let setup = Setup::start_with("127.0.0.1:0", &config);
    let server = setup.server();
    let token = server.token("node/rated");
    let entry = server.admin(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/workload/rated",
        "--parent-id",
        "spiffe://example.org/node/rated",
        "--selector",
        "unix:uid:1",
    ]);
    let entry = entry["id"].as_str().unwrap().to_owned();
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default().serialize_request(&key).unwrap();
    let items: Vec<(String, Vec<u8>)> = vec![(entry, csr.der().to_vec()); 50];
    let issued = || {
        let name = "keycard_server_svids_issued_total{kind=\"x509\",subject=\"workload\"}";
        metric(&metrics(&health.to_string()), name).unwrap_or(0)
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // This test is the agent: attested with its join token, asking for SVIDs itself.
        let td = TrustDomain::new("example.org").unwrap();
        let mut client =
            keycard::agent::ServerClient::connect(&server.address, td, setup.bundle.clone())
                .await
                .unwrap();
        client.attest_join_token(&token).await.unwrap();
        // The server's entry cache knows the new entry after its next refresh.
        let deadline = Instant::now() + PATIENCE;
        while client.batch_new_x509_svid(&items[..1]).await.unwrap()[0].is_err() {
            assert!(Instant::now() < deadline, "the entry never became signable");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let before = issued();
        let started = Instant::now();
        let (mut signed, mut refused_items, mut refused_calls) = (0u64, 0u64, 0u64);
        while started.elapsed() < Duration::from_secs(3) {
            let refused = |status: &tonic::Status| {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                let after = keycard::wire::retry_after(status);
                assert!(after.is_some_and(|a| !a.is_zero()), "no retry time: {status:?}");
            };
            match client.batch_new_x509_svid(&items).await {
                Ok(results) => {
                    for result in results {
                        match result {
                            Ok(_) => signed += 1,
                            Err(status) => {
                                refused(&status);
                                refused_items += 1;
                            }
                        }
                    }
                }
                Err(keycard::agent::ClientError::Rpc(status)) => {
                    refused(&status);
                    refused_calls += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        let allowed = 2 * rate + (rate as f64 * elapsed).ceil() as u64;
        println!(
            "at {rate} SVIDs/s (bursts of {}): {signed} signed in {elapsed:.1} s (at most \
             {allowed} allowed), {refused_items} items and {refused_calls} whole calls refused \
             with a retry time",
            2 * rate
        );
        assert!(signed <= allowed, "{signed} signed, more than the rate allows ({allowed})");
        assert!(signed as f64 >= rate as f64 * elapsed * 0.5, "the rate was not served");
        assert!(refused_items + refused_calls > 0, "nothing was refused");
        assert_eq!(issued() - before, signed, "the server signed what it did not return");
    });
}

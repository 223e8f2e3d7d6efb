//! Attestation, renewal and agent authentication.

use std::time::{Duration, SystemTime};

use keycard_workload_api::verify_chain;
use tonic::Code;

use super::*;
use crate::agent::ClientError;

fn code(err: ClientError) -> Code {
    match err {
        ClientError::Rpc(status) => status.code(),
        other => panic!("expected a gRPC status, got {other}"),
    }
}

fn sha1_hex(der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der))
}

#[tokio::test]
async fn join_token_attestation_gives_an_agent_svid_that_validates_against_the_bundle() {
    let h = Harness::start().await;
    let (token, record) = h.token_expiring_at(SystemTime::now() + Duration::from_secs(600));
    let mut client = h.client().await;
    let att = client.attest_join_token(&token).await.unwrap();
    let expected = join_token::default_agent_id(&h.td, &record.token_id);
    assert_eq!(att.identity.spiffe_id, expected);
    assert_eq!(verify_chain(&att.identity.chain, &h.bundle_set(), now()).unwrap(), expected);
    let stored = h.store.get_agent(&expected).unwrap().unwrap();
    assert_eq!(stored.svid_serial, att.identity.serial);
    assert_eq!(stored.attestation_type, "join_token");
    assert_eq!(stored.selectors, selectors(&[&format!("join_token:{}", record.token_id)]));
    assert!(!stored.can_reattest);
    assert_eq!(h.metrics.issued_total("x509", "agent"), 1);
    // The agent SVID now authenticates calls.
    let bundle = client.fetch_bundle().await.unwrap();
    assert_eq!(bundle.x509_bundle().unwrap(), h.bundle());
}

#[tokio::test]
async fn renewal_replaces_the_agent_svid_and_the_old_one_is_refused() {
    let h = Harness::start().await;
    let mut client = h.agent().await;
    let old = client.identity().unwrap().clone();
    let new = client.renew().await.unwrap();
    assert_ne!(old.serial, new.serial);
    assert_eq!(old.spiffe_id, new.spiffe_id);
    assert_eq!(h.store.get_agent(&new.spiffe_id).unwrap().unwrap().svid_serial, new.serial);
    client.fetch_bundle().await.unwrap();
    let mut stale = ServerClient::connect_with_identity(&h.addr.to_string(), td(), h.bundle(), old)
        .await
        .unwrap();
    assert_eq!(code(stale.fetch_bundle().await.unwrap_err()), Code::PermissionDenied);
}

#[tokio::test]
async fn x509pop_attestation_derives_id_and_selectors_from_the_node_certificate() {
    let h = Harness::start().await;
    let chain = pem_certs("nodes/node1.pem");
    let key = pem_key("nodes/node1.key.pem");
    let mut client = h.client().await;
    let att = client.attest_x509pop(&chain[..1], &key).await.unwrap();
    let expected =
        id(&format!("spiffe://example.org/keycard/agent/x509pop/{}", sha1_hex(&chain[0])));
    assert_eq!(att.identity.spiffe_id, expected);
    let stored = h.store.get_agent(&expected).unwrap().unwrap();
    let ca = pem_certs("nodes/ca.pem");
    let want = selectors(&[
        "x509pop:subject:cn:node1",
        "x509pop:san:dns:node1.example.org",
        &format!("x509pop:ca:fingerprint:{}", sha1_hex(&ca[0])),
    ]);
    assert_eq!(stored.selectors, want);
    assert!(stored.can_reattest);
    assert_eq!(h.metrics.attestations.get_or_create(&attested("x509pop", "ok")).get(), 1);
    // x509pop nodes may attest again (a new agent SVID for the same ID).
    let mut again = h.client().await;
    let second = again.attest_x509pop(&chain[..1], &key).await.unwrap();
    assert_eq!(second.identity.spiffe_id, expected);
}

fn attested(attestor: &str, result: &str) -> crate::telemetry::metrics::AttestationLabels {
    crate::telemetry::metrics::AttestationLabels {
        attestor: attestor.into(),
        result: result.into(),
    }
}

#[tokio::test]
async fn x509pop_refuses_a_signature_by_another_key_and_an_untrusted_chain() {
    let h = Harness::start().await;
    let node1 = pem_certs("nodes/node1.pem");
    let wrong_key = pem_key("nodes/node2.key.pem");
    let err = h.client().await.attest_x509pop(&node1[..1], &wrong_key).await.unwrap_err();
    assert_eq!(code(err), Code::PermissionDenied);
    // An X509-SVID of the example.org test PKI does not chain to the node CA.
    let foreign = pem_certs("example.org/svid.pem");
    let foreign_key = pem_key("example.org/svid.key.pem");
    let err = h.client().await.attest_x509pop(&foreign, &foreign_key).await.unwrap_err();
    assert_eq!(code(err), Code::PermissionDenied);
    assert_eq!(h.store.count_agents().unwrap(), 0);
    assert_eq!(h.metrics.issued_total("x509", "agent"), 0);
    assert_eq!(
        h.metrics.attestations.get_or_create(&attested("x509pop", "bad_signature")).get(),
        1
    );
}

#[tokio::test]
async fn banned_agents_are_refused_calls_and_reattestation() {
    let h = Harness::start().await;
    let chain = pem_certs("nodes/node1.pem");
    let key = pem_key("nodes/node1.key.pem");
    let mut client = h.client().await;
    let att = client.attest_x509pop(&chain[..1], &key).await.unwrap();
    // Calls before the ban: the server holds the agent's record (see `AgentRecords`).
    for _ in 0..2 {
        client.fetch_bundle().await.unwrap();
    }
    h.store.set_agent_banned(&att.identity.spiffe_id, true).unwrap();
    assert_eq!(code(client.fetch_bundle().await.unwrap_err()), Code::PermissionDenied);
    let err = h.client().await.attest_x509pop(&chain[..1], &key).await.unwrap_err();
    assert_eq!(code(err), Code::PermissionDenied);
    h.store.set_agent_banned(&att.identity.spiffe_id, false).unwrap();
    client.fetch_bundle().await.unwrap();
    // Evicted (deleted) agents must attest again.
    h.store.delete_agent(&att.identity.spiffe_id).unwrap();
    assert_eq!(code(client.fetch_bundle().await.unwrap_err()), Code::PermissionDenied);
}

#[tokio::test]
async fn attestation_is_rate_limited_per_source_address() {
    let h = Harness::start_with(|o| o.attest_rate = Rate { per_second: 0.001, burst: 2.0 }).await;
    let mut client = h.client().await;
    for _ in 0..2 {
        let err = client.attest_join_token("not-a-token").await.unwrap_err();
        assert_eq!(code(err), Code::PermissionDenied);
    }
    let err = client.attest_join_token(&h.token()).await.unwrap_err();
    assert_eq!(code(err), Code::ResourceExhausted);
}

#[tokio::test]
async fn calls_without_an_agent_svid_are_unauthenticated() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    assert_eq!(code(client.fetch_bundle().await.unwrap_err()), Code::Unauthenticated);
    let err = client.batch_new_x509_svid(&[("x".into(), csr())]).await.unwrap_err();
    assert_eq!(code(err), Code::Unauthenticated);
    assert!(matches!(client.renew().await, Err(ClientError::NotAttested)));
}

#[tokio::test]
async fn x509pop_is_refused_when_not_configured() {
    let h = Harness::start_with(|o| o.x509pop_ca_bundle = None).await;
    let chain = pem_certs("nodes/node1.pem");
    let key = pem_key("nodes/node1.key.pem");
    let err = h.client().await.attest_x509pop(&chain[..1], &key).await.unwrap_err();
    assert_eq!(code(err), Code::FailedPrecondition);
}

//! Deadlines between agent and server: a connection that stops answering fails the
//! agent's round within its deadline (and the next round dials again), and an x509pop
//! agent that never answers its challenge is dropped by the server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use super::proxy::Proxy;
use super::*;
use crate::agent::ClientError;
use crate::agent::cache::SvidCache;
use crate::agent::manager::{Manager, ManagerError, ManagerOptions};
use crate::wire::proto::{attest_agent_request, attest_agent_response};

/// The agent's deadline in these tests.
const DEADLINE: Duration = Duration::from_millis(500);
/// What a loaded machine may add to a deadline before the caller hears of it.
const SLACK: Duration = Duration::from_secs(3);
/// Longer than anything here should take; a hang shows as running out of it.
const PATIENCE: Duration = Duration::from_secs(15);

#[tokio::test]
async fn a_round_on_a_connection_that_stops_answering_fails_in_time_and_the_next_proceeds() {
    let h = Harness::start().await;
    let proxy = Proxy::start(h.addr).await;
    let client = ServerClient::connect(&proxy.addr.to_string(), td(), h.bundle()).await.unwrap();
    let mut client = client.with_request_timeout(DEADLINE);
    let agent = client.attest_join_token(&h.token()).await.unwrap().identity.spiffe_id;
    h.entry("spiffe://example.org/web", &agent, &["unix:uid:1"]);
    let clock: Arc<dyn crate::clock::Clock> = Arc::new(SystemClock);
    let cache = Arc::new(SvidCache::new(clock.clone()));
    let mut manager = Manager::new(client, cache, clock, ManagerOptions::default());
    assert_eq!(manager.tick().await.unwrap().issued, 1);

    // The open connection goes silent for good (a half-open connection).
    proxy.stall_open();
    let started = Instant::now();
    let round = tokio::time::timeout(PATIENCE, manager.tick()).await.expect("the round hung");
    let waited = started.elapsed();
    match round {
        Err(ManagerError::Server(ClientError::Timeout { call, after })) => {
            assert_eq!((call, after), ("SyncEntries", DEADLINE));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(waited >= DEADLINE && waited < DEADLINE + SLACK, "the round took {waited:?}");

    // The next round dials a new connection and is served.
    let report = tokio::time::timeout(PATIENCE, manager.tick()).await.expect("the round hung");
    assert_eq!(report.expect("the next round proceeds").entries, 1);
}

#[tokio::test]
async fn an_x509pop_agent_that_never_answers_the_challenge_is_dropped() {
    let step = Duration::from_millis(300);
    let h = Harness::start_with(|o| o.attestation_step_timeout = step).await;
    let mut client = h.client().await;
    let chain = pem_certs("nodes/node1.pem");
    let params = pb::AttestationParams {
        data: Some(pb::attestation_params::Data::X509pop(pb::X509PopAttestation {
            cert_chain: vec![chain[0].to_vec()],
        })),
        csr: csr(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let first = pb::AttestAgentRequest { step: Some(attest_agent_request::Step::Params(params)) };
    tx.send(first).await.unwrap();
    let mut responses =
        client.grpc().attest_agent(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let challenge = responses.message().await.unwrap().and_then(|m| m.step);
    assert!(matches!(challenge, Some(attest_agent_response::Step::Challenge(_))));

    // The agent keeps its stream open and says nothing.
    let started = Instant::now();
    let outcome = tokio::time::timeout(PATIENCE, responses.message()).await;
    let status = outcome.expect("the server waited for the answer forever").unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < step + SLACK, "dropped after {:?}", started.elapsed());
    drop(tx);
}

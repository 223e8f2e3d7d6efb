//! A renewal whose reply never reaches the agent: a real TCP proxy between the agent and
//! the server swallows the `RenewAgent` reply after the server has recorded the new SVID,
//! then cuts the connection. The join-token agent keeps its identity: it goes on with its
//! old SVID, renews again, and only then is the old SVID refused.

use std::sync::Arc;
use std::time::Duration;

use tonic::Code;

use super::proxy::{Mode, Proxy};
use super::*;
use crate::agent::cache::SvidCache;
use crate::agent::manager::{Manager, ManagerOptions};
use crate::agent::storage::{AgentStorage, StoredIdentity};
use crate::agent::{AgentIdentity, ClientError};
use crate::clock::ManualClock;

/// Waits (bounded) until the server has recorded a newer SVID than `serial` for `agent`.
async fn server_recorded_a_renewal(h: &Harness, agent: &SpiffeId, serial: &str) {
    for _ in 0..500 {
        let record = h.store.get_agent(agent).unwrap().unwrap();
        if record.svid_serial != serial {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the server never recorded the renewal");
}

fn stored_serial(storage: &AgentStorage, h: &Harness) -> String {
    let bundle = h.ca.bundle().unwrap();
    match storage.load_identity(&bundle, SystemTime::now()).unwrap() {
        Some(StoredIdentity::Valid(identity)) => identity.serial,
        other => panic!("no valid stored agent SVID: {other:?}"),
    }
}

#[tokio::test]
async fn an_agent_whose_renewal_reply_is_lost_keeps_its_identity() {
    let h = Harness::start().await;
    let proxy = Proxy::start(h.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let storage = AgentStorage::open(dir.path()).unwrap();
    let client = ServerClient::connect(&proxy.addr.to_string(), td(), h.bundle()).await.unwrap();
    let mut client = client.with_storage(storage.clone());
    client.attest_join_token(&h.token()).await.unwrap();
    let old = client.identity().unwrap().clone();
    assert_eq!(stored_serial(&storage, &h), old.serial, "attestation stored the SVID");

    let clock = ManualClock::starting_now();
    let cache = Arc::new(SvidCache::new(Arc::new(clock.clone())));
    let mut manager =
        Manager::new(client, cache, Arc::new(clock.clone()), ManagerOptions::default());
    assert!(!manager.tick().await.unwrap().agent_renewed);

    // Past half-life the round renews; the server records it, the reply is lost.
    clock.set(old.expires_at - Duration::from_secs(60));
    proxy.set(Mode::SwallowReplies);
    let (round, ()) = tokio::join!(manager.tick(), async {
        server_recorded_a_renewal(&h, &old.spiffe_id, &old.serial).await;
        proxy.set(Mode::Forward);
        proxy.cut();
    });
    // The renewal failed; the round went on with the old SVID, which is still valid.
    let report = round.expect("the round goes on when only the agent renewal failed");
    assert!(!report.agent_renewed, "{report:?}");
    let lost = h.store.get_agent(&old.spiffe_id).unwrap().unwrap().svid_serial;
    assert_eq!(manager.client().identity().unwrap().serial, old.serial);
    assert_eq!(stored_serial(&storage, &h), old.serial);

    // The next round, with the old SVID and no new token, is served and renews again.
    let report = manager.tick().await.expect("the old SVID is still accepted");
    assert!(report.agent_renewed);
    let new = manager.client().identity().unwrap().clone();
    assert!(new.serial != old.serial && new.serial != lost);
    assert_eq!(stored_serial(&storage, &h), new.serial, "stored before use");
    clock.set(SystemTime::now());
    assert!(!manager.tick().await.unwrap().agent_renewed);

    // The new SVID has been used: the old one is refused from now on.
    let record = h.store.get_agent(&old.spiffe_id).unwrap().unwrap();
    assert_eq!((record.svid_serial, record.previous_svid_serial), (new.serial.clone(), None));
    let mut stale = ServerClient::connect_with_identity(&h.addr.to_string(), td(), h.bundle(), old)
        .await
        .unwrap();
    match stale.fetch_bundle().await.unwrap_err() {
        ClientError::Rpc(status) => assert_eq!(status.code(), Code::PermissionDenied),
        other => panic!("expected PermissionDenied, got {other}"),
    }
}

#[tokio::test]
async fn only_the_svid_renewed_from_and_the_newest_are_accepted() {
    let h = Harness::start().await;
    let mut client = h.agent().await;
    let first = client.identity().unwrap().clone();
    let second = client.renew().await.unwrap();
    let addr = h.addr.to_string();
    let connect = |identity: AgentIdentity| {
        ServerClient::connect_with_identity(&addr, td(), h.bundle(), identity)
    };
    // As if the reply had been lost: the first SVID renews again, the second is superseded.
    let mut again = connect(first.clone()).await.unwrap();
    again.fetch_bundle().await.expect("the SVID renewed from is still accepted");
    let third = again.renew().await.unwrap();
    let mut superseded = connect(second).await.unwrap();
    match superseded.fetch_bundle().await.unwrap_err() {
        ClientError::Rpc(status) => assert_eq!(status.code(), Code::PermissionDenied),
        other => panic!("expected PermissionDenied, got {other}"),
    }
    again.fetch_bundle().await.unwrap();
    let record = h.store.get_agent(&third.spiffe_id).unwrap().unwrap();
    assert_eq!((record.svid_serial, record.previous_svid_serial), (third.serial, None));
    let mut old = connect(first).await.unwrap();
    assert!(old.fetch_bundle().await.is_err(), "the first SVID is refused once the third is used");
}

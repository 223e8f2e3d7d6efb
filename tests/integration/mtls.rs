//! Two workloads doing mutual TLS with SVIDs from a real agent, through the rustls configs
//! of `keycard_workload_api::tls`, while their SVIDs rotate several times.

use std::time::{Duration, Instant};

use keycard_workload_api::SpiffeId;

use crate::agent::{FAST_ROTATION, PATIENCE, Setup};
use crate::pair::MtlsLoad;

#[test]
fn an_mtls_pair_keeps_working_while_both_svids_rotate() {
    let setup = Setup::start_with("127.0.0.1:0", FAST_ROTATION);
    setup.entry("front");
    setup.entry("back");
    let agent = setup.agent("");
    let (front, back) =
        ("spiffe://example.org/workload/front", "spiffe://example.org/workload/back");

    // JwtSource: a token from the agent, validated locally against the JWT bundles.
    let endpoint = format!("unix://{}", agent.socket.display());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let jwt =
            tokio::time::timeout(PATIENCE, keycard_workload_api::JwtSource::new(Some(&endpoint)))
                .await
                .unwrap()
                .unwrap();
        let front = SpiffeId::parse(front).unwrap();
        let token = jwt.fetch_jwt_svid(&["db".to_owned()], Some(&front)).await.unwrap();
        assert_eq!(jwt.validate(&token.token, "db").unwrap().spiffe_id, front);
        assert!(jwt.validate(&token.token, "other").is_err());
    });

    // "back" serves and accepts only "front"; "front" connects and accepts only "back".
    let load = MtlsLoad::start(&agent.socket, front, back, Duration::from_millis(20));
    let deadline = Instant::now() + Duration::from_secs(14);
    // Stop early on the first failure: the report below shows it.
    while Instant::now() < deadline && load.failures().is_empty() {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(load.handshakes() > 50, "only {} handshakes in 14 s", load.handshakes());
    let report = load.stop();
    assert!(
        report.failures.is_empty(),
        "{} of {} handshakes failed: {:?}",
        report.failures.len(),
        report.handshakes,
        report.failures
    );
    assert!(
        report.server_leaves.len() >= 3,
        "the server's SVID rotated only {} times",
        report.server_leaves.len() - 1
    );
    assert!(
        report.client_leaves.len() >= 3,
        "the client's SVID rotated only {} times",
        report.client_leaves.len() - 1
    );
    assert_eq!(report.client_ids, [front.to_owned()].into(), "the server accepted another peer");
    println!(
        "{} handshakes, 0 failed; server SVIDs seen: {}, client SVIDs seen: {}",
        report.handshakes,
        report.server_leaves.len(),
        report.client_leaves.len()
    );
    agent.stop();
}

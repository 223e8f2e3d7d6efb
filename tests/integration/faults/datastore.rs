//! The datastore failing while two workloads do mTLS: another process holds SQLite's
//! write lock (`BEGIN EXCLUSIVE`) for longer than an SVID lives. Known workloads keep
//! their SVIDs and renewals (signing needs no datastore write); a registration fails
//! with a message naming the datastore; `keycard healthcheck` says writes fail; once the
//! lock goes, registrations work again and the new entry is served.

use std::time::{Duration, Instant};

use keycard_workload_api::client::X509Context;

use super::{Node, Pair, assert_none_failed, served};
use crate::agent::{FAST_ROTATION, PATIENCE};
use crate::procs::{Server, keycard};

/// How long the lock is held: longer than an SVID lives with FAST_ROTATION (6 s).
const LOCKED_FOR: Duration = Duration::from_secs(8);

/// Registers `workload/<name>` for this uid; returns the CLI's exit status and stderr.
fn register(node: &Node, server: &Server, name: &str) -> (bool, String) {
    let out = keycard()
        .args(["entry", "create", "--spiffe-id"])
        .arg(format!("spiffe://example.org/workload/{name}"))
        .args(["--parent-id", "spiffe://example.org/node/1", "--selector"])
        .arg(format!("unix:uid:{}", node.uid))
        .arg("--admin-socket")
        .arg(&server.admin_socket)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `keycard healthcheck`: its exit status and all it printed.
fn healthcheck(server: &Server) -> (bool, String) {
    let out = keycard()
        .arg("healthcheck")
        .arg("--admin-socket")
        .arg(&server.admin_socket)
        .output()
        .unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn with_the_datastore_locked_workloads_keep_renewing_and_registrations_fail_clearly() {
    let Pair { node, server, agent, runtime, load, watch } = Pair::start(FAST_ROTATION);
    assert!(healthcheck(&server).0, "unhealthy before the fault: {}", healthcheck(&server).1);

    // Another process takes SQLite's write lock (the test process, not the server).
    let db = rusqlite::Connection::open(node.server_dir().join("datastore.sqlite3")).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let locked = Instant::now();
    let before = super::expiries(&watch.updated().borrow());

    // A registration and a healthcheck, each waiting out the server's busy timeout, while
    // renewals go on: both SVIDs rotate with the lock held.
    let renewed = |c: &std::sync::Arc<X509Context>| super::renewed_since(&before, c);
    let mut updates = watch.updated();
    let (registered, health, rotated_after) = std::thread::scope(|scope| {
        let registration = scope.spawn(|| register(&node, &server, "late"));
        let health = scope.spawn(|| healthcheck(&server));
        runtime
            .block_on(async { tokio::time::timeout(PATIENCE, updates.wait_for(renewed)).await })
            .expect("no renewal while the datastore was locked")
            .unwrap();
        let rotated_after = locked.elapsed();
        (registration.join().unwrap(), health.join().unwrap(), rotated_after)
    });
    println!("while locked: entry create said {:?}; healthcheck said {:?}", registered.1, health.1);
    assert!(!registered.0, "a registration succeeded with the datastore locked");
    assert!(registered.1.contains("datastore"), "no clear error: {}", registered.1);
    assert!(!health.0, "healthcheck passed with the datastore locked: {}", health.1);
    assert!(health.1.contains("datastore") && health.1.contains("writes fail"), "{}", health.1);
    std::thread::sleep(LOCKED_FOR.saturating_sub(locked.elapsed()));
    assert_none_failed(&load.failures(), load.handshakes(), "while locked");
    db.execute_batch("ROLLBACK").unwrap();
    drop(db);
    let held = locked.elapsed();

    // Recovered: healthy, registrations work, and the new entry is served.
    let (ok, text) = healthcheck(&server);
    assert!(ok, "still unhealthy after the lock went: {text}");
    let (ok, text) = register(&node, &server, "late");
    assert!(ok, "registration failed after the lock went: {text}");
    runtime.block_on(served(&agent.socket, 3));

    let report = load.stop();
    assert_none_failed(&report.failures, report.handshakes, "in all");
    println!(
        "datastore locked {held:?}: both SVIDs renewed {rotated_after:?} into it; {} handshakes, \
         0 failed",
        report.handshakes
    );
    agent.stop();
    server.stop();
}

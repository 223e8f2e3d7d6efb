//! Two workloads under different uids (root and `nobody`), registered with the CLI, doing
//! mutual TLS with their SVIDs (the example echo server and client) through a full CA
//! rotation (prepare, activate, taint, revoke), and a JWT-SVID minted for one and
//! validated by the other.

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::examples::example;
use crate::support::{Dev, PATIENCE, is_root};

const NOBODY: u32 = 65534;

/// The serial of the default SVID `uid` gets now.
fn serial(dev: &Dev, uid: Option<u32>) -> String {
    let out = dev.api_until_ok(uid, &["fetch", "x509", "--output", "json"]);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    doc["svids"][0]["serial"].as_str().unwrap().to_owned()
}

/// One request through the example client, as this process (root).
fn talk(dev: &Dev, address: &str, n: usize) {
    let out = Command::new(example("mtls_echo_client"))
        .args([address, "spiffe://example.org/back", &format!("ping-{n}")])
        .env("SPIFFE_ENDPOINT_SOCKET", &dev.endpoint)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "request {n} failed: {out:?}");
    assert!(
        text.contains("server spiffe://example.org/back answered: spiffe://example.org/user/")
            && text.contains(&format!("ping-{n}")),
        "{text}"
    );
}

#[test]
fn two_uids_talk_mtls_through_a_ca_rotation_and_share_a_jwt() {
    if !is_root() {
        println!("note: not root, cannot run a workload as another uid; test skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dev = Dev::start(&dir.path().join(".keycard-dev"));
    dev.admin(&[
        "entry",
        "create",
        "--parent-id",
        "spiffe://example.org/node/dev",
        "--spiffe-id",
        "spiffe://example.org/back",
        "--selector",
        &format!("unix:uid:{NOBODY}"),
    ]);

    // The server workload runs as nobody and gets its identity from the same agent.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let address = format!("127.0.0.1:{port}");
    let mut server = Command::new(example("mtls_echo_server"))
        .args([&address, "example.org"])
        .env("SPIFFE_ENDPOINT_SOCKET", &dev.endpoint)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    BufReader::new(server.stdout.as_mut().unwrap()).read_line(&mut banner).unwrap();
    assert!(banner.contains("spiffe://example.org/back listening"), "{banner}");

    let mut n = 0;
    let mut talk_a_while = |dev: &Dev, times: usize| {
        for _ in 0..times {
            n += 1;
            talk(dev, &address, n);
        }
    };
    talk_a_while(&dev, 3);

    // A full X.509 authority rotation while they talk.
    let before = (serial(&dev, None), serial(&dev, Some(NOBODY)));
    let shown = dev.admin(&["authority", "x509", "show"]);
    let old = crate::authority::active_authority_id(&shown);
    let prepared = dev.admin(&["authority", "x509", "prepare"]);
    let new = prepared["id"].as_str().unwrap().to_owned();
    talk_a_while(&dev, 2);
    dev.admin(&["authority", "x509", "activate", "--id", &new]);
    talk_a_while(&dev, 2);
    dev.admin(&["authority", "x509", "taint", "--id", &old]);
    // Tainting makes the agent renew both SVIDs at once, from the new authority.
    let deadline = Instant::now() + PATIENCE;
    loop {
        talk_a_while(&dev, 1);
        let now = (serial(&dev, None), serial(&dev, Some(NOBODY)));
        if now.0 != before.0 && now.1 != before.1 {
            break;
        }
        assert!(Instant::now() < deadline, "the SVIDs were not renewed after the taint");
        std::thread::sleep(Duration::from_millis(200));
    }
    dev.admin(&["authority", "x509", "revoke", "--id", &old]);
    // Give the bundle change a moment to reach both workloads, talking all the while.
    for _ in 0..10 {
        talk_a_while(&dev, 1);
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("{n} requests over mTLS through the rotation, none failed");

    // A JWT-SVID fetched by root's workload, validated by nobody's.
    let out = dev.api(
        None,
        &["fetch", "jwt", "--audience", "spiffe://example.org/back", "--output", "json"],
    );
    assert!(out.status.success(), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let token = doc["svids"][0]["token"].as_str().unwrap().to_owned();
    let out = dev.api(
        Some(NOBODY),
        &["validate", "jwt", "--audience", "spiffe://example.org/back", "--svid", &token],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("spiffe://example.org/user/"), "{out:?}");

    let _ = server.kill();
    let _ = server.wait();
    dev.stop();
}

//! Another uid on the admin socket: refused by file modes, and, with the modes opened on
//! purpose, by the kernel's peer credentials.
//!
//! The other uid is a real process: this test binary re-executed as uid 65534 (nobody)
//! running only [`peer_helper`], which connects with a tonic client and reports whether
//! the call worked. Changing uid needs root; without it the tests print a note and pass.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::Endpoint;

use super::pb;
use super::pb::admin_client::AdminClient;
use super::tests::Harness;
use crate::unixsock::own_uid;

const HELPER_ENV: &str = "KEYCARD_TEST_ADMIN_PEER_SOCKET";
const NOBODY: u32 = 65534;

/// Not a test by itself: when run by the tests below (with the socket in the environment,
/// as another uid), calls Health and prints the outcome.
#[tokio::test]
async fn peer_helper() {
    let Some(path) = std::env::var_os(HELPER_ENV) else { return };
    let result = async {
        let channel = Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move { tokio::net::UnixStream::connect(path).await.map(TokioIo::new) }
            }))
            .await
            .map_err(|e| format!("connect: {e:?}"))?;
        let reply = AdminClient::new(channel)
            .health(pb::HealthRequest {})
            .await
            .map_err(|e| format!("call: {e:?}"))?;
        Ok::<_, String>(reply.into_inner().trust_domain)
    }
    .await;
    match result {
        Ok(td) => println!("HELPER-RESULT: ok {td}"),
        Err(e) => println!("HELPER-RESULT: refused {e}"),
    }
}

/// Runs [`peer_helper`] as `uid` against `socket`; returns its output.
async fn run_helper(socket: &Path, uid: u32) -> String {
    let exe = std::env::current_exe().unwrap();
    let run = tokio::process::Command::new(exe)
        .args(["--exact", "server::admin::tests_peer::peer_helper", "--nocapture"])
        .env(HELPER_ENV, socket)
        .uid(uid)
        .gid(uid)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    text
}

/// Opens the directories and the socket to everyone, so only the peer check remains.
fn open_modes(h: &Harness) {
    let set = |p: &Path, mode| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
    set(h.dir.path(), 0o755).unwrap();
    set(h.socket.parent().unwrap(), 0o755).unwrap();
    set(&h.socket, 0o666).unwrap();
}

fn not_root() -> bool {
    let uid = own_uid().unwrap();
    if uid != 0 {
        println!("note: running as uid {uid}, not root: cannot act as another uid; skipped");
    }
    uid != 0
}

#[tokio::test]
async fn another_uid_is_dropped_by_the_peer_credential_check() {
    if not_root() {
        return;
    }
    let mut h = Harness::start(vec![]).await;
    open_modes(&h);
    let out = run_helper(&h.socket, NOBODY).await;
    assert!(out.contains("HELPER-RESULT: refused"), "{out}");
    assert!(!out.contains("PermissionDenied"), "refused by the peer check, not by modes: {out}");
    // The server keeps serving its own uid.
    let health = h.client.health(pb::HealthRequest {}).await.unwrap().into_inner();
    assert!(health.healthy);
}

#[tokio::test]
async fn an_allowed_extra_uid_is_served() {
    if not_root() {
        return;
    }
    let h = Harness::start(vec![NOBODY]).await;
    open_modes(&h);
    let out = run_helper(&h.socket, NOBODY).await;
    assert!(out.contains("HELPER-RESULT: ok example.org"), "{out}");
}

#[tokio::test]
async fn file_modes_keep_another_uid_out_first() {
    if not_root() {
        return;
    }
    let h = Harness::start(vec![NOBODY]).await;
    // Even an allowed uid cannot reach a socket in a 0700 directory it does not own.
    std::fs::set_permissions(h.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = run_helper(&h.socket, NOBODY).await;
    assert!(out.contains("HELPER-RESULT: refused connect"), "{out}");
    assert!(out.contains("PermissionDenied"), "{out}");
}

//! Explain over a real Unix socket, with the real tonic client, for this test process.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;

use keycard_workload_api::TrustDomain;
use tokio::sync::oneshot;
use tonic::Code;

use super::pb::agent_admin_client::AgentAdminClient;
use super::*;
use crate::clock::SystemClock;
use crate::server::agent_api::proto as pb_agent;

fn entry(id: &str, selectors: &[String]) -> pb_agent::Entry {
    pb_agent::Entry {
        id: id.into(),
        spiffe_id: format!("spiffe://example.org/{id}"),
        selectors: selectors.to_vec(),
        ..Default::default()
    }
}

#[tokio::test]
async fn explain_names_the_selectors_and_what_each_entry_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let uid = std::fs::metadata(dir.path()).unwrap().uid();
    let ca = crate::ca::manager::test_ca(TrustDomain::new("example.org").unwrap());
    let cache = Arc::new(SvidCache::new(Arc::new(SystemClock)));
    let mine = format!("unix:uid:{uid}");
    let entries: BTreeMap<String, pb_agent::Entry> = [
        entry("match", std::slice::from_ref(&mine)),
        entry("extra", &[mine.clone(), "unix:user:no-such-user-here".into()]),
        entry("other", &["unix:uid:4242424".into()]),
    ]
    .into_iter()
    .map(|e| (e.id.clone(), e))
    .collect();
    cache.set_entries(&entries, Some(&ca.bundle().unwrap()), &[]).unwrap();

    let socket = dir.path().join("private/admin.sock");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn({
        let (socket, cache) = (socket.clone(), cache.clone());
        async move {
            serve_admin(&socket, cache, UnixAttestorOptions::default(), async move {
                let _ = stopped.await;
            })
            .await
        }
    });
    let mut client = None;
    for _ in 0..100 {
        if let Ok(channel) = keycard_workload_api::client::unix_channel(&socket).await {
            client = Some(AgentAdminClient::new(channel));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut client = client.expect("the admin socket never came up");

    let pid = std::process::id() as i32;
    let reply = client.explain(pb::ExplainRequest { pid }).await.unwrap().into_inner();
    assert_eq!(reply.pid, pid);
    assert!(reply.selectors.contains(&mine), "{:?}", reply.selectors);
    let by_id: BTreeMap<&str, &pb::EntryMatch> =
        reply.entries.iter().map(|e| (e.entry_id.as_str(), e)).collect();
    assert!(by_id["match"].matches && by_id["match"].missing_selectors.is_empty());
    assert!(!by_id["extra"].matches);
    assert_eq!(by_id["extra"].missing_selectors, ["unix:user:no-such-user-here"]);
    assert!(!by_id["other"].matches);
    assert_eq!(by_id["other"].missing_selectors, ["unix:uid:4242424"]);
    assert!(!by_id["match"].has_svid && by_id["match"].svid_expires_at == 0);
    assert_eq!(by_id["match"].spiffe_id, "spiffe://example.org/match");

    // A PID no process can have (above the kernel's pid_max; a PID of an exited child
    // could be reused by a parallel test): NotFound, naming the PID.
    let pid_max: i32 =
        std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap();
    let gone = pid_max + 1;
    let err = client.explain(pb::ExplainRequest { pid: gone }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains(&gone.to_string()), "{err:?}");
    let err = client.explain(pb::ExplainRequest { pid: 0 }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    let _ = stop.send(());
    server.await.unwrap().unwrap();
    assert!(!socket.exists(), "the socket is removed on shutdown");
}

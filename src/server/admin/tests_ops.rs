//! Join tokens, agents, the bundle and authorities through the admin API (see tests.rs).

use std::time::Duration;

use keycard_workload_api::{SpiffeBundle, SpiffeId, TrustDomain};
use tonic::Code;

use super::convert::unix_secs;
use super::pb;
use super::tests::Harness;
use crate::ca::AuthorityKind;
use crate::clock::Clock as _;
use crate::selector::Selector;
use crate::server::datastore::{AgentRecord, DataStore, TokenUse};
use crate::server::join_token::hash_token;

/// An agent record as node attestation would store it.
pub(crate) fn agent(id: &str, h: &Harness) -> AgentRecord {
    let now = h.clock.now();
    AgentRecord {
        id: SpiffeId::parse(id).unwrap(),
        attestation_type: "x509pop".into(),
        selectors: [Selector::parse("x509pop:subject:cn:node").unwrap()].into_iter().collect(),
        svid_serial: "01ab".into(),
        previous_svid_serial: None,
        svid_expires_at: now + Duration::from_secs(3600),
        banned: false,
        can_reattest: true,
        created_at: now,
        updated_at: now,
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    r.unwrap_err().code()
}

#[tokio::test]
async fn join_tokens_are_stored_hashed_with_the_default_or_chosen_agent_id() {
    let mut h = Harness::start(vec![]).await;
    let req = pb::GenerateJoinTokenRequest { ttl_seconds: 0, agent_id: String::new() };
    let reply = h.client.generate_join_token(req).await.unwrap().into_inner();
    assert_eq!(reply.token.len(), 64);
    assert_eq!(reply.token_id, hex::encode(&hash_token(&reply.token)[..8]));
    assert_eq!(
        reply.agent_id,
        format!("spiffe://example.org/keycard/agent/join_token/{}", reply.token_id)
    );
    assert_eq!(reply.expires_at, unix_secs(h.clock.now()) + 600);
    let used = h.store.use_join_token(&hash_token(&reply.token), h.clock.now()).unwrap();
    assert!(matches!(used, TokenUse::Accepted(_)), "{used:?}");

    let chosen = "spiffe://example.org/nodes/db1";
    let req = pb::GenerateJoinTokenRequest { ttl_seconds: 90, agent_id: chosen.into() };
    let reply = h.client.generate_join_token(req).await.unwrap().into_inner();
    assert_eq!(reply.agent_id, chosen);
    assert_eq!(reply.expires_at, unix_secs(h.clock.now()) + 90);

    let foreign =
        pb::GenerateJoinTokenRequest { ttl_seconds: 0, agent_id: "spiffe://x.org/a".into() };
    let status = h.client.generate_join_token(foreign).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("trust domain"), "{}", status.message());
    let long = pb::GenerateJoinTokenRequest { ttl_seconds: 31 * 24 * 3600, agent_id: "".into() };
    assert_eq!(code(h.client.generate_join_token(long).await), Code::InvalidArgument);
}

#[tokio::test]
async fn agents_are_listed_shown_banned_and_evicted() {
    let mut h = Harness::start(vec![]).await;
    for i in 0..3 {
        let a = agent(&format!("spiffe://example.org/keycard/agent/x509pop/{i}"), &h);
        h.store.upsert_agent(&a).unwrap();
    }
    let mut req = pb::ListAgentsRequest { page_size: 2, page_token: String::new() };
    let first = h.client.list_agents(req.clone()).await.unwrap().into_inner();
    assert_eq!(first.agents.len(), 2);
    assert!(!first.next_page_token.is_empty());
    req.page_token = first.next_page_token;
    let second = h.client.list_agents(req).await.unwrap().into_inner();
    assert_eq!(second.agents.len(), 1);
    assert!(second.next_page_token.is_empty());

    let id = "spiffe://example.org/keycard/agent/x509pop/1".to_string();
    let shown = h.client.get_agent(pb::AgentRequest { id: id.clone() }).await.unwrap();
    let shown = shown.into_inner();
    assert_eq!((shown.attestation_type.as_str(), shown.banned), ("x509pop", false));
    assert_eq!(shown.selectors, vec!["x509pop:subject:cn:node"]);

    let banned = h.client.ban_agent(pb::AgentRequest { id: id.clone() }).await.unwrap();
    assert!(banned.into_inner().banned);
    assert!(h.store.get_agent(&SpiffeId::parse(&id).unwrap()).unwrap().unwrap().banned);

    let evicted = h.client.evict_agent(pb::AgentRequest { id: id.clone() }).await.unwrap();
    assert_eq!(evicted.into_inner().agent.unwrap().id, id);
    assert_eq!(h.store.count_agents().unwrap(), 2);
    assert_eq!(h.metrics.agents.get(), 2);

    for call in 0..3 {
        let req = pb::AgentRequest { id: id.clone() };
        let status = match call {
            0 => h.client.get_agent(req).await.map(|_| ()),
            1 => h.client.ban_agent(req).await.map(|_| ()),
            _ => h.client.evict_agent(req).await.map(|_| ()),
        }
        .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{call}: {}", status.message());
        assert!(status.message().contains("keycard agent list"), "{}", status.message());
    }
    let bad = pb::AgentRequest { id: "not-an-id".into() };
    assert_eq!(code(h.client.get_agent(bad).await), Code::InvalidArgument);
}

#[tokio::test]
async fn the_bundle_comes_as_pem_or_spiffe_json() {
    let mut h = Harness::start(vec![]).await;
    let expected = h.ca.bundle().unwrap();
    let req = pb::GetBundleRequest { format: pb::BundleFormat::Pem.into() };
    let pem = h.client.get_bundle(req).await.unwrap().into_inner();
    let certs = pem::parse_many(&pem.text).unwrap();
    let ders: Vec<Vec<u8>> = certs.iter().map(|p| p.contents().to_vec()).collect();
    let want: Vec<Vec<u8>> = expected.x509_authorities.iter().map(|c| c.to_vec()).collect();
    assert_eq!(ders, want);
    assert_eq!(pem.trust_domain, "example.org");

    let req = pb::GetBundleRequest { format: pb::BundleFormat::Spiffe.into() };
    let json = h.client.get_bundle(req).await.unwrap().into_inner();
    let td = TrustDomain::new("example.org").unwrap();
    let parsed = SpiffeBundle::parse(td, json.text.as_bytes()).unwrap();
    assert_eq!(parsed.x509_authorities, expected.x509_authorities);
    assert_eq!(parsed.jwt_authorities.len(), 1);
    assert_eq!(Some(json.sequence), expected.sequence);

    let req = pb::GetBundleRequest { format: 0 };
    assert_eq!(code(h.client.get_bundle(req).await), Code::InvalidArgument);
}

#[tokio::test]
async fn authorities_are_prepared_activated_tainted_and_revoked() {
    let mut h = Harness::start(vec![]).await;
    for (kind, wire) in [
        (AuthorityKind::X509, pb::AuthorityKind::X509),
        (AuthorityKind::Jwt, pb::AuthorityKind::Jwt),
    ] {
        let kind_req = || pb::ListAuthoritiesRequest { kind: wire.into() };
        let one = |id: &str| pb::AuthorityRequest { kind: wire.into(), id: id.into() };
        let list = h.client.list_authorities(kind_req()).await.unwrap().into_inner().authorities;
        assert_eq!(list.len(), 1);
        let first = list[0].id.clone();
        assert_eq!(list[0].state, "active");

        let prepared = h.client.prepare_authority(kind_req()).await.unwrap().into_inner();
        assert_eq!(prepared.state, "prepared");
        let again = h.client.prepare_authority(kind_req()).await;
        assert_eq!(code(again), Code::FailedPrecondition);
        // The active one cannot be tainted; an unknown one cannot be activated.
        assert_eq!(code(h.client.taint_authority(one(&first)).await), Code::FailedPrecondition);
        assert_eq!(code(h.client.activate_authority(one("nope")).await), Code::NotFound);

        let active = h.client.activate_authority(one(&prepared.id)).await.unwrap().into_inner();
        assert_eq!(active.state, "active");
        assert_eq!(h.ca.authorities(kind).iter().filter(|a| a.id == first).count(), 1);
        // Revoking needs a taint first.
        assert_eq!(code(h.client.revoke_authority(one(&first)).await), Code::FailedPrecondition);
        let tainted = h.client.taint_authority(one(&first)).await.unwrap().into_inner();
        assert!(tainted.tainted);
        assert_eq!(tainted.state, "old");
        let revoked = h.client.revoke_authority(one(&first)).await.unwrap().into_inner();
        assert_eq!(revoked.authority.unwrap().id, first);
        let list = h.client.list_authorities(kind_req()).await.unwrap().into_inner().authorities;
        assert_eq!(list.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), vec![prepared.id]);
    }
    let no_kind = pb::ListAuthoritiesRequest { kind: 0 };
    assert_eq!(code(h.client.list_authorities(no_kind).await), Code::InvalidArgument);
    let empty = pb::AuthorityRequest { kind: pb::AuthorityKind::X509.into(), id: String::new() };
    assert_eq!(code(h.client.taint_authority(empty).await), Code::InvalidArgument);
}

/// A small tmpfs mounted over a directory, unmounted on drop (even when a test fails).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mounts one; `None` where this process may not mount (not root, no CAP_SYS_ADMIN).
    fn mount(dir: &std::path::Path) -> Option<Self> {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes zeros to `path` until the file system is full.
fn fill(path: &std::path::Path) {
    use std::io::Write as _;
    let mut file = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 4096];
    while file.write_all(&block).and_then(|()| file.sync_all()).is_ok() {}
}

#[tokio::test]
async fn health_reports_a_datastore_that_reads_but_cannot_write() {
    let outer = tempfile::tempdir().unwrap();
    let Some(_tmpfs) = Tmpfs::mount(outer.path()) else {
        println!("note: cannot mount a tmpfs here (needs root); test skipped");
        return;
    };
    let db = outer.path().join("keycard.db");
    let mut h = Harness::start_with_db(vec![], Some(&db)).await;
    let health = h.client.health(pb::HealthRequest {}).await.unwrap().into_inner();
    assert!(health.healthy, "{health:?}");

    // The disk fills up: reads still work, every write fails.
    let filler = outer.path().join("filler");
    fill(&filler);
    assert!(h.store.ping().is_ok(), "reads still work");
    let health = h.client.health(pb::HealthRequest {}).await.unwrap().into_inner();
    assert!(!health.healthy, "{health:?}");
    assert!(health.datastore_error.contains("writes fail"), "{health:?}");
    assert!(health.datastore_error.contains("full"), "{health:?}");

    // Space again: healthy again, and the probes left no record behind.
    std::fs::remove_file(&filler).unwrap();
    let health = h.client.health(pb::HealthRequest {}).await.unwrap().into_inner();
    assert!(health.healthy, "{health:?}");
    let before = h.clock.now() + Duration::from_secs(3600);
    assert_eq!(h.store.prune_join_tokens(before).unwrap(), 0, "no probe token left");
    h.stop().await;
}

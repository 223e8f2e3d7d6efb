//! The admin API end to end: a real tonic client over the real socket, a real SQLite
//! datastore on disk and a real CA manager (memory keys and journal, manual clock).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock as _;

use hyper_util::rt::TokioIo;
use keycard_workload_api::TrustDomain;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use super::pb::admin_client::AdminClient;
use super::{AdminOptions, ServeError, pb, serve};
use crate::ca::journal::MemoryJournal;
use crate::ca::{CaConfig, CaManager, KeyType, MemoryKeyManager};
use crate::clock::ManualClock;
use crate::server::datastore::{DataStore, SqliteDataStore};
use crate::telemetry::ServerMetrics;

pub(crate) const SERVER_ID: &str = "spiffe://example.org/keycard/server";
/// An agent ID, parent of workload entries (it need not exist).
pub(crate) const AGENT_ID: &str = "spiffe://example.org/keycard/agent/x509pop/a1";

/// A running admin API with handles on everything behind it.
pub(crate) struct Harness {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub store: Arc<SqliteDataStore>,
    pub ca: Arc<CaManager>,
    pub metrics: Arc<ServerMetrics>,
    pub clock: ManualClock,
    pub client: AdminClient<Channel>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

/// A client on the admin socket at `path`.
pub(crate) async fn connect(path: &Path) -> AdminClient<Channel> {
    let path = path.to_path_buf();
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { tokio::net::UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
        .unwrap();
    AdminClient::new(channel)
}

impl Harness {
    /// Starts the admin API on a socket in a fresh temporary directory.
    pub async fn start(allowed_uids: Vec<u32>) -> Self {
        Self::start_with_db(allowed_uids, None).await
    }

    /// As [`Harness::start`], with the database at `db` when given.
    pub async fn start_with_db(allowed_uids: Vec<u32>, db: Option<&Path>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("private").join("admin.sock");
        let db = db.map_or_else(|| dir.path().join("keycard.db"), Path::to_path_buf);
        let store = Arc::new(SqliteDataStore::open(&db).unwrap());
        let clock = ManualClock::starting_now();
        let config = CaConfig {
            trust_domain: TrustDomain::new("example.org").unwrap(),
            x509_key_type: KeyType::EcP256,
            jwt_key_type: KeyType::EcP256,
            ca_ttl: Duration::from_secs(24 * 3600),
            backdate: Duration::from_secs(10),
            upstream: None,
            refresh_hint: Duration::from_secs(300),
        };
        let keys = Arc::new(MemoryKeyManager::new());
        let journal = Arc::new(MemoryJournal::default());
        let ca = Arc::new(CaManager::open(config, keys, Arc::new(clock.clone()), journal).unwrap());
        let metrics = Arc::new(ServerMetrics::new());
        let options = AdminOptions {
            trust_domain: TrustDomain::new("example.org").unwrap(),
            socket_path: socket.clone(),
            allowed_uids,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let cluster = Arc::new(crate::server::cluster::Cluster::new(
            store.clone(),
            ca.clone(),
            Arc::new(clock.clone()),
            "test-server".into(),
            "127.0.0.1:0".into(),
        ));
        let task = tokio::spawn(serve(
            options,
            store.clone(),
            cluster,
            metrics.clone(),
            Arc::new(clock.clone()),
            async move {
                let _ = stopped.await;
            },
        ));
        // The socket exists once bound; wait for it without sleeping: poll with yields.
        while !socket.exists() {
            assert!(!task.is_finished(), "the admin server stopped early");
            tokio::task::yield_now().await;
        }
        let client = connect(&socket).await;
        Self { dir, socket, store, ca, metrics, clock, client, stop: Some(stop), task: Some(task) }
    }

    /// Stops the server and waits for it.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

pub(crate) fn spec(path: &str, parent: &str, selectors: &[&str]) -> pb::EntrySpec {
    pb::EntrySpec {
        spiffe_id: format!("spiffe://example.org{path}"),
        parent_id: parent.to_owned(),
        selectors: selectors.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

async fn create(h: &mut Harness, spec: pb::EntrySpec) -> Result<pb::Entry, tonic::Status> {
    let req = pb::CreateEntryRequest { spec: Some(spec) };
    h.client.create_entry(req).await.map(|r| r.into_inner())
}

fn assert_status(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, needle: &str) {
    let status = result.unwrap_err();
    assert_eq!(status.code(), code, "{}", status.message());
    assert!(status.message().contains(needle), "{:?} lacks {needle:?}", status.message());
}

#[tokio::test]
async fn the_socket_and_its_directory_are_private_and_removed_on_shutdown() {
    let mut h = Harness::start(vec![]).await;
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&h.socket), 0o600);
    assert_eq!(mode(h.socket.parent().unwrap()), 0o700);
    let health = h.client.health(pb::HealthRequest {}).await.unwrap().into_inner();
    assert!(health.healthy, "{health:?}");
    assert_eq!(health.trust_domain, "example.org");
    assert!(!health.active_x509_authority.is_empty() && !health.active_jwt_authority.is_empty());
    h.stop().await;
    assert!(!h.socket.exists());
}

#[tokio::test]
async fn entries_are_created_read_updated_deleted_and_counted() {
    let mut h = Harness::start(vec![]).await;
    let mut wanted = spec("/web", AGENT_ID, &["unix:uid:1000", "unix:gid:1000"]);
    wanted.x509_ttl_seconds = 3600;
    wanted.dns_names = vec!["web.example.org".into()];
    let created = create(&mut h, wanted.clone()).await.unwrap();
    assert_eq!(created.id.len(), 36);
    let got_spec = created.spec.clone().unwrap();
    assert_eq!(got_spec.selectors, vec!["unix:gid:1000", "unix:uid:1000"]);
    assert_eq!((got_spec.x509_ttl_seconds, got_spec.jwt_ttl_seconds), (3600, 0));
    assert_eq!(h.metrics.entries.get(), 1);

    let got = h.client.get_entry(pb::GetEntryRequest { id: created.id.clone() }).await.unwrap();
    assert_eq!(got.into_inner(), pb::Entry { parent_missing: false, ..created.clone() });

    let mut changed = got_spec.clone();
    changed.hint = "primary".into();
    changed.selectors = vec!["unix:uid:1001".into()];
    let req = pb::UpdateEntryRequest { id: created.id.clone(), spec: Some(changed) };
    let updated = h.client.update_entry(req).await.unwrap().into_inner();
    assert!(updated.revision > created.revision);
    assert_eq!(updated.spec.as_ref().unwrap().hint, "primary");

    let count = h.client.count_entries(pb::CountEntriesRequest {}).await.unwrap();
    assert_eq!(count.into_inner().count, 1);
    let req = pb::DeleteEntryRequest { id: created.id.clone() };
    let deleted = h.client.delete_entry(req).await.unwrap().into_inner();
    assert_eq!(deleted.id, created.id);
    assert_eq!(h.store.count_entries().unwrap(), 0);
    assert_eq!(h.metrics.entries.get(), 0);
}

#[tokio::test]
async fn unknown_entry_ids_are_not_found() {
    let mut h = Harness::start(vec![]).await;
    let id = "00000000-0000-4000-8000-000000000000".to_string();
    let get = h.client.get_entry(pb::GetEntryRequest { id: id.clone() }).await;
    assert_status(get, Code::NotFound, "keycard entry show");
    let req = pb::UpdateEntryRequest {
        id: id.clone(),
        spec: Some(spec("/web", AGENT_ID, &["unix:uid:1"])),
    };
    assert_status(h.client.update_entry(req).await, Code::NotFound, &id);
    let del = h.client.delete_entry(pb::DeleteEntryRequest { id: id.clone() }).await;
    assert_status(del, Code::NotFound, &id);
    let get = h.client.get_entry(pb::GetEntryRequest { id: String::new() }).await;
    assert_status(get, Code::InvalidArgument, "id is required");
}

#[tokio::test]
async fn malformed_and_foreign_input_is_invalid_argument() {
    let mut h = Harness::start(vec![]).await;
    let cases: Vec<(pb::EntrySpec, &str)> = vec![
        (spec("/web", SERVER_ID, &["unix"]), "type:value"),
        (spec("/web", SERVER_ID, &[]), "at least one selector"),
        (spec("/web", "spiffe://other.org/agent", &["unix:uid:1"]), "trust domain"),
        (spec("/web", "example.org/agent", &["unix:uid:1"]), "spiffe://<trust domain>/<path>"),
        (spec("/keycard/agent/x", AGENT_ID, &["unix:uid:1"]), "reserved"),
        (spec("/web", AGENT_ID, &["unix:uid:abc"]), "can never match"),
        (spec("/web", AGENT_ID, &["unix:uid:-1"]), "decimal"),
        (spec("/web", AGENT_ID, &["unix:foo:1"]), "the unix attestor emits"),
        (spec("/web", AGENT_ID, &["bogus:uid:1"]), "no attestor plugins"),
        (spec("/web", SERVER_ID, &["unix:uid:1"]), "node selectors"),
        (
            pb::EntrySpec {
                x509_ttl_seconds: 99_999_999 * 3600,
                ..spec("/w", AGENT_ID, &["unix:uid:1"])
            },
            "above the cap of 14400s (4h)",
        ),
        (
            pb::EntrySpec {
                dns_names: vec!["127.0.0.1".into()],
                ..spec("/w", AGENT_ID, &["unix:uid:1"])
            },
            "DNS name",
        ),
        (
            pb::EntrySpec {
                dns_names: vec!["999.999.999.999".into()],
                ..spec("/w", AGENT_ID, &["unix:uid:1"])
            },
            "DNS name",
        ),
        (
            pb::EntrySpec {
                dns_names: vec!["bad name".into()],
                ..spec("/w", AGENT_ID, &["unix:uid:1"])
            },
            "DNS name",
        ),
    ];
    for (s, needle) in cases {
        assert_status(create(&mut h, s).await, Code::InvalidArgument, needle);
    }
    let none = h.client.create_entry(pb::CreateEntryRequest { spec: None }).await;
    assert_status(none, Code::InvalidArgument, "spec is required");
    assert_eq!(h.store.count_entries().unwrap(), 0);
}

#[tokio::test]
async fn a_duplicate_entry_names_the_existing_one() {
    let mut h = Harness::start(vec![]).await;
    let first = create(&mut h, spec("/web", AGENT_ID, &["unix:uid:1"])).await.unwrap();
    let again = create(&mut h, spec("/web", AGENT_ID, &["unix:uid:1"])).await;
    let status = again.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert!(status.message().contains(&first.id), "{}", status.message());
    assert!(status.message().contains("keycard entry update"), "{}", status.message());
}

/// A parent that does not exist yet is allowed (declarative registration writes entries
/// before their nodes join); the reply says so, so that the CLI can warn.
#[tokio::test]
async fn parents_that_do_not_exist_yet_are_allowed_and_flagged() {
    let mut h = Harness::start(vec![]).await;
    let missing = |e: &pb::Entry| e.parent_missing;
    let orphan = create(&mut h, spec("/web", "spiffe://example.org/nobody", &["unix:uid:1"]));
    assert!(missing(&orphan.await.unwrap()), "unknown parent: stored, and flagged");
    // The SPIFFE ID of an existing entry (a node alias) is a parent that exists.
    let alias = create(&mut h, spec("/nodes/db", SERVER_ID, &["x509pop:subject:cn:db"]));
    assert!(!missing(&alias.await.unwrap()), "the server is always there");
    let under_alias = spec("/db", "spiffe://example.org/nodes/db", &["unix:uid:5"]);
    assert!(!missing(&create(&mut h, under_alias).await.unwrap()));
    // An agent ID reserved by an unused, unexpired join token exists...
    let req = pb::GenerateJoinTokenRequest { ttl_seconds: 60, agent_id: String::new() };
    let token = h.client.generate_join_token(req).await.unwrap().into_inner();
    assert!(!missing(
        &create(&mut h, spec("/job", &token.agent_id, &["unix:uid:7"])).await.unwrap()
    ));
    // ... and no longer once the token expired (the entry is still stored).
    h.clock.advance(Duration::from_secs(61));
    let late = create(&mut h, spec("/job2", &token.agent_id, &["unix:uid:8"])).await.unwrap();
    assert!(missing(&late));
    // An attested agent exists.
    let agent = super::tests_ops::agent("spiffe://example.org/keycard/agent/x509pop/ab", &h);
    h.store.upsert_agent(&agent).unwrap();
    assert!(!missing(
        &create(&mut h, spec("/svc", agent.id.as_str(), &["unix:uid:9"])).await.unwrap()
    ));
    // Updating to a parent that does not exist is allowed and flagged the same way.
    let mut bad = late.spec.clone().unwrap();
    bad.parent_id = "spiffe://example.org/gone".into();
    let req = pb::UpdateEntryRequest { id: late.id.clone(), spec: Some(bad) };
    assert!(h.client.update_entry(req).await.unwrap().into_inner().parent_missing);
    // Only create and update replies carry the flag.
    let got = h.client.get_entry(pb::GetEntryRequest { id: late.id }).await.unwrap();
    assert!(!got.into_inner().parent_missing);
    assert_eq!(h.store.count_entries().unwrap(), 6);
}

/// The dev agent's join token is used up when attestation starts and the agent record is
/// written only after its SVID is signed: in between, the reservation check (unused tokens
/// only) found neither. `keycard dev`'s e2e test creates an entry under the dev agent
/// exactly then, which used to be refused with "parent ID ... does not exist".
#[tokio::test]
async fn an_entry_under_an_agent_that_is_attesting_right_now_is_stored() {
    let mut h = Harness::start(vec![]).await;
    let agent_id = "spiffe://example.org/node/dev";
    let req = pb::GenerateJoinTokenRequest { ttl_seconds: 600, agent_id: agent_id.into() };
    let token = h.client.generate_join_token(req).await.unwrap().into_inner();
    // What node attestation does first: use the token (the agent record comes later).
    let hash = crate::server::join_token::hash_token(&token.token);
    let used = h.store.use_join_token(&hash, h.clock.now()).unwrap();
    assert!(matches!(used, crate::server::datastore::TokenUse::Accepted(_)));
    let entry = create(&mut h, spec("/back", agent_id, &["unix:uid:65534"])).await.unwrap();
    assert_eq!(entry.spec.as_ref().unwrap().parent_id, agent_id);
    // The used token still names the agent ID, so it is not reported missing meanwhile.
    assert!(!entry.parent_missing, "{entry:?}");
}

#[tokio::test]
async fn listing_filters_and_pages() {
    let mut h = Harness::start(vec![]).await;
    for i in 0..5 {
        create(&mut h, spec(&format!("/w{i}"), SERVER_ID, &[&format!("x509pop:subject:cn:{i}")]))
            .await
            .unwrap();
    }
    create(&mut h, spec("/child", "spiffe://example.org/w1", &["unix:uid:1"])).await.unwrap();
    let mut req = pb::ListEntriesRequest { page_size: 2, ..Default::default() };
    let mut seen = Vec::new();
    loop {
        let page = h.client.list_entries(req.clone()).await.unwrap().into_inner();
        assert!(page.entries.len() <= 2);
        seen.extend(page.entries.into_iter().map(|e| e.id));
        if page.next_page_token.is_empty() {
            break;
        }
        req.page_token = page.next_page_token;
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((seen.len(), unique.len()), (6, 6));

    let by_parent = pb::ListEntriesRequest {
        by_parent_id: "spiffe://example.org/w1".into(),
        ..Default::default()
    };
    let page = h.client.list_entries(by_parent).await.unwrap().into_inner();
    assert_eq!(page.entries.len(), 1);
    let by_selectors =
        pb::ListEntriesRequest { by_selectors: vec!["unix:uid:1".into()], ..Default::default() };
    assert_eq!(h.client.list_entries(by_selectors).await.unwrap().into_inner().entries.len(), 1);
    let by_id = pb::ListEntriesRequest {
        by_spiffe_id: "spiffe://example.org/w3".into(),
        ..Default::default()
    };
    assert_eq!(h.client.list_entries(by_id).await.unwrap().into_inner().entries.len(), 1);

    let bad = pb::ListEntriesRequest { page_token: "bogus".into(), ..Default::default() };
    assert_status(h.client.list_entries(bad).await, Code::InvalidArgument, "bogus");
    let bad = pb::ListEntriesRequest { by_selectors: vec!["nope".into()], ..Default::default() };
    assert_status(h.client.list_entries(bad).await, Code::InvalidArgument, "type:value");
}

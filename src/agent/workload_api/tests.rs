//! The service over a real Unix socket with the real tonic client; the cache holds SVIDs
//! minted by a real CA for entries selecting this test process's uid.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keycard_workload_api::proto::{SpiffeWorkloadApiClient, X509svidResponse};
use keycard_workload_api::{SpiffeBundle, SpiffeId, TrustDomain, X509Bundle};
use rustls_pki_types::SubjectPublicKeyInfoDer;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::{Code, Streaming};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::*;
use crate::agent::cache::{NewSvid, SvidKey};
use crate::ca::{CaManager, KeyType, SigningKey, SvidRequest};
use crate::clock::SystemClock;
use crate::server::agent_api::proto as pb;

pub(crate) struct Setup {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) socket: PathBuf,
    pub(crate) uid: u32,
    pub(crate) ca: Arc<CaManager>,
    pub(crate) cache: Arc<SvidCache>,
    entries: BTreeMap<String, pb::Entry>,
    pub(crate) metrics: Arc<AgentMetrics>,
    _stop: oneshot::Sender<()>,
}

pub(crate) fn entry(id: &str, spiffe_id: &str, selector: &str) -> pb::Entry {
    pb::Entry {
        id: id.into(),
        spiffe_id: spiffe_id.into(),
        selectors: vec![selector.into()],
        hint: format!("hint-{id}"),
        ..Default::default()
    }
}

/// Answers JWT-SVID requests the way the manager does, minting with the real CA for the
/// entry's SPIFFE ID (or, with `wrong_id`, for another ID: a misbehaving server).
fn jwt_minter(ca: Arc<CaManager>, cache: Arc<SvidCache>, wrong_id: bool) -> JwtMinter {
    let (minter, mut requests) = JwtMinter::new(Arc::new(SystemClock));
    tokio::spawn(async move {
        while let Some(req) = requests.recv().await {
            let view = cache.entry_views().into_iter().find(|v| *v.entry_id == *req.entry_id);
            let id = match (view, wrong_id) {
                (Some(_), true) => SpiffeId::parse("spiffe://example.org/impostor").unwrap(),
                (Some(v), false) => v.spiffe_id,
                (None, _) => continue,
            };
            let minted = ca.sign_jwt_svid(&id, &req.audiences, Duration::from_secs(120)).unwrap();
            let exp = minted.expiry.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
            let _ = req.reply.send(Ok((minted.token, exp as i64)));
        }
    });
    minter
}

impl Setup {
    pub(crate) async fn start() -> Self {
        Self::start_full(false, ConnectionLimits::default()).await
    }

    async fn start_with(wrong_jwt_id: bool) -> Self {
        Self::start_full(wrong_jwt_id, ConnectionLimits::default()).await
    }

    /// A service with these connection caps, on a socket every local user may connect to.
    pub(crate) async fn start_full(wrong_jwt_id: bool, limits: ConnectionLimits) -> Self {
        Self::start_apis(wrong_jwt_id, limits, Apis::default()).await
    }

    /// A service serving `apis`, with these connection caps.
    pub(crate) async fn start_apis(
        wrong_jwt_id: bool,
        limits: ConnectionLimits,
        apis: Apis,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let uid = std::fs::metadata(dir.path()).unwrap().uid();
        let ca = crate::ca::manager::test_ca(TrustDomain::new("example.org").unwrap());
        let cache = Arc::new(SvidCache::new(Arc::new(SystemClock)));
        let socket = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        for (path, mode) in [(dir.path(), 0o755), (socket.as_path(), 0o777)] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let options = UnixAttestorOptions::default();
        let metrics = Arc::new(AgentMetrics::new());
        tokio::spawn(serve_apis(
            listener,
            cache.clone(),
            options,
            limits,
            metrics.clone(),
            Some(jwt_minter(ca.clone(), cache.clone(), wrong_jwt_id)),
            apis,
            async move {
                let _ = stopped.await;
            },
        ));
        let entries = BTreeMap::new();
        Self { dir, socket, uid, ca, cache, entries, metrics, _stop: stop }
    }

    pub(crate) fn my_selector(&self) -> String {
        format!("unix:uid:{}", self.uid)
    }

    /// Puts the entries in the cache (with the CA's bundle).
    pub(crate) fn sync(&mut self, entries: Vec<pb::Entry>) {
        self.sync_federated(entries, None);
    }

    /// Puts the entries in the cache (with the CA's bundle), and `federated` as the
    /// federated bundles held when given.
    pub(crate) fn sync_federated(
        &mut self,
        entries: Vec<pb::Entry>,
        federated: Option<crate::agent::cache::FederatedBundles>,
    ) {
        self.entries = entries.into_iter().map(|e| (e.id.clone(), e)).collect();
        let bundle = self.ca.bundle().unwrap();
        self.cache.set_synced(&self.entries, Some(&bundle), &[], federated).unwrap();
    }

    /// Mints a fresh SVID for the entry and puts it in the cache.
    pub(crate) fn mint(&self, entry_id: &str) -> Arc<SvidKey> {
        let key = Arc::new(SigningKey::generate(KeyType::EcP256).unwrap());
        let req = SvidRequest {
            public_key: SubjectPublicKeyInfoDer::from(key.public_key_der()),
            spiffe_id: SpiffeId::parse(&self.entries[entry_id].spiffe_id).unwrap(),
            dns_names: Vec::new(),
            ttl: Duration::from_secs(600),
        };
        let issued = self.ca.sign_x509_svid(&req).unwrap();
        let now = SystemTime::now();
        let results = self.cache.update_svids(vec![NewSvid {
            entry_id: entry_id.into(),
            chain: issued.svid.chain_without_root,
            key,
            serial: hex::encode(issued.svid.serial),
            issued_at: now,
            renew_at: now + Duration::from_secs(300),
        }]);
        results.into_iter().for_each(|r| r.unwrap());
        self.cache.svid(entry_id).expect("just cached").key.clone()
    }
}

pub(crate) async fn client(path: &Path) -> SpiffeWorkloadApiClient<Channel> {
    SpiffeWorkloadApiClient::new(keycard_workload_api::client::unix_channel(path).await.unwrap())
}

pub(crate) fn with_header<T>(msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(SECURITY_HEADER, SECURITY_HEADER_VALUE.parse().unwrap());
    req
}

pub(crate) async fn open_x509(s: &Setup) -> Streaming<X509svidResponse> {
    let mut c = client(&s.socket).await;
    c.fetch_x509svid(with_header(X509svidRequest {})).await.unwrap().into_inner()
}

fn leaf_public_key(chain: &[u8]) -> Vec<u8> {
    let (_, cert) = X509Certificate::from_der(chain).unwrap();
    cert.public_key().raw.to_vec()
}

#[tokio::test]
async fn fetch_x509_svid_returns_the_callers_svid_key_and_bundle() {
    let mut s = Setup::start().await;
    let mine = s.my_selector();
    s.sync(vec![
        entry("e1", "spiffe://example.org/me", &mine),
        entry("e2", "spiffe://example.org/other", "unix:uid:4242424"),
    ]);
    let key = s.mint("e1");
    s.mint("e2");

    let first = open_x509(&s).await.message().await.unwrap().unwrap();
    assert_eq!(first.svids.len(), 1, "only the entry selecting this uid");
    let svid = &first.svids[0];
    assert_eq!(svid.spiffe_id, "spiffe://example.org/me");
    assert_eq!(svid.hint, "hint-e1");
    assert_eq!(svid.x509_svid_key, key.pkcs8_der().secret_pkcs8_der());
    let loaded = SigningKey::from_pkcs8_der(&svid.x509_svid_key).unwrap();
    assert_eq!(loaded.public_key_der(), leaf_public_key(&svid.x509_svid));
    let bundle = X509Bundle::parse_der(TrustDomain::new("example.org").unwrap(), &svid.bundle);
    assert_eq!(bundle.unwrap(), s.ca.bundle().unwrap().x509_bundle().unwrap());
    assert!(first.federated_bundles.is_empty());
}

#[tokio::test]
async fn a_request_without_the_security_header_is_invalid() {
    let mut s = Setup::start().await;
    let mine = s.my_selector();
    s.sync(vec![entry("e1", "spiffe://example.org/me", &mine)]);
    s.mint("e1");
    let mut c = client(&s.socket).await;
    let err = c.fetch_x509svid(Request::new(X509svidRequest {})).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let mut wrong = Request::new(X509svidRequest {});
    wrong.metadata_mut().insert(SECURITY_HEADER, "TRUE".parse().unwrap());
    let err = c.fetch_x509svid(wrong).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}

#[tokio::test]
async fn a_caller_with_no_entry_is_denied() {
    let mut s = Setup::start().await;
    s.sync(vec![entry("e2", "spiffe://example.org/other", "unix:uid:4242424")]);
    s.mint("e2");
    let mut c = client(&s.socket).await;
    let err = c.fetch_x509svid(with_header(X509svidRequest {})).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(err.message(), "no identity issued");
    let err = c.fetch_x509_bundles(with_header(X509BundlesRequest {})).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
}

#[tokio::test]
async fn the_stream_sends_the_new_svid_after_a_rotation() {
    let mut s = Setup::start().await;
    let mine = s.my_selector();
    s.sync(vec![entry("e1", "spiffe://example.org/me", &mine)]);
    let first_key = s.mint("e1");
    let mut stream = open_x509(&s).await;
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.svids[0].x509_svid_key, first_key.pkcs8_der().secret_pkcs8_der());

    let second_key = s.mint("e1");
    let second = stream.message().await.unwrap().unwrap();
    assert_eq!(second.svids.len(), 1);
    assert_eq!(second.svids[0].x509_svid_key, second_key.pkcs8_der().secret_pkcs8_der());
    assert_ne!(second.svids[0].x509_svid, first.svids[0].x509_svid);
}

#[tokio::test]
async fn deleting_the_entry_ends_the_stream_with_permission_denied() {
    let mut s = Setup::start().await;
    let mine = s.my_selector();
    s.sync(vec![entry("e1", "spiffe://example.org/me", &mine)]);
    s.mint("e1");
    let mut stream = open_x509(&s).await;
    assert_eq!(stream.message().await.unwrap().unwrap().svids.len(), 1);

    s.sync(Vec::new());
    let err = stream.message().await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
}

#[tokio::test]
async fn fetch_x509_bundles_keys_the_bundle_by_trust_domain_id() {
    let mut s = Setup::start().await;
    let mine = s.my_selector();
    s.sync(vec![entry("e1", "spiffe://example.org/me", &mine)]);
    s.mint("e1");
    let mut c = client(&s.socket).await;
    let mut stream =
        c.fetch_x509_bundles(with_header(X509BundlesRequest {})).await.unwrap().into_inner();
    let msg = stream.message().await.unwrap().unwrap();
    assert_eq!(msg.bundles.len(), 1);
    let der = &msg.bundles["spiffe://example.org"];
    let bundle = X509Bundle::parse_der(TrustDomain::new("example.org").unwrap(), der).unwrap();
    assert_eq!(bundle, s.ca.bundle().unwrap().x509_bundle().unwrap());

    let mut jwt = c.fetch_jwt_bundles(with_header(JwtBundlesRequest {})).await.unwrap();
    let msg = jwt.get_mut().message().await.unwrap().unwrap();
    let json = &msg.bundles["spiffe://example.org"];
    let parsed = SpiffeBundle::parse(TrustDomain::new("example.org").unwrap(), json).unwrap();
    assert_eq!(parsed.jwt_bundle().unwrap(), s.ca.bundle().unwrap().jwt_bundle().unwrap());
}

pub(crate) fn jwt_request(audience: &[&str], spiffe_id: &str) -> Request<JwtsvidRequest> {
    with_header(JwtsvidRequest {
        audience: audience.iter().map(|a| (*a).to_owned()).collect(),
        spiffe_id: spiffe_id.into(),
    })
}

#[tokio::test]
async fn fetch_jwt_svid_gives_one_checked_token_per_identity_and_reuses_it() {
    let mut s = Setup::start().await;
    let mine = s.my_selector();
    s.sync(vec![
        entry("e1", "spiffe://example.org/me", &mine),
        entry("e3", "spiffe://example.org/me-too", &mine),
        entry("e2", "spiffe://example.org/other", "unix:uid:4242424"),
    ]);
    let mut c = client(&s.socket).await;
    let reply = c.fetch_jwtsvid(jwt_request(&["db", "cache"], "")).await.unwrap().into_inner();
    let ids: Vec<&str> = reply.svids.iter().map(|v| v.spiffe_id.as_str()).collect();
    assert_eq!(ids, ["spiffe://example.org/me", "spiffe://example.org/me-too"]);
    assert_eq!(reply.svids[0].hint, "hint-e1");
    let mut set = JwtBundleSet::new();
    set.insert(s.ca.bundle().unwrap().jwt_bundle().unwrap());
    for v in &reply.svids {
        let valid = validate_jwt_svid(&v.svid, &set, &["db", "cache"], SystemTime::now()).unwrap();
        assert_eq!(valid.spiffe_id.as_str(), v.spiffe_id);
    }
    // The same audiences (in another order) get the cached token.
    let again = c.fetch_jwtsvid(jwt_request(&["cache", "db"], "")).await.unwrap().into_inner();
    assert_eq!(again.svids[0].svid, reply.svids[0].svid);

    let one = c.fetch_jwtsvid(jwt_request(&["db"], "spiffe://example.org/me-too")).await;
    let one = one.unwrap().into_inner();
    assert_eq!(one.svids.len(), 1);
    assert_eq!(one.svids[0].spiffe_id, "spiffe://example.org/me-too");

    let err = c.fetch_jwtsvid(jwt_request(&["db"], "spiffe://example.org/other")).await;
    assert_eq!(err.unwrap_err().code(), Code::PermissionDenied);
    let err = c.fetch_jwtsvid(jwt_request(&[], "")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // Too many audiences, or one too long: refused before anything is minted.
    let many: Vec<String> = (0..=crate::wire::MAX_JWT_AUDIENCES).map(|i| format!("a{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let err = c.fetch_jwtsvid(jwt_request(&many, "")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("at most 32"), "{err:?}");
    let long = "a".repeat(crate::wire::MAX_JWT_AUDIENCE_LEN + 1);
    let err = c.fetch_jwtsvid(jwt_request(&[&long], "")).await.unwrap_err();
    assert!(err.message().contains("the limit is 256"), "{err:?}");
    let most = &many[..crate::wire::MAX_JWT_AUDIENCES];
    assert!(c.fetch_jwtsvid(jwt_request(most, "")).await.is_ok(), "32 audiences are fine");
    let mut bare =
        Request::new(JwtsvidRequest { audience: vec!["db".into()], spiffe_id: String::new() });
    bare.metadata_mut().remove(SECURITY_HEADER);
    assert_eq!(c.fetch_jwtsvid(bare).await.unwrap_err().code(), Code::InvalidArgument);
}

#[tokio::test]
async fn fetch_jwt_svid_refuses_callers_without_entries_and_bad_tokens_from_the_server() {
    let mut s = Setup::start_with(true).await;
    s.sync(vec![entry("e2", "spiffe://example.org/other", "unix:uid:4242424")]);
    let mut c = client(&s.socket).await;
    let err = c.fetch_jwtsvid(jwt_request(&["db"], "")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    let mine = s.my_selector();
    s.sync(vec![entry("e1", "spiffe://example.org/me", &mine)]);
    let err = c.fetch_jwtsvid(jwt_request(&["db"], "")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "a token for the wrong ID reached the caller");
}

#[tokio::test]
async fn a_token_from_an_authority_the_agent_has_not_synced_yet_is_retried_not_reported_bad() {
    let mut s = Setup::start().await;
    let mine = s.my_selector();
    s.sync(vec![entry("e1", "spiffe://example.org/me", &mine)]);
    let mut c = client(&s.socket).await;
    assert!(c.fetch_jwtsvid(jwt_request(&["db"], "")).await.is_ok());
    // An operator prepares and activates a JWT authority at once: the server signs with a
    // key the agent's bundle gets only at its next sync.
    let next = s.ca.prepare(crate::ca::AuthorityKind::Jwt).unwrap();
    s.ca.activate(crate::ca::AuthorityKind::Jwt, &next).unwrap();
    let err = c.fetch_jwtsvid(jwt_request(&["other"], "")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains(&next) && err.message().contains("retry"), "{err:?}");
    let entries: Vec<_> = s.entries.values().cloned().collect();
    s.sync(entries);
    let ok = c.fetch_jwtsvid(jwt_request(&["other"], "")).await.unwrap().into_inner();
    assert_eq!(ok.svids.len(), 1);
}

#[tokio::test]
async fn validate_jwt_svid_checks_signature_audience_and_form() {
    let mut s = Setup::start().await;
    let mine = s.my_selector();
    s.sync(vec![entry("e1", "spiffe://example.org/me", &mine)]);
    s.mint("e1");
    let id = SpiffeId::parse("spiffe://example.org/web").unwrap();
    let token = s.ca.sign_jwt_svid(&id, &["db".to_owned()], Duration::from_secs(60)).unwrap().token;
    let mut c = client(&s.socket).await;
    let validate = |audience: &str, svid: &str| {
        with_header(ValidateJwtsvidRequest { audience: audience.into(), svid: svid.into() })
    };
    let ok = c.validate_jwtsvid(validate("db", &token)).await.unwrap().into_inner();
    assert_eq!(ok.spiffe_id, "spiffe://example.org/web");
    let claims = ok.claims.unwrap();
    assert!(claims.fields.contains_key("aud") && claims.fields.contains_key("exp"));

    let other_ca = crate::ca::manager::test_ca(TrustDomain::new("example.org").unwrap());
    let foreign = other_ca.sign_jwt_svid(&id, &["db".to_owned()], Duration::from_secs(60));
    for (audience, svid, what) in [
        ("other", token.as_str(), "wrong audience"),
        ("db", "not.a.token", "garbage"),
        ("db", foreign.unwrap().token.as_str(), "another CA's key"),
        ("", token.as_str(), "no audience"),
        ("db", "", "no token"),
    ] {
        let err = c.validate_jwtsvid(validate(audience, svid)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
    }
    let bare = Request::new(ValidateJwtsvidRequest { audience: "db".into(), svid: token });
    assert_eq!(c.validate_jwtsvid(bare).await.unwrap_err().code(), Code::InvalidArgument);
}

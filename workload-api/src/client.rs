//! A client of the SPIFFE Workload API over a Unix socket.
//!
//! [`WorkloadApiClient::connect`] takes the socket as `unix:///path`, `unix:/path` or a
//! bare path, or reads `SPIFFE_ENDPOINT_SOCKET` when given none. Every call carries the
//! `workload.spiffe.io: true` header. Answers are parsed with this crate's validators
//! (SVID rules, key match, chain to the bundle of the SVID's own trust domain): a message
//! that fails them is an error, never handed on. [`retry_decision`] says how a caller
//! should treat each failure.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use hyper_util::rt::TokioIo;
use rustls_pki_types::UnixTime;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status, Streaming};

use crate::proto::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, SECURITY_HEADER, SECURITY_HEADER_VALUE,
    SpiffeWorkloadApiClient, ValidateJwtsvidRequest, X509BundlesRequest, X509svidRequest,
    X509svidResponse,
};
use crate::{
    JwtBundleSet, SpiffeBundle, SpiffeId, TrustDomain, X509Bundle, X509BundleSet, X509Svid,
};

/// The environment variable that names the Workload API socket.
pub const ENDPOINT_ENV: &str = "SPIFFE_ENDPOINT_SOCKET";

/// Why a Workload API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No socket was given and `SPIFFE_ENDPOINT_SOCKET` is unset.
    #[error(
        "no Workload API socket given: pass one or set {ENDPOINT_ENV}=unix:///path/to/agent.sock"
    )]
    NoEndpoint,
    /// The socket address is malformed.
    #[error("bad Workload API address {0:?}: use unix:///absolute/path or a path")]
    BadEndpoint(String),
    /// The socket could not be reached.
    #[error("cannot connect to the Workload API at {path}: {reason}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The agent refused the call.
    #[error("the agent refused: {}: {}", .0.code(), .0.message())]
    Status(#[from] Status),
    /// The stream ended before a message came.
    #[error("the agent closed the stream without an answer")]
    StreamEnded,
    /// The agent's answer breaks the standard or does not verify.
    #[error("invalid answer from the agent: {0}")]
    Invalid(String),
}

impl ClientError {
    /// The gRPC code, when the agent answered with one.
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}

/// What a caller should do after a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Give up: the request itself is wrong (retrying sends the same thing).
    Never,
    /// Try again after a backoff: the agent is starting, restarting, or has no identity
    /// for the caller yet (its entry may be on its way).
    Backoff,
}

/// How to treat a failure with `code`: no retry on `InvalidArgument` (a client bug, such
/// as a missing header) or `Unimplemented`; backoff on everything else, including
/// `Unavailable` and `PermissionDenied`.
pub fn retry_decision(code: Code) -> Retry {
    match code {
        Code::InvalidArgument | Code::Unimplemented => Retry::Never,
        _ => Retry::Backoff,
    }
}

/// The socket path of a Workload API address (`unix:///p`, `unix:/p` or a path).
pub fn parse_endpoint(address: &str) -> Result<PathBuf, ClientError> {
    let bad = || ClientError::BadEndpoint(address.to_owned());
    let path = match address.strip_prefix("unix://").or_else(|| address.strip_prefix("unix:")) {
        Some(rest) if rest.starts_with('/') => rest,
        Some(_) => return Err(bad()),
        None if address.contains("://") || address.is_empty() => return Err(bad()),
        None => address,
    };
    Ok(PathBuf::from(path))
}

/// The socket named by `address`, or by `SPIFFE_ENDPOINT_SOCKET` when `None`.
pub fn resolve_endpoint(address: Option<&str>) -> Result<PathBuf, ClientError> {
    match address {
        Some(a) => parse_endpoint(a),
        None => match std::env::var(ENDPOINT_ENV) {
            Ok(v) if !v.is_empty() => parse_endpoint(&v),
            _ => Err(ClientError::NoEndpoint),
        },
    }
}

/// The caller's X.509 identities and the bundles to verify peers with.
#[derive(Debug)]
pub struct X509Context {
    /// The SVIDs, the default one first.
    pub svids: Vec<X509Svid>,
    /// The caller's own trust domain bundle and any federated ones.
    pub bundles: X509BundleSet,
}

impl X509Context {
    /// The default SVID (the first).
    pub fn default_svid(&self) -> Option<&X509Svid> {
        self.svids.first()
    }
}

/// A JWT-SVID as the agent handed it out (already validated by the agent; re-validate
/// with [`crate::validate_jwt_svid`] where it is received). Its `Debug` output redacts the
/// token, a bearer credential.
#[derive(Clone)]
pub struct JwtSvidToken {
    /// The token's subject.
    pub spiffe_id: SpiffeId,
    /// The compact JWS.
    pub token: String,
    /// The entry's hint, if any.
    pub hint: String,
    /// The token's `exp`, when readable.
    pub expires_at: Option<SystemTime>,
}

impl std::fmt::Debug for JwtSvidToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSvidToken")
            .field("spiffe_id", &self.spiffe_id)
            .field("token", &"<redacted>")
            .field("hint", &self.hint)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// A Workload API client; see the module documentation.
#[derive(Debug, Clone)]
pub struct WorkloadApiClient {
    path: PathBuf,
    api: SpiffeWorkloadApiClient<Channel>,
}

fn with_header<T>(msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(SECURITY_HEADER, SECURITY_HEADER_VALUE.parse().expect("ASCII"));
    req
}

fn trust_domain_key(key: &str) -> Result<TrustDomain, ClientError> {
    let name = key.strip_prefix("spiffe://").unwrap_or(key);
    TrustDomain::new(name).map_err(|e| ClientError::Invalid(format!("bundle key {key:?}: {e}")))
}

fn now() -> UnixTime {
    UnixTime::since_unix_epoch(
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default(),
    )
}

/// Parses and checks one FetchX509SVID message.
pub fn parse_x509_response(msg: &X509svidResponse) -> Result<X509Context, ClientError> {
    if msg.svids.is_empty() {
        return Err(ClientError::Invalid("a response without SVIDs".into()));
    }
    let mut bundles = X509BundleSet::new();
    for (key, der) in &msg.federated_bundles {
        let td = trust_domain_key(key)?;
        let bundle = X509Bundle::parse_der(td, der)
            .map_err(|e| ClientError::Invalid(format!("federated bundle {key}: {e}")))?;
        bundles.insert(bundle);
    }
    let mut svids = Vec::with_capacity(msg.svids.len());
    for (i, s) in msg.svids.iter().enumerate() {
        let bad = |e: String| ClientError::Invalid(format!("SVID {i} ({}): {e}", s.spiffe_id));
        let svid =
            X509Svid::parse_der(&s.x509_svid, &s.x509_svid_key).map_err(|e| bad(e.to_string()))?;
        if svid.spiffe_id().as_str() != s.spiffe_id {
            return Err(bad(format!("the certificate names {}", svid.spiffe_id())));
        }
        let bundle = X509Bundle::parse_der(svid.spiffe_id().trust_domain(), &s.bundle)
            .map_err(|e| bad(format!("bundle: {e}")))?;
        bundles.insert(bundle);
        svids.push(if s.hint.is_empty() { svid } else { svid.with_hint(s.hint.clone()) });
    }
    for (i, svid) in svids.iter().enumerate() {
        svid.validate(&bundles, now())
            .map_err(|e| ClientError::Invalid(format!("SVID {i} ({}): {e}", svid.spiffe_id())))?;
    }
    Ok(X509Context { svids, bundles })
}

/// Parses one FetchJWTBundles message (JWK Sets keyed by trust domain).
pub fn parse_jwt_bundles(msg: &JwtBundlesResponse) -> Result<JwtBundleSet, ClientError> {
    let mut set = JwtBundleSet::new();
    for (key, json) in &msg.bundles {
        let td = trust_domain_key(key)?;
        let bad = |e: String| ClientError::Invalid(format!("JWT bundle {key}: {e}"));
        let doc = SpiffeBundle::parse(td, json).map_err(|e| bad(e.to_string()))?;
        let bundle = doc.jwt_bundle().map_err(|e| bad(e.to_string()))?;
        set.insert(bundle);
    }
    Ok(set)
}

/// The `exp` claim of a compact JWS, read without verifying it.
fn jwt_expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(exp))
}

/// A gRPC channel over the Unix socket at `path` (connected now). The URI tonic needs is
/// never resolved: the connector ignores it.
pub async fn unix_channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let target = path.to_path_buf();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let target = target.clone();
            async move { tokio::net::UnixStream::connect(target).await.map(TokioIo::new) }
        }))
        .await
}

impl WorkloadApiClient {
    /// Connects to `address` (or `SPIFFE_ENDPOINT_SOCKET`).
    pub async fn connect(address: Option<&str>) -> Result<Self, ClientError> {
        Self::connect_path(&resolve_endpoint(address)?).await
    }

    /// Connects to the socket at `path`.
    pub async fn connect_path(path: &Path) -> Result<Self, ClientError> {
        let channel = unix_channel(path).await.map_err(|e| ClientError::Connect {
            path: path.to_path_buf(),
            reason: std::error::Error::source(&e)
                .map_or_else(|| e.to_string(), ToString::to_string),
        })?;
        Ok(Self { path: path.to_path_buf(), api: SpiffeWorkloadApiClient::new(channel) })
    }

    /// The socket this client talks to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens FetchX509SVID: parse each message with [`parse_x509_response`].
    pub async fn watch_x509(&mut self) -> Result<Streaming<X509svidResponse>, ClientError> {
        Ok(self.api.fetch_x509svid(with_header(X509svidRequest {})).await?.into_inner())
    }

    /// The caller's current X.509-SVIDs and bundles (the stream's first message).
    pub async fn fetch_x509_context(&mut self) -> Result<X509Context, ClientError> {
        let mut stream = self.watch_x509().await?;
        let msg = stream.message().await?.ok_or(ClientError::StreamEnded)?;
        parse_x509_response(&msg)
    }

    /// The X.509 bundles (FetchX509Bundles' first message).
    pub async fn fetch_x509_bundles(&mut self) -> Result<X509BundleSet, ClientError> {
        let mut stream =
            self.api.fetch_x509_bundles(with_header(X509BundlesRequest {})).await?.into_inner();
        let msg = stream.message().await?.ok_or(ClientError::StreamEnded)?;
        let mut set = X509BundleSet::new();
        for (key, der) in &msg.bundles {
            let bundle = X509Bundle::parse_der(trust_domain_key(key)?, der)
                .map_err(|e| ClientError::Invalid(format!("bundle {key}: {e}")))?;
            set.insert(bundle);
        }
        Ok(set)
    }

    /// Opens FetchJWTBundles: parse each message with [`parse_jwt_bundles`].
    pub async fn watch_jwt_bundles(
        &mut self,
    ) -> Result<Streaming<JwtBundlesResponse>, ClientError> {
        Ok(self.api.fetch_jwt_bundles(with_header(JwtBundlesRequest {})).await?.into_inner())
    }

    /// The JWT bundles (FetchJWTBundles' first message).
    pub async fn fetch_jwt_bundles(&mut self) -> Result<JwtBundleSet, ClientError> {
        let mut stream = self.watch_jwt_bundles().await?;
        let msg = stream.message().await?.ok_or(ClientError::StreamEnded)?;
        parse_jwt_bundles(&msg)
    }

    /// JWT-SVIDs for `audience` (one per identity, or only `spiffe_id`'s).
    pub async fn fetch_jwt_svids(
        &mut self,
        audience: &[String],
        spiffe_id: Option<&SpiffeId>,
    ) -> Result<Vec<JwtSvidToken>, ClientError> {
        let req = JwtsvidRequest {
            audience: audience.to_vec(),
            spiffe_id: spiffe_id.map(ToString::to_string).unwrap_or_default(),
        };
        let reply = self.api.fetch_jwtsvid(with_header(req)).await?.into_inner();
        if reply.svids.is_empty() {
            return Err(ClientError::Invalid("a response without JWT-SVIDs".into()));
        }
        reply
            .svids
            .into_iter()
            .map(|s| {
                let spiffe_id = SpiffeId::parse(&s.spiffe_id)
                    .map_err(|e| ClientError::Invalid(format!("JWT-SVID subject: {e}")))?;
                let expires_at = jwt_expiry(&s.svid);
                Ok(JwtSvidToken { spiffe_id, token: s.svid, hint: s.hint, expires_at })
            })
            .collect()
    }

    /// Has the agent validate `token` for `audience`: its subject and claims.
    pub async fn validate_jwt_svid(
        &mut self,
        audience: &str,
        token: &str,
    ) -> Result<(SpiffeId, prost_types::Struct), ClientError> {
        let req = ValidateJwtsvidRequest { audience: audience.to_owned(), svid: token.to_owned() };
        let reply = self.api.validate_jwtsvid(with_header(req)).await?.into_inner();
        let id = SpiffeId::parse(&reply.spiffe_id)
            .map_err(|e| ClientError::Invalid(format!("subject: {e}")))?;
        Ok((id, reply.claims.unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jwt_svid_token_redacts_its_token() {
        let token = JwtSvidToken {
            spiffe_id: SpiffeId::parse("spiffe://example.org/w").unwrap(),
            token: "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl".into(),
            hint: "h".into(),
            expires_at: None,
        };
        for debug in [format!("{token:?}"), format!("{token:#?}")] {
            assert!(!debug.contains("eyJ") && debug.contains("<redacted>"), "{debug}");
            assert!(debug.contains("spiffe://example.org/w"), "{debug}");
        }
    }

    #[test]
    fn endpoints_parse_the_spiffe_way() {
        for (given, want) in [
            ("unix:///run/agent.sock", "/run/agent.sock"),
            ("unix:/run/agent.sock", "/run/agent.sock"),
            ("/run/agent.sock", "/run/agent.sock"),
            ("rel/agent.sock", "rel/agent.sock"),
        ] {
            assert_eq!(parse_endpoint(given).unwrap(), PathBuf::from(want), "{given}");
        }
        for bad in ["", "unix://relative", "tcp://127.0.0.1:8081", "unix:relative"] {
            let e = parse_endpoint(bad).unwrap_err();
            assert!(matches!(e, ClientError::BadEndpoint(_)), "{bad}: {e}");
        }
        assert!(resolve_endpoint(Some("/x")).is_ok());
        assert!(ClientError::NoEndpoint.to_string().contains("SPIFFE_ENDPOINT_SOCKET=unix:///"));
    }

    #[test]
    fn retry_policy_follows_the_status() {
        assert_eq!(retry_decision(Code::InvalidArgument), Retry::Never);
        assert_eq!(retry_decision(Code::Unimplemented), Retry::Never);
        for code in [Code::Unavailable, Code::PermissionDenied, Code::Internal, Code::Unknown] {
            assert_eq!(retry_decision(code), Retry::Backoff, "{code:?}");
        }
    }

    #[test]
    fn a_response_without_svids_or_with_garbage_is_refused() {
        let empty = X509svidResponse::default();
        assert!(matches!(parse_x509_response(&empty), Err(ClientError::Invalid(_))));
        let garbage = X509svidResponse {
            svids: vec![crate::proto::X509svid {
                spiffe_id: "spiffe://example.org/w".into(),
                x509_svid: vec![1, 2, 3],
                x509_svid_key: vec![4],
                bundle: vec![5],
                hint: String::new(),
            }],
            ..Default::default()
        };
        let e = parse_x509_response(&garbage).unwrap_err();
        assert!(e.to_string().contains("SVID 0 (spiffe://example.org/w)"), "{e}");
    }

    #[test]
    fn jwt_expiry_is_read_from_the_payload() {
        let payload =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"exp":1800000000}"#);
        let token = format!("e30.{payload}.sig");
        assert_eq!(
            jwt_expiry(&token),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000))
        );
        assert_eq!(jwt_expiry("not-a-jwt"), None);
    }
}

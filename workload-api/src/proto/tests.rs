use super::*;
use prost::Message;
use prost_types::{ListValue, Struct, Value, value::Kind};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tonic::codegen::http::{self, uri::PathAndQuery};
use tonic::codegen::{Service, tokio_stream};
use tonic::{Request, Response, Status};

// ---- samples: every field named (so none can be forgotten) and non-default ----

fn map2(tag: u8) -> HashMap<String, Vec<u8>> {
    HashMap::from([
        ("spiffe://a.example".to_owned(), vec![tag, 1]),
        ("spiffe://b.example".to_owned(), vec![tag, 2]),
    ])
}

fn x509svid(n: u8) -> X509svid {
    X509svid {
        spiffe_id: format!("spiffe://a.example/w{n}"),
        x509_svid: vec![0x30, n, 1],
        x509_svid_key: vec![0x30, n, 2],
        bundle: vec![0x30, n, 3],
        hint: format!("hint{n}"),
    }
}

fn x509svid_response() -> X509svidResponse {
    X509svidResponse {
        svids: vec![x509svid(1), x509svid(2)],
        crl: vec![vec![0x30, 9], vec![0x30, 8]],
        federated_bundles: map2(7),
    }
}

fn x509_bundles_response() -> X509BundlesResponse {
    X509BundlesResponse { crl: vec![vec![0x30, 5], vec![0x30, 6]], bundles: map2(4) }
}

fn jwtsvid(n: u8) -> Jwtsvid {
    Jwtsvid {
        spiffe_id: format!("spiffe://a.example/j{n}"),
        svid: format!("h{n}.p{n}.s{n}"),
        hint: format!("jhint{n}"),
    }
}

fn jwtsvid_request() -> JwtsvidRequest {
    JwtsvidRequest {
        audience: vec!["aud-1".to_owned(), "aud-2".to_owned()],
        spiffe_id: "spiffe://a.example/j1".to_owned(),
    }
}

fn jwtsvid_response() -> JwtsvidResponse {
    JwtsvidResponse { svids: vec![jwtsvid(1), jwtsvid(2)] }
}

fn jwt_bundles_response() -> JwtBundlesResponse {
    JwtBundlesResponse { bundles: map2(3) }
}

fn validate_request() -> ValidateJwtsvidRequest {
    ValidateJwtsvidRequest { audience: "aud-1".to_owned(), svid: "h.p.s".to_owned() }
}

fn value(kind: Kind) -> Value {
    Value { kind: Some(kind) }
}

fn validate_response() -> ValidateJwtsvidResponse {
    let inner =
        Struct { fields: BTreeMap::from([("ok".to_owned(), value(Kind::BoolValue(true)))]) };
    let list = ListValue {
        values: vec![value(Kind::StringValue("aud-1".into())), value(Kind::NullValue(0))],
    };
    let claims = Struct {
        fields: BTreeMap::from([
            ("sub".to_owned(), value(Kind::StringValue("spiffe://a.example/j1".into()))),
            ("exp".to_owned(), value(Kind::NumberValue(1_700_000_000.0))),
            ("aud".to_owned(), value(Kind::ListValue(list))),
            ("nested".to_owned(), value(Kind::StructValue(inner))),
        ]),
    };
    ValidateJwtsvidResponse { spiffe_id: "spiffe://a.example/j1".to_owned(), claims: Some(claims) }
}

// ---- (c) prost round trips ----

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(msg: &M) -> usize {
    let bytes = msg.encode_to_vec();
    let back = M::decode(bytes.as_slice()).unwrap();
    assert_eq!(&back, msg);
    bytes.len()
}

#[test]
fn every_message_round_trips_through_prost_with_all_fields_set() {
    assert!(round_trip(&x509svid(1)) > 0);
    assert!(round_trip(&x509svid_response()) > 0);
    assert!(round_trip(&x509_bundles_response()) > 0);
    assert!(round_trip(&jwtsvid(1)) > 0);
    assert!(round_trip(&jwtsvid_request()) > 0);
    assert!(round_trip(&jwtsvid_response()) > 0);
    assert!(round_trip(&jwt_bundles_response()) > 0);
    assert!(round_trip(&validate_request()) > 0);
    assert!(round_trip(&validate_response()) > 0);
    // The three requests without parameters (the standard defines none) encode to nothing.
    assert_eq!(round_trip(&X509svidRequest {}), 0);
    assert_eq!(round_trip(&X509BundlesRequest {}), 0);
    assert_eq!(round_trip(&JwtBundlesRequest {}), 0);
}

// ---- (d) raw wire bytes pin the field numbers: every field here is length-delimited,
// so its tag byte is (number << 3) | 2: 1 -> 0x0a, 2 -> 0x12, 3 -> 0x1a, 4 -> 0x22, 5 -> 0x2a.

/// Encodes a default `M` after `set` changed one field.
fn enc<M: Message + Default>(set: fn(&mut M)) -> Vec<u8> {
    let mut msg = M::default();
    set(&mut msg);
    msg.encode_to_vec()
}

fn one_entry() -> HashMap<String, Vec<u8>> {
    HashMap::from([("k".to_owned(), vec![9])])
}

/// A map field holding `one_entry()`: a nested message {key = 1, value = 2}.
fn in_map(tag: u8) -> Vec<u8> {
    vec![tag, 6, 0x0a, 1, b'k', 0x12, 1, 9]
}

#[test]
fn field_numbers_match_the_standard_on_the_wire() {
    let x509 = enc::<X509svid>;
    assert_eq!(x509(|m| m.spiffe_id = "i".into()), [0x0a, 1, b'i']);
    assert_eq!(x509(|m| m.x509_svid = vec![9]), [0x12, 1, 9]);
    assert_eq!(x509(|m| m.x509_svid_key = vec![9]), [0x1a, 1, 9]);
    assert_eq!(x509(|m| m.bundle = vec![9]), [0x22, 1, 9]);
    assert_eq!(x509(|m| m.hint = "h".into()), [0x2a, 1, b'h']);

    let x509_resp = enc::<X509svidResponse>;
    assert_eq!(x509_resp(|m| m.svids = vec![X509svid::default()]), [0x0a, 0]);
    assert_eq!(x509_resp(|m| m.crl = vec![vec![9]]), [0x12, 1, 9]);
    assert_eq!(x509_resp(|m| m.federated_bundles = one_entry()), in_map(0x1a));

    let x509_bundles = enc::<X509BundlesResponse>;
    assert_eq!(x509_bundles(|m| m.crl = vec![vec![9]]), [0x0a, 1, 9]);
    assert_eq!(x509_bundles(|m| m.bundles = one_entry()), in_map(0x12));

    let jwt_req = enc::<JwtsvidRequest>;
    assert_eq!(jwt_req(|m| m.audience = vec!["a".into()]), [0x0a, 1, b'a']);
    assert_eq!(jwt_req(|m| m.spiffe_id = "i".into()), [0x12, 1, b'i']);

    let jwt_resp = enc::<JwtsvidResponse>;
    assert_eq!(jwt_resp(|m| m.svids = vec![Jwtsvid::default()]), [0x0a, 0]);

    let jwt = enc::<Jwtsvid>;
    assert_eq!(jwt(|m| m.spiffe_id = "i".into()), [0x0a, 1, b'i']);
    assert_eq!(jwt(|m| m.svid = "t".into()), [0x12, 1, b't']);
    assert_eq!(jwt(|m| m.hint = "h".into()), [0x1a, 1, b'h']);

    let jwt_bundles = enc::<JwtBundlesResponse>;
    assert_eq!(jwt_bundles(|m| m.bundles = one_entry()), in_map(0x0a));

    let validate_req = enc::<ValidateJwtsvidRequest>;
    assert_eq!(validate_req(|m| m.audience = "a".into()), [0x0a, 1, b'a']);
    assert_eq!(validate_req(|m| m.svid = "t".into()), [0x12, 1, b't']);

    let validate_resp = enc::<ValidateJwtsvidResponse>;
    assert_eq!(validate_resp(|m| m.spiffe_id = "i".into()), [0x0a, 1, b'i']);
    assert_eq!(validate_resp(|m| m.claims = Some(Struct::default())), [0x12, 0]);
}

// ---- (b) header constants ----

#[test]
fn security_header_is_the_standard_lowercase_key() {
    assert_eq!(SECURITY_HEADER, "workload.spiffe.io");
    assert_eq!(SECURITY_HEADER_VALUE, "true");
    // HTTP/2 lowercases keys; the constant must survive being parsed as one unchanged.
    let key = tonic::metadata::AsciiMetadataKey::from_bytes(SECURITY_HEADER.as_bytes()).unwrap();
    assert_eq!(key.as_str(), SECURITY_HEADER);
}

// ---- (a) method paths, checked over a real loopback tonic server ----

type Items<T> = tokio_stream::Iter<std::vec::IntoIter<Result<T, Status>>>;
type Answer<T> = Result<Response<T>, Status>;

/// Answers every RPC with the samples above, once the security header is present.
struct Fixture;

fn require_header<T>(req: &Request<T>) -> Result<(), Status> {
    match req.metadata().get(SECURITY_HEADER).map(|v| v.to_str()) {
        Some(Ok(SECURITY_HEADER_VALUE)) => Ok(()),
        _ => Err(Status::invalid_argument("missing workload.spiffe.io header")),
    }
}

fn one<T>(item: T) -> Response<Items<T>> {
    Response::new(tokio_stream::iter(vec![Ok(item)]))
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for Fixture {
    type FetchX509SVIDStream = Items<X509svidResponse>;
    type FetchX509BundlesStream = Items<X509BundlesResponse>;
    type FetchJWTBundlesStream = Items<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        req: Request<X509svidRequest>,
    ) -> Answer<Items<X509svidResponse>> {
        require_header(&req)?;
        Ok(one(x509svid_response()))
    }
    async fn fetch_x509_bundles(
        &self,
        req: Request<X509BundlesRequest>,
    ) -> Answer<Items<X509BundlesResponse>> {
        require_header(&req)?;
        Ok(one(x509_bundles_response()))
    }
    async fn fetch_jwtsvid(&self, req: Request<JwtsvidRequest>) -> Answer<JwtsvidResponse> {
        require_header(&req)?;
        assert_eq!(req.into_inner(), jwtsvid_request());
        Ok(Response::new(jwtsvid_response()))
    }
    async fn fetch_jwt_bundles(
        &self,
        req: Request<JwtBundlesRequest>,
    ) -> Answer<Items<JwtBundlesResponse>> {
        require_header(&req)?;
        Ok(one(jwt_bundles_response()))
    }
    async fn validate_jwtsvid(
        &self,
        req: Request<ValidateJwtsvidRequest>,
    ) -> Answer<ValidateJwtsvidResponse> {
        require_header(&req)?;
        assert_eq!(req.into_inner(), validate_request());
        Ok(Response::new(validate_response()))
    }
}

type Inner = SpiffeWorkloadApiServer<Fixture>;
type HttpReq = http::Request<tonic::body::Body>;

/// Wraps the generated server and records every `:path` it is asked to route.
#[derive(Clone)]
struct PathRecorder {
    inner: Inner,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Service<HttpReq> for PathRecorder {
    type Response = <Inner as Service<HttpReq>>::Response;
    type Error = Infallible;
    type Future = <Inner as Service<HttpReq>>::Future;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<HttpReq>::poll_ready(&mut self.inner, cx)
    }
    fn call(&mut self, req: HttpReq) -> Self::Future {
        self.seen.lock().unwrap().push(req.uri().path().to_owned());
        self.inner.call(req)
    }
}

/// Serves the recorder (no tonic router in front) on 127.0.0.1:0 and connects to it.
async fn loopback() -> (tonic::transport::Channel, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let svc = PathRecorder { inner: SpiffeWorkloadApiServer::new(Fixture), seen: seen.clone() };
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(tonic::transport::Server::builder().serve_with_incoming(svc, incoming));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (channel, seen)
}

fn with_header<T>(msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(SECURITY_HEADER, SECURITY_HEADER_VALUE.parse().unwrap());
    req
}

async fn only_item<T: Message + Default>(mut s: tonic::Streaming<T>) -> T {
    let first = s.message().await.unwrap().unwrap();
    assert!(s.message().await.unwrap().is_none());
    first
}

#[tokio::test]
async fn generated_client_and_server_use_the_unpackaged_paths() {
    let (channel, seen) = loopback().await;
    let mut client = SpiffeWorkloadApiClient::new(channel);
    let x = client.fetch_x509svid(with_header(X509svidRequest {})).await.unwrap();
    assert_eq!(only_item(x.into_inner()).await, x509svid_response());
    let b = client.fetch_x509_bundles(with_header(X509BundlesRequest {})).await.unwrap();
    assert_eq!(only_item(b.into_inner()).await, x509_bundles_response());
    let j = client.fetch_jwtsvid(with_header(jwtsvid_request())).await.unwrap();
    assert_eq!(j.into_inner(), jwtsvid_response());
    let jb = client.fetch_jwt_bundles(with_header(JwtBundlesRequest {})).await.unwrap();
    assert_eq!(only_item(jb.into_inner()).await, jwt_bundles_response());
    let v = client.validate_jwtsvid(with_header(validate_request())).await.unwrap();
    assert_eq!(v.into_inner(), validate_response());

    let want = [
        FETCH_X509_SVID_PATH,
        FETCH_X509_BUNDLES_PATH,
        FETCH_JWT_SVID_PATH,
        FETCH_JWT_BUNDLES_PATH,
        VALIDATE_JWT_SVID_PATH,
    ];
    assert_eq!(*seen.lock().unwrap(), want);
}

#[test]
fn service_name_matches_the_generated_named_service() {
    use tonic::server::NamedService;
    assert_eq!(SERVICE_NAME, <Inner as NamedService>::NAME);
    assert_eq!(SERVICE_NAME, spiffe_workload_api_server::SERVICE_NAME);
}

/// Calls FetchJWTSVID's codec on an arbitrary path, bypassing the generated client.
async fn raw_fetch_jwtsvid(
    channel: tonic::transport::Channel,
    path: &'static str,
) -> Result<JwtsvidResponse, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<JwtsvidRequest, JwtsvidResponse>::default();
    let path = PathAndQuery::from_static(path);
    grpc.unary(with_header(jwtsvid_request()), path, codec).await.map(Response::into_inner)
}

#[tokio::test]
async fn packaged_or_miscased_paths_are_not_routed() {
    let (channel, seen) = loopback().await;
    // Control: the same raw call on the standard path is answered.
    let ok = raw_fetch_jwtsvid(channel.clone(), FETCH_JWT_SVID_PATH).await.unwrap();
    assert_eq!(ok, jwtsvid_response());
    let wrong = [
        "/spiffe.workload.SpiffeWorkloadAPI/FetchJWTSVID",
        "/spiffe.workloadapi.SpiffeWorkloadAPI/FetchJWTSVID",
        "/SpiffeWorkloadAPI/FetchJwtsvid",
        "/SpiffeWorkloadApi/FetchJWTSVID",
    ];
    for path in wrong {
        let err = raw_fetch_jwtsvid(channel.clone(), path).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unimplemented, "{path}");
    }
    // Every wrong path did reach the generated server, which refused to route it.
    assert_eq!(seen.lock().unwrap()[1..], wrong);
}

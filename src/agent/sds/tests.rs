//! SDS over a real Unix socket with the `envoy-types` tonic client, against the service
//! the agent runs (the Workload API's test set-up: a real CA, entries selecting this test
//! process's uid).

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
use envoy_types::pb::envoy::config::core::v3::{BuildVersion, DataSource, Node};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, SpiffeCertValidatorConfig, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::envoy::r#type::v3::SemanticVersion;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc;
use keycard_workload_api::proto::X509svidRequest;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Streaming};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::{SdsConfig, render::SPIFFE_VALIDATOR, secret_type_url};
use crate::agent::workload_api::Apis;
use crate::agent::workload_api::limits::ConnectionLimits;
use crate::agent::workload_api::tests::{Setup, client, entry};

const ME: &str = "spiffe://example.org/me";

async fn sds(s: &Setup) -> SecretDiscoveryServiceClient<Channel> {
    let channel = keycard_workload_api::client::unix_channel(&s.socket).await.unwrap();
    SecretDiscoveryServiceClient::new(channel)
}

/// A set-up whose caller holds one SVID (`ME`).
async fn one_svid() -> Setup {
    let mut s = Setup::start().await;
    let mine = s.my_selector();
    s.sync(vec![entry("e1", ME, &mine)]);
    s.mint("e1");
    s
}

fn request(names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        type_url: secret_type_url(),
        node: Some(Node { id: "envoy-test".into(), cluster: "test".into(), ..Default::default() }),
        ..Default::default()
    }
}

/// An open `StreamSecrets` stream: the sender of its requests and its responses.
struct Stream {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl Stream {
    async fn open(s: &Setup, first: DiscoveryRequest) -> Result<Self, tonic::Status> {
        let (tx, requests) = mpsc::channel(8);
        tx.send(first).await.unwrap();
        let rx = sds(s).await.stream_secrets(ReceiverStream::new(requests)).await?.into_inner();
        Ok(Self { tx, rx })
    }

    async fn next(&mut self) -> Result<DiscoveryResponse, tonic::Status> {
        let got = tokio::time::timeout(Duration::from_secs(10), self.rx.message()).await;
        Ok(got.expect("a response within 10 s")?.expect("the stream is open"))
    }

    /// Whether nothing arrives within a short while.
    async fn quiet(&mut self) -> bool {
        tokio::time::timeout(Duration::from_millis(300), self.rx.message()).await.is_err()
    }

    async fn send(&self, req: DiscoveryRequest) {
        self.tx.send(req).await.unwrap();
    }
}

fn ack(last: &DiscoveryResponse, names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: last.version_info.clone(),
        response_nonce: last.nonce.clone(),
        ..request(names)
    }
}

fn secrets(r: &DiscoveryResponse) -> Vec<Secret> {
    assert_eq!(r.type_url, secret_type_url());
    r.resources
        .iter()
        .map(|a| {
            assert_eq!(a.type_url, secret_type_url());
            Secret::decode(a.value.as_slice()).unwrap()
        })
        .collect()
}

fn names(r: &DiscoveryResponse) -> Vec<String> {
    let mut n: Vec<String> = secrets(r).into_iter().map(|s| s.name).collect();
    n.sort();
    n
}

fn inline(d: &Option<DataSource>) -> Vec<u8> {
    match d.as_ref().and_then(|d| d.specifier.as_ref()) {
        Some(Specifier::InlineBytes(b)) => b.clone(),
        other => panic!("not inline bytes: {other:?}"),
    }
}

fn validation(secret: &Secret) -> &CertificateValidationContext {
    match &secret.r#type {
        Some(secret::Type::ValidationContext(v)) => v,
        other => panic!("{}: not a validation context: {other:?}", secret.name),
    }
}

/// The leaf's SPIFFE ID and the key's match with it, from a `tls_certificate` secret.
fn tls_identity(secret: &Secret) -> String {
    let Some(secret::Type::TlsCertificate(cert)) = &secret.r#type else {
        panic!("{}: not a TLS certificate", secret.name)
    };
    let chain = pem::parse_many(inline(&cert.certificate_chain)).unwrap();
    assert!(chain.iter().all(|p| p.tag() == "CERTIFICATE"));
    let key = pem::parse(inline(&cert.private_key)).unwrap();
    assert_eq!(key.tag(), "PRIVATE KEY", "PKCS#8 PEM");
    let loaded = crate::ca::SigningKey::from_pkcs8_der(key.contents()).unwrap();
    let (_, leaf) = X509Certificate::from_der(chain[0].contents()).unwrap();
    assert_eq!(loaded.public_key_der(), leaf.public_key().raw, "key matches the leaf");
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .find_map(|g| match g {
            x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .unwrap()
}

fn spiffe_validator(secret: &Secret) -> SpiffeCertValidatorConfig {
    let custom = validation(secret).custom_validator_config.as_ref().expect("a custom validator");
    assert_eq!(custom.name, SPIFFE_VALIDATOR);
    let any = custom.typed_config.as_ref().unwrap();
    assert_eq!(
        any.type_url,
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig"
    );
    SpiffeCertValidatorConfig::decode(any.value.as_slice()).unwrap()
}

#[tokio::test]
async fn empty_names_give_everything_the_caller_may_have() {
    let s = one_svid().await;
    let mut st = Stream::open(&s, request(&[])).await.unwrap();
    let r = st.next().await.unwrap();
    assert_eq!(r.version_info, "1");
    assert_eq!(names(&r), ["ALL", "ROOTCA", "spiffe://example.org", ME]);
    let all = secrets(&r);
    let own_pem = s.ca.bundle().unwrap().x509_bundle().unwrap().to_pem();
    for secret in &all {
        match secret.name.as_str() {
            ME => assert_eq!(tls_identity(secret), ME),
            "ALL" => {
                let v = spiffe_validator(secret);
                assert_eq!(v.trust_domains.len(), 1);
                assert_eq!(v.trust_domains[0].name, "example.org", "no spiffe:// prefix");
                assert_eq!(inline(&v.trust_domains[0].trust_bundle), own_pem.as_bytes());
            }
            _ => assert_eq!(inline(&validation(secret).trusted_ca), own_pem.as_bytes()),
        }
    }
}

#[tokio::test]
async fn default_and_configured_names_resolve() {
    let s = one_svid().await;
    let mut st = Stream::open(&s, request(&["default", "ROOTCA"])).await.unwrap();
    let r = st.next().await.unwrap();
    assert_eq!(names(&r), ["ROOTCA", "default"]);
    let default = secrets(&r).into_iter().find(|x| x.name == "default").unwrap();
    assert_eq!(tls_identity(&default), ME);
}

#[tokio::test]
async fn an_unknown_name_fails_the_stream_naming_it() {
    let s = one_svid().await;
    for name in ["spiffe://example.org/not-mine", "spiffe://other.org", "nonsense"] {
        let err = match Stream::open(&s, request(&[ME, name])).await {
            Ok(mut st) => st.next().await.unwrap_err(),
            Err(e) => e,
        };
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(name), "{name}: {}", err.message());
    }
}

#[tokio::test]
async fn ack_nack_and_stale_nonces_follow_the_xds_rules() {
    let s = one_svid().await;
    let mut st = Stream::open(&s, request(&[ME])).await.unwrap();
    let first = st.next().await.unwrap();
    assert!(!first.nonce.is_empty());
    st.send(ack(&first, &[ME])).await;
    assert!(st.quiet().await, "an ACK gets no response");
    // A NACK is logged and the stream goes on serving.
    let nack = DiscoveryRequest {
        error_detail: Some(rpc::Status { code: 3, message: "bad cert".into(), details: vec![] }),
        ..ack(&first, &[ME])
    };
    st.send(nack).await;
    assert!(st.quiet().await, "a NACK gets no response");
    // A stale nonce asking for other names is ignored.
    let stale = DiscoveryRequest { response_nonce: "not-the-last".into(), ..request(&["ROOTCA"]) };
    st.send(stale).await;
    assert!(st.quiet().await, "a stale nonce is ignored");
    // A rotation pushes a new version at once, with a new nonce.
    s.mint("e1");
    let rotated = st.next().await.unwrap();
    assert_eq!(rotated.version_info, "2");
    assert_ne!(rotated.nonce, first.nonce);
    assert_ne!(secrets(&rotated), secrets(&first), "the new SVID");
    // The old nonce is now stale; the new one with new names is honoured.
    st.send(DiscoveryRequest { ..ack(&first, &["ROOTCA"]) }).await;
    assert!(st.quiet().await, "the previous nonce is stale");
    st.send(ack(&rotated, &["ROOTCA", ME])).await;
    let renamed = st.next().await.unwrap();
    assert_eq!(renamed.version_info, "3");
    assert_eq!(names(&renamed), ["ROOTCA", ME]);
    let count = |outcome: &str| {
        let labels = crate::telemetry::agent_metrics::SdsLabels {
            rpc: "StreamSecrets".into(),
            outcome: outcome.into(),
        };
        s.metrics.sds_requests.get_or_create(&labels).get()
    };
    assert_eq!((count("ack"), count("nack"), count("stale_nonce")), (1, 1, 2));
    assert_eq!(count("request"), 2);
}

#[tokio::test]
async fn a_reconnect_may_echo_the_previous_streams_nonce() {
    let s = one_svid().await;
    let mut st = Stream::open(&s, request(&[ME])).await.unwrap();
    let first = st.next().await.unwrap();
    drop(st);
    let mut again = Stream::open(&s, ack(&first, &[ME])).await.unwrap();
    let r = again.next().await.unwrap();
    assert_eq!(names(&r), [ME]);
}

#[tokio::test]
async fn an_entry_removed_pushes_a_response_without_it() {
    let mut s = Setup::start().await;
    let mine = s.my_selector();
    s.sync(vec![entry("e1", ME, &mine), entry("e2", "spiffe://example.org/two", &mine)]);
    s.mint("e1");
    s.mint("e2");
    let mut st = Stream::open(&s, request(&[])).await.unwrap();
    let r = st.next().await.unwrap();
    assert!(names(&r).contains(&"spiffe://example.org/two".to_owned()));
    s.sync(vec![entry("e1", ME, &mine)]);
    let after = st.next().await.unwrap();
    assert_eq!(after.version_info, "2");
    assert!(!names(&after).contains(&"spiffe://example.org/two".to_owned()));
}

fn node_with(version: Option<(u32, u32)>, disable: Option<bool>) -> Node {
    let mut node = Node { id: "n".into(), ..Default::default() };
    if let Some((major, minor)) = version {
        node.user_agent_version_type =
            Some(UserAgentVersionType::UserAgentBuildVersion(BuildVersion {
                version: Some(SemanticVersion {
                    major_number: major,
                    minor_number: minor,
                    patch: 0,
                }),
                metadata: None,
            }));
    }
    if let Some(flag) = disable {
        let value = Value { kind: Some(Kind::BoolValue(flag)) };
        let fields = [("disable_spiffe_cert_validation".to_owned(), value)].into_iter().collect();
        node.metadata = Some(Struct { fields });
    }
    node
}

#[tokio::test]
async fn old_envoys_and_the_metadata_flag_get_plain_trusted_ca() {
    let s = one_svid().await;
    let own_pem = s.ca.bundle().unwrap().x509_bundle().unwrap().to_pem();
    let cases = [
        (Some((1, 16)), None, false),
        (Some((1, 17)), None, true),
        (Some((1, 40)), Some(false), true),
        (Some((1, 40)), Some(true), false),
        (None, None, true),
    ];
    for (version, disable, spiffe) in cases {
        let req = DiscoveryRequest { node: Some(node_with(version, disable)), ..request(&["ALL"]) };
        let r = sds(&s).await.fetch_secrets(req).await.unwrap().into_inner();
        let all = &secrets(&r)[0];
        let v = validation(all);
        if spiffe {
            assert!(v.trusted_ca.is_none(), "{version:?} {disable:?}");
            spiffe_validator(all);
        } else {
            assert!(v.custom_validator_config.is_none(), "{version:?} {disable:?}");
            assert_eq!(inline(&v.trusted_ca), own_pem.as_bytes());
        }
    }
}

#[tokio::test]
async fn fetch_secrets_answers_once_and_refuses_unknown_names() {
    let s = one_svid().await;
    let r = sds(&s).await.fetch_secrets(request(&[ME])).await.unwrap().into_inner();
    assert_eq!(names(&r), [ME]);
    assert!(!r.version_info.is_empty() && !r.nonce.is_empty());
    let err = sds(&s).await.fetch_secrets(request(&["spiffe://example.org/x"])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let wrong_type =
        DiscoveryRequest { type_url: "type.googleapis.com/x.Y".into(), ..request(&[]) };
    let err = sds(&s).await.fetch_secrets(wrong_type).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn delta_secrets_is_unimplemented() {
    let s = one_svid().await;
    let (tx, rx) = mpsc::channel(1);
    tx.send(DeltaDiscoveryRequest::default()).await.unwrap();
    let err = sds(&s).await.delta_secrets(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
}

#[tokio::test]
async fn sds_needs_no_header_while_the_workload_api_still_does() {
    let s = one_svid().await;
    // No workload.spiffe.io header on the SDS call (Envoy sends none).
    let r = sds(&s).await.fetch_secrets(Request::new(request(&[ME]))).await.unwrap();
    assert_eq!(names(r.get_ref()), [ME]);
    let err = client(&s.socket).await.fetch_x509svid(X509svidRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}

#[tokio::test]
async fn a_caller_without_an_svid_is_denied() {
    let mut s = Setup::start().await;
    s.sync(vec![entry("e2", "spiffe://example.org/other", "unix:uid:4242424")]);
    s.mint("e2");
    let err = sds(&s).await.fetch_secrets(request(&[])).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
}

#[tokio::test]
async fn streams_per_caller_are_capped() {
    let sds_config = SdsConfig { max_streams_per_caller: 2, ..SdsConfig::default() };
    let apis = Apis { workload_api: true, sds: Some(sds_config) };
    let mut s = Setup::start_apis(false, ConnectionLimits::default(), apis).await;
    let mine = s.my_selector();
    s.sync(vec![entry("e1", ME, &mine)]);
    s.mint("e1");
    let mut a = Stream::open(&s, request(&[ME])).await.unwrap();
    let mut b = Stream::open(&s, request(&["ROOTCA"])).await.unwrap();
    a.next().await.unwrap();
    b.next().await.unwrap();
    let err = Stream::open(&s, request(&["ALL"])).await.err().expect("over the cap");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max_streams_per_caller"), "{}", err.message());
    drop(a);
    // The slot is given back once the stream ends (bounded wait).
    let mut opened = None;
    for _ in 0..100 {
        if let Ok(mut c) = Stream::open(&s, request(&["ALL"])).await {
            c.next().await.unwrap();
            opened = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(opened.is_some(), "a freed slot can be used again");
}

#[tokio::test]
async fn either_api_can_be_turned_off() {
    let apis = Apis { workload_api: false, sds: Some(SdsConfig::default()) };
    let mut s = Setup::start_apis(false, ConnectionLimits::default(), apis).await;
    let mine = s.my_selector();
    s.sync(vec![entry("e1", ME, &mine)]);
    s.mint("e1");
    let err = client(&s.socket)
        .await
        .fetch_x509svid(crate::agent::workload_api::tests::with_header(X509svidRequest {}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    assert!(sds(&s).await.fetch_secrets(request(&[ME])).await.is_ok());

    let apis = Apis { workload_api: true, sds: None };
    let mut s = Setup::start_apis(false, ConnectionLimits::default(), apis).await;
    s.sync(vec![entry("e1", ME, &mine)]);
    s.mint("e1");
    let err = sds(&s).await.fetch_secrets(request(&[ME])).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
}

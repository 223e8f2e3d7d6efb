//! A real Python grpcio client (the library under py-spiffe) against a tonic Workload API
//! server on a Unix socket. grpcio sends the socket path as `:authority`; h2 refuses that
//! unless the connection goes through `keycard::agent::h2fix::fix_authority`.
//!
//! The interpreter, with a pinned grpcio, comes from [`crate::python::grpcio_python`].

use std::path::{Path, PathBuf};

use keycard::agent::h2fix::fix_authority;
use keycard_workload_api::proto::{
    SECURITY_HEADER, SECURITY_HEADER_VALUE, SpiffeWorkloadApi, SpiffeWorkloadApiServer, X509svid,
    X509svidRequest, X509svidResponse,
};
use prost::Message;
use tokio::net::UnixListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

/// A Workload API that answers FetchX509SVID with [`fixed_response`] and nothing else.
struct FixedSvid;

fn fixed_response() -> X509svidResponse {
    X509svidResponse {
        svids: vec![X509svid {
            spiffe_id: "spiffe://example.org/grpcio".to_owned(),
            x509_svid: vec![0x30, 1, 2],
            x509_svid_key: vec![0x30, 3, 4],
            bundle: vec![0x30, 5, 6],
            hint: "python".to_owned(),
        }],
        ..Default::default()
    }
}

fn unimplemented<T>() -> Result<T, Status> {
    Err(Status::unimplemented("not part of this transport test"))
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for FixedSvid {
    type FetchX509SVIDStream = BoxStream<X509svidResponse>;
    type FetchX509BundlesStream = BoxStream<keycard_workload_api::proto::X509BundlesResponse>;
    type FetchJWTBundlesStream = BoxStream<keycard_workload_api::proto::JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        req: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        match req.metadata().get(SECURITY_HEADER).map(|v| v.to_str()) {
            Some(Ok(SECURITY_HEADER_VALUE)) => {}
            _ => return Err(Status::invalid_argument("missing workload.spiffe.io header")),
        }
        let items = tokio_stream::iter([Ok(fixed_response())]);
        Ok(Response::new(Box::pin(items)))
    }
    async fn fetch_x509_bundles(
        &self,
        _: Request<keycard_workload_api::proto::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        unimplemented()
    }
    async fn fetch_jwtsvid(
        &self,
        _: Request<keycard_workload_api::proto::JwtsvidRequest>,
    ) -> Result<Response<keycard_workload_api::proto::JwtsvidResponse>, Status> {
        unimplemented()
    }
    async fn fetch_jwt_bundles(
        &self,
        _: Request<keycard_workload_api::proto::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        unimplemented()
    }
    async fn validate_jwtsvid(
        &self,
        _: Request<keycard_workload_api::proto::ValidateJwtsvidRequest>,
    ) -> Result<Response<keycard_workload_api::proto::ValidateJwtsvidResponse>, Status> {
        unimplemented()
    }
}

/// Serves [`FixedSvid`] on `socket`, each connection wrapped by the fix or not.
fn serve(socket: &Path, wrap: bool) {
    let listener = UnixListener::bind(socket).unwrap();
    let incoming = UnixListenerStream::new(listener);
    let router =
        tonic::transport::Server::builder().add_service(SpiffeWorkloadApiServer::new(FixedSvid));
    if wrap {
        let fixed = incoming.map(|conn| conn.map(fix_authority));
        tokio::spawn(router.serve_with_incoming(fixed));
    } else {
        tokio::spawn(router.serve_with_incoming(incoming));
    }
}

/// Runs tests/py/fetch_x509svid.py against `socket` and returns its two answer lines.
async fn grpcio_fetch(socket: &Path) -> (String, String) {
    let python = tokio::task::spawn_blocking(crate::python::grpcio_python).await.unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/fetch_x509svid.py");
    let output =
        tokio::process::Command::new(python).arg(script).arg(socket).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "python client failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut lines = stdout.lines().map(str::to_owned);
    (lines.next().unwrap_or_default(), lines.next().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_client_gets_an_svid_through_the_authority_fix() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    serve(&socket, true);
    let (with_header, without_header) = grpcio_fetch(&socket).await;
    let expected = hex::encode(fixed_response().encode_to_vec());
    assert_eq!(with_header, format!("with_header ok {expected}"));
    assert_eq!(without_header, "without_header error INVALID_ARGUMENT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_client_is_refused_without_the_authority_fix() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    serve(&socket, false);
    let (with_header, without_header) = grpcio_fetch(&socket).await;
    // h2 resets the stream (PROTOCOL_ERROR): grpcio reports an error, never the SVID,
    // and not even the InvalidArgument the service would have answered.
    assert!(with_header.starts_with("with_header error "), "{with_header}");
    assert!(without_header.starts_with("without_header error "), "{without_header}");
    assert_ne!(without_header, "without_header error INVALID_ARGUMENT");
}

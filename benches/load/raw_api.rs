//! The baseline of target 3: a raw tonic Workload API server on a Unix socket in this
//! process, answering with bytes captured from keycard's agent in the same run. It does
//! nothing else (no attestation, no cache, no header check), so keycard / raw is the cost
//! of everything keycard adds to the same gRPC stack and payload.

use std::path::Path;
use std::pin::Pin;

use keycard_workload_api::proto::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, SpiffeWorkloadApi,
    SpiffeWorkloadApiServer, ValidateJwtsvidRequest, ValidateJwtsvidResponse, X509BundlesRequest,
    X509BundlesResponse, X509svidRequest, X509svidResponse,
};
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

type Answers<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// One message, then the stream stays open (as a Workload API stream does until the
/// next rotation).
fn one_then_open<T: Send + 'static>(message: T) -> Answers<T> {
    Box::pin(tokio_stream::once(Ok(message)).chain(tokio_stream::pending()))
}

/// The captured answers the raw server gives every caller.
#[derive(Clone)]
pub struct RawApi {
    /// What keycard's FetchX509SVID sent first.
    pub x509: X509svidResponse,
    /// What keycard's FetchJWTSVID answered.
    pub jwt: JwtsvidResponse,
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for RawApi {
    type FetchX509SVIDStream = Answers<X509svidResponse>;
    type FetchX509BundlesStream = Answers<X509BundlesResponse>;
    type FetchJWTBundlesStream = Answers<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        _request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        Ok(Response::new(one_then_open(self.x509.clone())))
    }

    async fn fetch_x509_bundles(
        &self,
        _request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        Err(Status::unimplemented("not measured"))
    }

    async fn fetch_jwtsvid(
        &self,
        _request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        Ok(Response::new(self.jwt.clone()))
    }

    async fn fetch_jwt_bundles(
        &self,
        _request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        Err(Status::unimplemented("not measured"))
    }

    async fn validate_jwtsvid(
        &self,
        _request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        Err(Status::unimplemented("not measured"))
    }
}

/// Serves `api` on a new Unix socket at `path` in the current tokio runtime until the
/// runtime ends.
pub fn serve(api: RawApi, path: &Path) {
    let listener = tokio::net::UnixListener::bind(path)
        .unwrap_or_else(|e| panic!("raw baseline: cannot bind {}: {e}", path.display()));
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(SpiffeWorkloadApiServer::new(api))
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = served {
            eprintln!("raw baseline server stopped: {e}");
        }
    });
}

//! The status a keycard gRPC server answers a request message over its size cap with.
//!
//! gRPC says a message larger than the receiver's limit is `RESOURCE_EXHAUSTED` (grpc-go,
//! grpc-java and grpc-dotnet answer so, and clients treat it as "too big, do not retry
//! as is"). tonic answers `OUT_OF_RANGE` instead, with the message "Error, decoded message
//! length too large: ...". [`OversizedLayer`], set on every server the daemons run (the
//! Workload API, the agent API, both admin sockets), rewrites exactly that answer to
//! `RESOURCE_EXHAUSTED` and leaves every other response alone.
//!
//! tonic decodes a unary or server-streaming request before the handler runs and answers
//! a decode failure as a trailers-only response, so the status is in the response
//! headers: that is where the layer looks. A client-streaming request that fails later
//! ends the way its handler says.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderValue;

/// How tonic begins the message of a request over the decoding cap, in the
/// `grpc-message` header (percent-encoded: tonic encodes spaces).
const TONIC_TOO_LARGE: &[u8] = b"Error,%20decoded%20message%20length%20too%20large";
/// `OUT_OF_RANGE`, as the `grpc-status` header spells it.
const OUT_OF_RANGE: &[u8] = b"11";
/// `RESOURCE_EXHAUSTED`, as the `grpc-status` header spells it.
const RESOURCE_EXHAUSTED: &str = "8";

/// A tower layer for `tonic::transport::Server::builder().layer(..)`; see the module
/// documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct OversizedLayer;

impl<S> tower::Layer<S> for OversizedLayer {
    type Service = Oversized<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Oversized { inner }
    }
}

/// The service [`OversizedLayer`] wraps around a gRPC server.
#[derive(Debug, Clone)]
pub struct Oversized<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Oversized<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let answer = self.inner.call(request);
        Box::pin(async move {
            let mut response = answer.await?;
            resource_exhausted_if_too_large(response.headers_mut());
            Ok(response)
        })
    }
}

/// Rewrites tonic's `OUT_OF_RANGE` answer to a request over the decoding cap (in
/// trailers-only `headers`) as `RESOURCE_EXHAUSTED`; anything else is left as it is.
pub fn resource_exhausted_if_too_large(headers: &mut http::HeaderMap) {
    let too_large = headers.get("grpc-status").is_some_and(|s| s.as_bytes() == OUT_OF_RANGE)
        && headers.get("grpc-message").is_some_and(|m| m.as_bytes().starts_with(TONIC_TOO_LARGE));
    if too_large {
        headers.insert("grpc-status", HeaderValue::from_static(RESOURCE_EXHAUSTED));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Status;
    use tower::{Layer as _, ServiceExt as _};

    /// `make()`'s response as it leaves a server wrapped in the layer.
    async fn through(
        make: fn() -> http::Response<tonic::body::Body>,
    ) -> http::Response<tonic::body::Body> {
        let inner = tower::service_fn(move |_: http::Request<()>| async move {
            Ok::<_, std::convert::Infallible>(make())
        });
        let service = OversizedLayer.layer(inner);
        service.oneshot(http::Request::new(())).await.unwrap()
    }

    /// The status a client reads from the response headers.
    fn status(response: &http::Response<tonic::body::Body>) -> Option<Status> {
        Status::from_header_map(response.headers())
    }

    const TOO_LARGE: &str =
        "Error, decoded message length too large: found 5242893 bytes, the limit is: 4194304 bytes";

    #[tokio::test]
    async fn tonics_too_large_answer_becomes_resource_exhausted() {
        // Exactly what tonic's server sends when a request is over its cap.
        let out = status(&through(|| Status::out_of_range(TOO_LARGE).into_http()).await).unwrap();
        assert_eq!(out.code(), tonic::Code::ResourceExhausted);
        assert_eq!(out.message(), TOO_LARGE, "the message is kept");
    }

    #[tokio::test]
    async fn every_other_answer_is_left_alone() {
        // OUT_OF_RANGE for another reason, another status with tonic's words, and a
        // response with no status in its headers (a stream, whose status comes later).
        let other = through(|| Status::out_of_range("page token past the end").into_http()).await;
        assert_eq!(status(&other).unwrap().code(), tonic::Code::OutOfRange);
        let denied = through(|| Status::permission_denied(TOO_LARGE).into_http()).await;
        assert_eq!(status(&denied).unwrap().code(), tonic::Code::PermissionDenied);
        let streaming = through(|| http::Response::new(tonic::body::Body::empty())).await;
        assert!(status(&streaming).is_none());
    }
}

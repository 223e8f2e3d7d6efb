//! A tower layer for HTTP resource servers: every request must carry, in `Authorization:
//! Bearer <token>`, a JWT-SVID for this server's audience that is bound (RFC 8705) to the
//! client certificate of the TLS connection it arrived on.
//!
//! The peer certificate belongs to the connection, not the request, so the layer is made
//! per connection: build one [`BoundBearer`] at start-up, and for each accepted TLS stream
//! call [`BoundBearer::for_connection`] with the stream's rustls state; wrap the service
//! that serves that connection in the returned [`BoundBearerLayer`]. With the server
//! config of [`crate::tls::server_config`] the handshake has already checked the client's
//! chain and SPIFFE ID; this layer adds that the token's holder is that client.
//!
//! A refused request gets `401 Unauthorized` with `WWW-Authenticate: Bearer
//! error="invalid_token"` and the reason as the body; the inner service is not called. An
//! accepted one reaches the inner service with the validated [`JwtSvid`] in its extensions.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use http::{HeaderValue, Request, Response, StatusCode, header};
use rustls::CommonState;

use crate::jwt_binding::{Unbound, check_binding};
use crate::jwt_bundle::JwtBundleSet;
use crate::jwt_source::JwtSource;
use crate::jwt_svid::{JwtSvid, validate_jwt_svid};

/// Where the current JWT bundles come from.
type Bundles = dyn Fn() -> Arc<JwtBundleSet> + Send + Sync;

/// What a resource server accepts: tokens for `audience`, signed by the bundles' authorities,
/// bound to the connection's certificate (or unbound, if allowed). Cheap to clone.
#[derive(Clone)]
pub struct BoundBearer {
    bundles: Arc<Bundles>,
    audience: Arc<str>,
    unbound: Unbound,
}

impl std::fmt::Debug for BoundBearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundBearer")
            .field("audience", &self.audience)
            .field("unbound", &self.unbound)
            .finish_non_exhaustive()
    }
}

impl BoundBearer {
    /// Validates with the bundles `bundles` returns at each request (so that a rotated JWT
    /// authority is picked up).
    pub fn new(
        bundles: impl Fn() -> Arc<JwtBundleSet> + Send + Sync + 'static,
        audience: &str,
        unbound: Unbound,
    ) -> Self {
        Self { bundles: Arc::new(bundles), audience: audience.into(), unbound }
    }

    /// Validates with the bundles a [`JwtSource`] follows from the Workload API.
    pub fn from_source(source: Arc<JwtSource>, audience: &str, unbound: Unbound) -> Self {
        Self::new(move || source.bundles(), audience, unbound)
    }

    /// The layer for one accepted TLS connection: its client certificate, if any, is the
    /// one tokens must be bound to.
    pub fn for_connection(&self, conn: &CommonState) -> BoundBearerLayer {
        let leaf = conn.peer_certificates().and_then(|c| c.first()).map(|c| Arc::from(c.as_ref()));
        self.for_peer(leaf)
    }

    /// [`BoundBearer::for_connection`] with the leaf certificate (DER) given directly.
    pub fn for_peer(&self, peer_leaf: Option<Arc<[u8]>>) -> BoundBearerLayer {
        BoundBearerLayer { policy: self.clone(), peer_leaf }
    }

    /// The whole check of one request's `Authorization` header value.
    pub fn check(
        &self,
        authorization: Option<&HeaderValue>,
        peer_leaf: Option<&[u8]>,
    ) -> Result<JwtSvid, String> {
        let value = authorization.ok_or("no Authorization header: send `Bearer <JWT-SVID>`")?;
        let value = value.to_str().map_err(|_| "the Authorization header is not ASCII")?;
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Err("the Authorization header is not `Bearer <JWT-SVID>`".into()),
        };
        let svid =
            validate_jwt_svid(token, &(self.bundles)(), &[&self.audience], SystemTime::now())
                .map_err(|e| format!("the JWT-SVID is not valid here: {e}"))?;
        check_binding(&svid, peer_leaf, self.unbound).map_err(|e| e.to_string())?;
        Ok(svid)
    }
}

/// [`BoundBearer`] for one connection; a [`tower::Layer`].
#[derive(Debug, Clone)]
pub struct BoundBearerLayer {
    policy: BoundBearer,
    peer_leaf: Option<Arc<[u8]>>,
}

impl<S> tower::Layer<S> for BoundBearerLayer {
    type Service = BoundBearerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BoundBearerService { layer: self.clone(), inner }
    }
}

/// The service of [`BoundBearerLayer`].
#[derive(Debug, Clone)]
pub struct BoundBearerService<S> {
    layer: BoundBearerLayer,
    inner: S,
}

/// The response to a refused request: 401, the reason as the body.
fn refusal<B: From<String>>(reason: &str) -> Response<B> {
    // A header value cannot hold quotes or control characters: the body has the details.
    let description: String = reason
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .filter(|c| *c != '"')
        .collect();
    let challenge = format!("Bearer error=\"invalid_token\", error_description=\"{description}\"");
    let mut response = Response::new(B::from(format!("{reason}\n")));
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    let value = HeaderValue::from_str(&challenge)
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer error=\"invalid_token\""));
    response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    response
}

impl<S, B, RB> tower::Service<Request<B>> for BoundBearerService<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
    RB: From<String> + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RB>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let checked = self
            .layer
            .policy
            .check(req.headers().get(header::AUTHORIZATION), self.layer.peer_leaf.as_deref());
        match checked {
            Ok(svid) => {
                req.extensions_mut().insert(svid);
                // The clone is ready only after poll_ready; call the one that was polled.
                let clone = self.inner.clone();
                let mut ready = std::mem::replace(&mut self.inner, clone);
                Box::pin(async move { ready.call(req).await })
            }
            Err(reason) => Box::pin(async move { Ok(refusal(&reason)) }),
        }
    }
}

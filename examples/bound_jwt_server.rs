//! An HTTPS resource server that accepts a JWT-SVID only from the client it was issued to:
//! the token (in `Authorization: Bearer ...`) must be bound, RFC 8705 `cnf`, to the client
//! certificate of the TLS connection it arrives on (entries registered with
//! `--jwt-svid-binding x509`). A copied token is refused on anyone else's connection.
//!
//! ```sh
//! SPIFFE_ENDPOINT_SOCKET=unix://$PWD/.keycard-dev/agent.sock \
//!   cargo run --example bound_jwt_server -- 127.0.0.1:8443 bound-demo
//! ```
//! Arguments: the listen address (default 127.0.0.1:8443) and the audience tokens must
//! name (default `bound-demo`). Its certificate and the bundles come from the Workload
//! API. Clients without a certificate may connect, and are told why they are refused. An
//! accepted request is answered `200 hello <SPIFFE ID of the token>`; a refused one `401`
//! with the reason. Once it listens it prints `bound_jwt_server: <its SPIFFE ID> listening
//! on <address>`; a failure to start is one line on stderr and exit status 1.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::process::ExitCode;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use keycard_workload_api::bound_bearer::BoundBearer;
use keycard_workload_api::tls::{Authorizer, server_config_optional_client};
use keycard_workload_api::{JwtSource, JwtSvid, Unbound, X509Source};
use tower::{Layer as _, Service};

/// The response body: the whole text at once.
type Body = http_body_util::Full<hyper::body::Bytes>;

/// The protected resource: greets the token's subject (put there by the layer).
#[derive(Clone)]
struct Hello;

impl<B> Service<Request<B>> for Hello {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let who = req.extensions().get::<JwtSvid>().map(|s| s.spiffe_id.to_string());
        ready(Ok(Response::new(Body::from(format!("hello {}\n", who.unwrap_or_default())))))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8443".into());
    let audience = args.next().unwrap_or_else(|| "bound-demo".into());
    let message = match serve(&listen, &audience).await {
        Ok(never) => match never {},
        Err(message) => message,
    };
    eprintln!("bound_jwt_server: {message}");
    ExitCode::FAILURE
}

/// Serves on `listen` until an error, which it returns as one line saying what to check.
async fn serve(listen: &str, audience: &str) -> Result<Infallible, String> {
    let advice = |e: &dyn std::fmt::Display| {
        format!(
            "cannot use the Workload API: {e}: is the agent running (keycard dev), \
             SPIFFE_ENDPOINT_SOCKET set to its socket, and an entry registered for this user?"
        )
    };
    let x509 = X509Source::new(None).await.map_err(|e| advice(&e))?;
    let jwt = Arc::new(JwtSource::new(None).await.map_err(|e| advice(&e))?);
    let context = x509.context();
    let own = context.default_svid().ok_or("the agent sent no SVID")?.spiffe_id().clone();
    // Any client of our own trust domain may connect; the token says who it is.
    let members = Authorizer::MemberOf(own.trust_domain());
    let config = server_config_optional_client(&x509, None, members).map_err(|e| e.to_string())?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let policy = BoundBearer::from_source(jwt, audience, Unbound::Refuse);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    println!("bound_jwt_server: {own} listening on {bound}");
    loop {
        let (tcp, from) = listener.accept().await.map_err(|e| format!("accept: {e}"))?;
        let (acceptor, policy) = (acceptor.clone(), policy.clone());
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(e) => return eprintln!("bound_jwt_server: refused {from}: {e}"),
            };
            // The layer of this connection knows its client certificate.
            let service = policy.for_connection(tls.get_ref().1).layer(Hello);
            let hyper_service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let mut service = service.clone();
                async move {
                    std::future::poll_fn(|cx| {
                        Service::<Request<Incoming>>::poll_ready(&mut service, cx)
                    })
                    .await?;
                    service.call(req).await
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), hyper_service);
            if let Err(e) = conn.await {
                eprintln!("bound_jwt_server: connection from {from}: {e}");
            }
        });
    }
}

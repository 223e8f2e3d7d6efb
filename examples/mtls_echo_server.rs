//! An mTLS echo server that gets everything from the SPIFFE Workload API: its certificate
//! (rotated without a restart) and the bundle it verifies clients with.
//!
//! ```sh
//! SPIFFE_ENDPOINT_SOCKET=unix://$PWD/.keycard-dev/agent.sock \
//!   cargo run --example mtls_echo_server -- 127.0.0.1:8443 example.org
//! ```
//! Arguments: the listen address (default 127.0.0.1:8443) and who may connect: a trust
//! domain (`example.org`, the default) or one SPIFFE ID (`spiffe://example.org/client`).
//! Every line a client sends comes back prefixed with the client's SPIFFE ID. Once it
//! accepts connections it prints `mtls_echo_server: <its SPIFFE ID> listening on <address>`
//! (scripts wait for that line); a failure to start is one line on stderr and exit status 1.

use std::process::ExitCode;
use std::sync::Arc;

use keycard_workload_api::tls::{Authorizer, peer_spiffe_id, server_config};
use keycard_workload_api::{SpiffeId, TrustDomain, X509Source};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

/// Who may connect, from the command line.
fn authorizer(arg: &str) -> Result<Authorizer, Box<dyn std::error::Error>> {
    Ok(if arg.starts_with("spiffe://") {
        Authorizer::Exact(SpiffeId::parse(arg)?)
    } else {
        Authorizer::MemberOf(TrustDomain::new(arg)?)
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8443".into());
    let allowed = args.next().unwrap_or_else(|| "example.org".into());
    let message = match serve(&listen, &allowed).await {
        Ok(never) => match never {},
        Err(message) => message,
    };
    eprintln!("mtls_echo_server: {message}");
    ExitCode::FAILURE
}

/// Serves on `listen` until an error, which it returns as one line saying what to check.
async fn serve(listen: &str, allowed: &str) -> Result<std::convert::Infallible, String> {
    let allowed = authorizer(allowed).map_err(|e| format!("{allowed:?}: {e}"))?;
    let source = X509Source::new(None).await.map_err(|e| {
        format!(
            "cannot get an SVID from the Workload API: {e}: is the agent running \
             (keycard dev), SPIFFE_ENDPOINT_SOCKET set to its socket, and an entry registered \
             for this user?"
        )
    })?;
    let context = source.context();
    let own = context.default_svid().ok_or("the agent sent no SVID")?.spiffe_id().clone();
    let config = server_config(&source, None, allowed).map_err(|e| e.to_string())?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    println!("mtls_echo_server: {own} listening on {bound}");
    loop {
        let (tcp, from) = listener.accept().await.map_err(|e| format!("accept: {e}"))?;
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(e) => return eprintln!("mtls_echo_server: refused {from}: {e}"),
            };
            let peer = peer_spiffe_id(tls.get_ref().1).map(|id| id.to_string()).unwrap_or_default();
            println!("mtls_echo_server: {peer} connected from {from}");
            let (read, mut write) = tokio::io::split(tls);
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if write.write_all(format!("{peer}: {line}\n").as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

//! An mTLS echo server that gets everything from the SPIFFE Workload API: its certificate
//! (rotated without a restart) and the bundle it verifies clients with.
//!
//! ```sh
//! SPIFFE_ENDPOINT_SOCKET=unix://$PWD/.keycard-dev/agent.sock \
//!   cargo run --example mtls_echo_server -- 127.0.0.1:8443 example.org
//! ```
//! Arguments: the listen address (default 127.0.0.1:8443) and who may connect: a trust
//! domain (`example.org`, the default) or one SPIFFE ID (`spiffe://example.org/client`).
//! Every line a client sends comes back prefixed with the client's SPIFFE ID.

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
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8443".into());
    let allowed = authorizer(&args.next().unwrap_or_else(|| "example.org".into()))?;
    let source = X509Source::new(None).await?;
    let context = source.context();
    let own = context.default_svid().ok_or("the agent sent no SVID")?.spiffe_id().clone();
    let acceptor =
        tokio_rustls::TlsAcceptor::from(Arc::new(server_config(&source, None, allowed)?));
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("mtls_echo_server: {own} listening on {}", listener.local_addr()?);
    loop {
        let (tcp, from) = listener.accept().await?;
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

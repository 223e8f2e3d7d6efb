//! The client of `mtls_echo_server`: connects with its own SVID from the Workload API,
//! checks the server's SPIFFE ID, sends one line and prints the answer.
//!
//! ```sh
//! SPIFFE_ENDPOINT_SOCKET=unix://$PWD/.keycard-dev/agent.sock \
//!   cargo run --example mtls_echo_client -- 127.0.0.1:8443 example.org "hello"
//! ```
//! Arguments: the server address, who the server must be (a trust domain or one SPIFFE
//! ID), and the line to send.

use std::sync::Arc;

use keycard_workload_api::tls::{Authorizer, client_config, peer_spiffe_id};
use keycard_workload_api::{SpiffeId, TrustDomain, X509Source};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "127.0.0.1:8443".into());
    let expected = args.next().unwrap_or_else(|| "example.org".into());
    let line = args.next().unwrap_or_else(|| "hello".into());
    let authorizer = if expected.starts_with("spiffe://") {
        Authorizer::Exact(SpiffeId::parse(&expected)?)
    } else {
        Authorizer::MemberOf(TrustDomain::new(&expected)?)
    };
    let source = X509Source::new(None).await?;
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(client_config(&source, None, authorizer)?));
    let tcp = tokio::net::TcpStream::connect(&address).await?;
    // The name is not checked (the server's SPIFFE ID is); any valid name will do.
    let mut tls = connector.connect(ServerName::try_from("spiffe")?, tcp).await?;
    let server = peer_spiffe_id(tls.get_ref().1).ok_or("the server presented no SPIFFE ID")?;
    tls.write_all(format!("{line}\n").as_bytes()).await?;
    let mut answer = String::new();
    BufReader::new(tls).read_line(&mut answer).await?;
    println!("server {server} answered: {}", answer.trim_end());
    Ok(())
}

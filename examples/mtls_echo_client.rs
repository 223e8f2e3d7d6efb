//! The client of `mtls_echo_server`: connects with its own SVID from the Workload API,
//! checks the server's SPIFFE ID, sends one line and prints the answer.
//!
//! ```sh
//! SPIFFE_ENDPOINT_SOCKET=unix://$PWD/.keycard-dev/agent.sock \
//!   cargo run --example mtls_echo_client -- 127.0.0.1:8443 example.org "hello"
//! ```
//! Arguments: the server address, who the server must be (a trust domain or one SPIFFE
//! ID), and the line to send. A failure is one line on stderr saying what to check, and
//! exit status 1.

use std::process::ExitCode;
use std::sync::Arc;

use keycard_workload_api::tls::{Authorizer, client_config, peer_spiffe_id};
use keycard_workload_api::{SpiffeId, TrustDomain, X509Source};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "127.0.0.1:8443".into());
    let expected = args.next().unwrap_or_else(|| "example.org".into());
    let line = args.next().unwrap_or_else(|| "hello".into());
    match talk(&address, &expected, &line).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("mtls_echo_client: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Connects to `address`, checks that the server is `expected`, sends `line` and prints
/// the answer; an error says what failed and what to check.
async fn talk(address: &str, expected: &str, line: &str) -> Result<(), String> {
    let authorizer = if expected.starts_with("spiffe://") {
        Authorizer::Exact(SpiffeId::parse(expected).map_err(|e| format!("{expected:?}: {e}"))?)
    } else {
        Authorizer::MemberOf(TrustDomain::new(expected).map_err(|e| format!("{expected:?}: {e}"))?)
    };
    // The server first: when it is not up yet there is no point in asking for an SVID.
    let tcp = tokio::net::TcpStream::connect(address).await.map_err(|e| {
        format!(
            "cannot connect to {address}: {e}: is mtls_echo_server running and listening there?"
        )
    })?;
    let source = X509Source::new(None).await.map_err(|e| {
        format!(
            "cannot get an SVID from the Workload API: {e}: is the agent running \
             (keycard dev), SPIFFE_ENDPOINT_SOCKET set to its socket, and an entry registered \
             for this user?"
        )
    })?;
    let config = client_config(&source, None, authorizer).map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    // The name is not checked (the server's SPIFFE ID is); any valid name will do.
    let name = ServerName::try_from("spiffe").map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("the TLS handshake with {address} failed: {e}"))?;
    let server = peer_spiffe_id(tls.get_ref().1).ok_or("the server presented no SPIFFE ID")?;
    let lost = |e: std::io::Error| format!("the connection to {address} failed: {e}");
    tls.write_all(format!("{line}\n").as_bytes()).await.map_err(lost)?;
    let mut answer = String::new();
    BufReader::new(tls).read_line(&mut answer).await.map_err(lost)?;
    println!("server {server} answered: {}", answer.trim_end());
    Ok(())
}

//! The client of `bound_jwt_server`: fetches a JWT-SVID from the Workload API and sends it
//! as `Authorization: Bearer ...` over mTLS with its X.509-SVID.
//!
//! ```sh
//! SPIFFE_ENDPOINT_SOCKET=unix://$PWD/.keycard-dev/agent.sock \
//!   cargo run --example bound_jwt_client -- 127.0.0.1:8443 bound-demo
//! ```
//! Arguments: the server address and the audience, then any of:
//! - `--as ID`: present the X.509-SVID of this SPIFFE ID (default: the first one);
//! - `--token-for ID`: fetch the token of this SPIFFE ID (default: the `--as` one);
//! - `--token TOKEN`: send this token instead of fetching one (a copied token, say);
//! - `--no-client-cert`: present no certificate at all;
//! - `--print-token`: only print the fetched token and exit.
//!
//! Prints the HTTP status line and body. Exit status: 0 for `200`, 2 for any other HTTP
//! status (the server refused), 1 when no request could be made.

use std::process::ExitCode;
use std::sync::Arc;

use keycard_workload_api::tls::{Authorizer, SpiffePeerVerifier, client_config};
use keycard_workload_api::{JwtSource, SpiffeId, X509Source};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The command line.
#[derive(Default)]
struct Args {
    address: String,
    audience: String,
    present: Option<SpiffeId>,
    token_for: Option<SpiffeId>,
    token: Option<String>,
    no_client_cert: bool,
    print_token: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args::default();
    let mut it = std::env::args().skip(1);
    let id = |v: Option<String>, flag: &str| -> Result<SpiffeId, String> {
        let v = v.ok_or(format!("{flag} needs a SPIFFE ID"))?;
        SpiffeId::parse(&v).map_err(|e| format!("{flag} {v}: {e}"))
    };
    let mut positional = Vec::new();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--as" => args.present = Some(id(it.next(), "--as")?),
            "--token-for" => args.token_for = Some(id(it.next(), "--token-for")?),
            "--token" => args.token = Some(it.next().ok_or("--token needs a token")?),
            "--no-client-cert" => args.no_client_cert = true,
            "--print-token" => args.print_token = true,
            flag if flag.starts_with("--") => return Err(format!("unknown flag {flag}")),
            _ => positional.push(arg),
        }
    }
    let mut positional = positional.into_iter();
    args.address = positional.next().unwrap_or_else(|| "127.0.0.1:8443".into());
    args.audience = positional.next().unwrap_or_else(|| "bound-demo".into());
    Ok(args)
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(code) => code,
        Err(message) => {
            eprintln!("bound_jwt_client: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<ExitCode, String> {
    let args = parse_args()?;
    let x509 = X509Source::new(None).await.map_err(|e| format!("Workload API: {e}"))?;
    let token = match &args.token {
        Some(token) => token.clone(),
        None => {
            let jwt = JwtSource::new(None).await.map_err(|e| format!("Workload API: {e}"))?;
            let whose = args.token_for.as_ref().or(args.present.as_ref());
            let svid = jwt
                .fetch_jwt_svid(std::slice::from_ref(&args.audience), whose)
                .await
                .map_err(|e| format!("no JWT-SVID: {e}"))?;
            svid.token
        }
    };
    if args.print_token {
        println!("{token}");
        return Ok(ExitCode::SUCCESS);
    }
    let context = x509.context();
    let own = context.default_svid().ok_or("the agent sent no SVID")?.spiffe_id().clone();
    let members = Authorizer::MemberOf(own.trust_domain());
    let config = if args.no_client_cert {
        let verifier = SpiffePeerVerifier::from_updates(x509.updated(), members);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        config
    } else {
        client_config(&x509, args.present.clone(), members).map_err(|e| e.to_string())?
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(&args.address)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", args.address))?;
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let mut tls = connector.connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n",
        args.address
    );
    tls.write_all(request.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
    let mut reply = Vec::new();
    // A server that closes without close_notify still sent its whole answer.
    let _ = tls.read_to_end(&mut reply).await;
    let reply = String::from_utf8_lossy(&reply);
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let status = head.lines().next().unwrap_or_default();
    println!("{status}\n{body}");
    Ok(if status.split(' ').nth(1) == Some("200") { ExitCode::SUCCESS } else { ExitCode::from(2) })
}

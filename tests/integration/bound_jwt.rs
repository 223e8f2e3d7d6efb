//! JWT-SVIDs bound to the caller's X.509-SVID (issue 21), end to end: a real server and
//! agent, the `bound_jwt_server` example (the tower layer behind the rustls config) and its
//! client, and `keycard api validate jwt --bound-to`.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use serde_json::Value;

use crate::agent::{PATIENCE, Setup};
use crate::examples::example;
use crate::procs::{Group, keycard};

const AUDIENCE: &str = "bound-demo";
const WEB: &str = "spiffe://example.org/workload/web";
const DB: &str = "spiffe://example.org/workload/db";

/// One run of the example client against `address`, with `args` after the audience.
fn client(socket: &str, address: &str, args: &[&str]) -> Output {
    Command::new(example("bound_jwt_client"))
        .args([address, AUDIENCE])
        .args(args)
        .env("SPIFFE_ENDPOINT_SOCKET", socket)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The client was refused by the server (exit status 2, a 401) for `reason`.
fn assert_refused(out: &Output, reason: &str) {
    let text = stdout(out);
    assert_eq!(out.status.code(), Some(2), "not refused: {out:?}");
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(text.contains(reason), "wanted {reason:?} in {text}");
}

/// The token the agent hands the caller as `id` for the audience.
fn token(socket: &str, address: &str, id: &str) -> String {
    let out = client(socket, address, &["--as", id, "--print-token"]);
    assert!(out.status.success(), "{out:?}");
    stdout(&out).trim().to_owned()
}

/// (serial, chain PEM) of the caller's X.509-SVID for `id`.
fn x509_svid(socket: &str, id: &str) -> (String, String) {
    let out = keycard()
        .args(["api", "fetch", "x509", "--output", "json", "--socket", socket])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let svid = doc["svids"].as_array().unwrap().iter().find(|s| s["spiffe_id"] == id).unwrap();
    (svid["serial"].as_str().unwrap().to_owned(), svid["chain_pem"].as_str().unwrap().to_owned())
}

/// `keycard api validate jwt --bound-to` with the PEM `cert`.
fn validate_bound_to(socket: &str, token: &str, cert: &str, dir: &std::path::Path) -> Output {
    let path = dir.join("cert.pem");
    std::fs::write(&path, cert).unwrap();
    keycard()
        .args(["api", "validate", "jwt", "--audience", AUDIENCE, "--svid", token])
        .args(["--output", "json", "--socket", socket, "--bound-to"])
        .arg(&path)
        .output()
        .unwrap()
}

#[test]
fn a_bound_token_works_only_with_the_certificate_it_was_issued_with() {
    let setup = Setup::start("127.0.0.1:0");
    let web = setup.entry("web");
    setup.entry("db");
    let admin = |args: &[&str]| setup.server().admin(args);
    let shown = admin(&["entry", "update", "--id", &web, "--jwt-svid-binding", "x509"]);
    assert_eq!(shown["jwt_svid_binding"], "x509", "{shown}");
    let agent = setup.agent("");
    let socket = format!("unix://{}", agent.socket.display());
    let dir = tempfile::tempdir().unwrap();

    let mut server = Group::spawn(
        Command::new(example("bound_jwt_server"))
            .args(["127.0.0.1:0", AUDIENCE])
            .env("SPIFFE_ENDPOINT_SOCKET", &socket)
            .stdout(Stdio::piped()),
    );
    let mut banner = String::new();
    BufReader::new(server.child().stdout.as_mut().unwrap()).read_line(&mut banner).unwrap();
    let address = banner.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(banner.contains("listening on 127.0.0.1:"), "{banner}");

    // The holder, over mTLS with its own X.509-SVID: accepted.
    let out = client(&socket, &address, &["--as", WEB]);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains(&format!("hello {WEB}")), "{}", stdout(&out));

    // The same token copied to another workload's connection, or to one without a client
    // certificate: refused, saying why.
    let stolen = token(&socket, &address, WEB);
    let (first_serial, first_pem) = x509_svid(&socket, WEB);
    let out = client(&socket, &address, &["--as", DB, "--token", &stolen]);
    assert_refused(&out, "but the connection presented x5t#S256=");
    let out = client(&socket, &address, &["--no-client-cert", "--token", &stolen]);
    assert_refused(&out, "the connection presented no client certificate");
    // An entry without binding gets bearer tokens, which this server does not take.
    let out = client(&socket, &address, &["--as", DB]);
    assert_refused(&out, "not bound to a certificate (no cnf claim)");

    // The CLI: the agent returns cnf among the claims; --bound-to checks the certificate.
    let out = validate_bound_to(&socket, &stolen, &first_pem, dir.path());
    assert!(out.status.success(), "{out:?}");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let thumbprint = doc["claims"]["cnf"]["x5t#S256"].as_str().unwrap().to_owned();
    assert_eq!(doc["bound_to"]["x5t#S256"], thumbprint.as_str());
    let (_, db_pem) = x509_svid(&socket, DB);
    let out = validate_bound_to(&socket, &stolen, &db_pem, dir.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(err.contains("the JWT-SVID is valid but refused for the certificate in"), "{err}");

    // A rotation of web's X.509-SVID (an entry change makes the agent renew it at once):
    // the agent hands out a token bound to the new certificate, and the old token is
    // refused on a connection with the new one.
    admin(&["entry", "update", "--id", &web, "--dns", "web.example.org"]);
    let deadline = Instant::now() + PATIENCE;
    let (second_serial, second_pem) = loop {
        let (serial, pem) = x509_svid(&socket, WEB);
        if serial != first_serial {
            break (serial, pem);
        }
        assert!(Instant::now() < deadline, "web's X.509-SVID was not renewed");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_ne!(first_pem, second_pem, "serial {second_serial}");
    let fresh = token(&socket, &address, WEB);
    assert_ne!(fresh, stolen, "a token bound to the old certificate was handed out again");
    let out = validate_bound_to(&socket, &fresh, &second_pem, dir.path());
    assert!(out.status.success(), "{out:?}");
    let out = client(&socket, &address, &["--as", WEB, "--token", &stolen]);
    assert_refused(&out, "after a rotation, fetch a new token");
    let out = client(&socket, &address, &["--as", WEB]);
    assert!(out.status.success(), "{out:?}");

    drop(server);
    agent.stop();
}

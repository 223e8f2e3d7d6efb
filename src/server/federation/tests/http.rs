//! The HTTP layer: the endpoint's 404 and 405, and what the client refuses in an answer
//! (status, size, content), redirects, timeouts.

use super::*;

async fn fetch_web(pki: &WebPki, addr: SocketAddr, path: &str) -> Result<SpiffeBundle, FetchError> {
    let url = format!("https://localhost:{}{path}", addr.port());
    fetch_bundle(&td(), &url, &pki.profile(), None, TIMEOUT).await
}

/// Sends one raw request to the endpoint and returns the whole answer.
async fn raw(pki: &WebPki, addr: SocketAddr, request: &str) -> String {
    let tls = super::super::fetch_tls::ClientTls::web(Some(pki.ca_pem.as_bytes())).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream =
        tokio_rustls::TlsConnector::from(tls.config.clone()).connect(name, tcp).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut answer)).await.unwrap().unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn other_paths_are_404_and_other_methods_405() {
    let pki = WebPki::new(&["localhost"]);
    let running = start(crate::ca::manager::test_ca(td()), pki.resolver()).await;
    let e = fetch_web(&pki, running.addr, "/bundle.json").await.unwrap_err();
    assert!(matches!(e, FetchError::HttpStatus { status: 404, .. }), "{e:?}");
    let answer = raw(
        &pki,
        running.addr,
        "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("allow: get, head"), "{answer}");
    let answer =
        raw(&pki, running.addr, "HEAD / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!((running.requests("404"), running.requests("405")), (1, 1));
    assert_eq!(running.requests("200"), 1);
}

#[tokio::test]
async fn an_oversized_body_is_refused_with_or_without_a_length() {
    let pki = WebPki::new(&["localhost"]);
    let big = vec![b' '; super::super::fetch::MAX_BUNDLE_SIZE + 1];
    let declared = scripted(&pki, move |_, _| http_response("200 OK", &[], &big)).await;
    let e = fetch_web(&pki, declared.addr, "/").await.unwrap_err();
    assert!(matches!(e, FetchError::TooLarge { .. }), "{e:?}");
    // Chunked, no Content-Length: the limit applies while reading.
    let chunked = scripted(&pki, |_, _| {
        let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let chunk = vec![b' '; 64 * 1024];
        for _ in 0..20 {
            out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            out.extend_from_slice(&chunk);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    })
    .await;
    let e = fetch_web(&pki, chunked.addr, "/").await.unwrap_err();
    assert!(matches!(e, FetchError::TooLarge { .. }), "{e:?}");
}

#[tokio::test]
async fn answers_that_are_not_a_usable_bundle_are_refused() {
    let pki = WebPki::new(&["localhost"]);
    let good = crate::ca::manager::test_ca(td()).bundle().unwrap().to_json().unwrap();
    let mut with_unknown: serde_json::Value = serde_json::from_str(&good).unwrap();
    let unknown = serde_json::json!({"use": "x-future-svid", "kty": "EC", "crv": "P-256"});
    with_unknown["keys"].as_array_mut().unwrap().push(unknown.clone());
    let only_unknown = serde_json::json!({"keys": [unknown]}).to_string();
    let cases: Vec<(&str, String, &str)> = vec![
        ("500 Internal Server Error", "oops".into(), "http_status"),
        ("200 OK", "{not json".into(), "bad_bundle"),
        ("200 OK", "{\"spiffe_sequence\": 1}".into(), "bad_bundle"),
        ("200 OK", "{\"keys\": []}".into(), "empty_bundle"),
        ("200 OK", only_unknown, "empty_bundle"),
    ];
    for (status, body, reason) in cases {
        let server = scripted(&pki, move |_, _| http_response(status, &[], body.as_bytes())).await;
        let e = fetch_web(&pki, server.addr, "/").await.unwrap_err();
        assert_eq!(e.reason(), reason, "{status}: {e}");
    }
    // A key of unknown use beside good ones is skipped, as the standard says.
    let body = with_unknown.to_string();
    let server = scripted(&pki, move |_, _| http_response("200 OK", &[], body.as_bytes())).await;
    let fetched = fetch_web(&pki, server.addr, "/").await.unwrap();
    assert_eq!(fetched.to_json().unwrap(), good);
}

#[tokio::test]
async fn redirects_are_followed_a_few_times() {
    let pki = WebPki::new(&["localhost"]);
    let running = start(crate::ca::manager::test_ca(td()), pki.resolver()).await;
    let target = format!("https://localhost:{}/", running.addr.port());
    let moved = scripted(&pki, move |_, _| {
        http_response("307 Temporary Redirect", &[("Location", target.as_str())], b"")
    })
    .await;
    let fetched = fetch_web(&pki, moved.addr, "/old").await.unwrap();
    assert_eq!(fetched, running.ca.bundle().unwrap());
    let looping = scripted(&pki, |head, _| {
        let next = if head.starts_with("GET /a ") { "/b" } else { "/a" };
        http_response("302 Found", &[("Location", next)], b"")
    })
    .await;
    let e = fetch_web(&pki, looping.addr, "/a").await.unwrap_err();
    assert!(matches!(e, FetchError::TooManyRedirects { .. }), "{e:?}");
    let to_http = scripted(&pki, |_, _| {
        http_response("302 Found", &[("Location", "http://localhost/")], b"")
    })
    .await;
    let e = fetch_web(&pki, to_http.addr, "/").await.unwrap_err();
    assert!(e.to_string().contains("http://localhost/"), "{e}");
}

#[tokio::test]
async fn a_silent_endpoint_times_out_and_a_closed_port_is_a_connect_error() {
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://127.0.0.1:{}/", silent.local_addr().unwrap().port());
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            held.push(tcp);
        }
    });
    let profile = EndpointProfile::HttpsWeb { ca_pem: None };
    let after = Duration::from_millis(300);
    let e = fetch_bundle(&td(), &url, &profile, None, after).await.unwrap_err();
    assert!(matches!(e, FetchError::Timeout { .. }), "{e:?}");
    hold.abort();

    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let url = format!("https://{closed}/");
    let e = fetch_bundle(&td(), &url, &profile, None, TIMEOUT).await.unwrap_err();
    assert!(matches!(e, FetchError::Connect { .. }), "{e:?}");
}

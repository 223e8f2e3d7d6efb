//! `https_web`: the endpoint presents a certificate from files, the client checks it
//! against a CA (or the public roots) and the URL's host.

use super::*;

async fn start_web(pki: &WebPki) -> Running {
    start(crate::ca::manager::test_ca(td()), pki.resolver()).await
}

async fn fetch_web(url: &str, profile: &EndpointProfile) -> Result<SpiffeBundle, FetchError> {
    fetch_bundle(&td(), url, profile, None, TIMEOUT).await
}

#[tokio::test]
async fn a_web_endpoint_is_fetched_by_host_name_and_ip_address() {
    let pki = WebPki::new(&["localhost", "127.0.0.1"]);
    let running = start_web(&pki).await;
    let port = running.addr.port();
    for url in [format!("https://localhost:{port}/"), format!("https://127.0.0.1:{port}")] {
        let fetched = fetch_web(&url, &pki.profile()).await.unwrap();
        assert_eq!(fetched, running.ca.bundle().unwrap(), "{url}");
    }
    running.stop().await;
}

#[tokio::test]
async fn a_web_endpoint_of_an_unknown_ca_is_refused() {
    let pki = WebPki::new(&["localhost"]);
    let running = start_web(&pki).await;
    let url = format!("https://localhost:{}/", running.addr.port());
    let other = WebPki::new(&["localhost"]);
    let e = fetch_web(&url, &other.profile()).await.unwrap_err();
    assert!(matches!(e, FetchError::UnknownIssuer { .. }), "{e:?}");
    assert!(e.to_string().contains("CA certificates configured"), "{e}");
    // A private CA is not among the public roots either.
    let e = fetch_web(&url, &EndpointProfile::HttpsWeb { ca_pem: None }).await.unwrap_err();
    assert!(matches!(e, FetchError::UnknownIssuer { .. }), "{e:?}");
    assert!(e.to_string().contains("Mozilla"), "{e}");
}

#[tokio::test]
async fn a_web_certificate_for_another_host_is_refused() {
    let pki = WebPki::new(&["bundles.example.org"]);
    let running = start_web(&pki).await;
    let e = fetch_web(&running.url(), &pki.profile()).await.unwrap_err();
    match &e {
        FetchError::WrongHostName { host, .. } => assert_eq!(host, "127.0.0.1"),
        e => panic!("{e:?}"),
    }
}

#[tokio::test]
async fn a_bad_ca_file_is_named() {
    let profile = EndpointProfile::HttpsWeb { ca_pem: Some(b"not a certificate".to_vec()) };
    let e = fetch_web("https://127.0.0.1:1/", &profile).await.unwrap_err();
    assert!(matches!(e, FetchError::BadCaPem(_)), "{e:?}");
}

#[tokio::test]
async fn curl_fetches_the_web_endpoint_when_installed() {
    let Ok(version) = std::process::Command::new("curl").arg("--version").output() else {
        eprintln!("curl is not installed; skipped");
        return;
    };
    assert!(version.status.success());
    let pki = WebPki::new(&["localhost"]);
    let running = start_web(&pki).await;
    let url = format!("https://localhost:{}/", running.addr.port());
    let ca_file = pki.ca_file();
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&ca_file)
        .arg("-D-")
        .arg(&url)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{head}");
    assert_eq!(SpiffeBundle::parse(td(), body.as_bytes()).unwrap(), running.ca.bundle().unwrap());
}

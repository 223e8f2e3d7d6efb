//! The bundle endpoint client: fetches a foreign trust domain's SPIFFE bundle over HTTPS
//! (SPIFFE Federation §5), authenticating the endpoint by its profile ([`fetch_tls`]).
//!
//! One call is one fetch: the caller (the federation refresher) keeps the last good bundle,
//! passes it back as `held` so that an `https_spiffe` endpoint is authenticated with the
//! newest authorities of its trust domain (a rotation there is followed), and schedules
//! the next fetch with [`refresh_interval`].
//!
//! Redirects (301, 302, 303, 307, 308) to another `https` URL are followed, at most
//! [`MAX_REDIRECTS`], with the same authentication (the standard's SHOULD); the configured
//! URL is used again at the next fetch.
//!
//! [`fetch_tls`]: super::fetch_tls

use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, CONTENT_LENGTH, HOST, LOCATION, USER_AGENT};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use keycard_workload_api::{SpiffeBundle, TrustDomain};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::error::FetchError;
use super::fetch_tls::ClientTls;

/// The most bytes a bundle document may have.
pub const MAX_BUNDLE_SIZE: usize = 1024 * 1024;
/// The most redirects one fetch follows.
pub const MAX_REDIRECTS: usize = 3;
/// The fetch interval when the bundle has no `spiffe_refresh_hint` (the standard's advice).
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(300);
/// The shortest fetch interval, whatever the hint: a foreign endpoint is not polled harder.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// The longest fetch interval, whatever the hint: a rotation is seen within the hour.
pub const MAX_REFRESH_INTERVAL: Duration = Duration::from_secs(3600);

/// How the client authenticates a bundle endpoint: a relationship's profile as stored
/// (`https_web` without a CA file trusts the public Web PKI roots, Mozilla's, from
/// `webpki-roots`, built in).
pub use crate::server::datastore::EndpointProfile;

/// How long to wait before the next fetch: the bundle's `spiffe_refresh_hint`, bounded
/// to [`MIN_REFRESH_INTERVAL`]..=[`MAX_REFRESH_INTERVAL`]; [`DEFAULT_REFRESH_INTERVAL`]
/// without a hint.
pub fn refresh_interval(hint: Option<Duration>) -> Duration {
    hint.map_or(DEFAULT_REFRESH_INTERVAL, |h| h.clamp(MIN_REFRESH_INTERVAL, MAX_REFRESH_INTERVAL))
}

/// Fetches the bundle of `trust_domain` from `url`, within `timeout` (redirects included).
///
/// `held` is the bundle that authenticates an `https_spiffe` endpoint: the last one held
/// for the endpoint's trust domain. For a self-serving endpoint (its ID in `trust_domain`,
/// the common case) that is the bootstrap bundle, then each bundle fetched. For an endpoint
/// whose ID is in another trust domain, pass the bundle held for *that* trust domain; a
/// bundle of any other trust domain is refused ([`FetchError::HeldBundleMismatch`]).
/// `https_web` ignores `held`.
///
/// The answer must be `200` with at most [`MAX_BUNDLE_SIZE`] bytes of SPIFFE bundle JSON
/// that holds at least one authority (keys with an unknown `use` are skipped, as the
/// standard says); from a self-serving `https_spiffe` endpoint, at least one X.509
/// authority, which the next fetch needs.
pub async fn fetch_bundle(
    trust_domain: &TrustDomain,
    url: &str,
    profile: &EndpointProfile,
    held: Option<&SpiffeBundle>,
    timeout: Duration,
) -> Result<SpiffeBundle, FetchError> {
    let target = EndpointUrl::parse(url)?;
    let tls = match profile {
        EndpointProfile::HttpsSpiffe { endpoint_id } => {
            let endpoint_td = endpoint_id.trust_domain();
            let held =
                held.ok_or(FetchError::NoHeldBundle { trust_domain: endpoint_td.clone() })?;
            if held.trust_domain != endpoint_td {
                return Err(FetchError::HeldBundleMismatch {
                    endpoint_id: endpoint_id.clone(),
                    held: held.trust_domain.clone(),
                });
            }
            let unusable = |reason: String| FetchError::HeldBundleUnusable {
                trust_domain: endpoint_td.clone(),
                reason,
            };
            let x509 = held.x509_bundle().map_err(|e| unusable(e.to_string()))?;
            if x509.is_empty() {
                return Err(unusable("it holds JWT authorities only".into()));
            }
            ClientTls::spiffe([x509].into_iter().collect(), endpoint_id.clone())?
        }
        EndpointProfile::HttpsWeb { ca_pem } => ClientTls::web(ca_pem.as_deref())?,
    };
    let body = tokio::time::timeout(timeout, follow(target, &tls))
        .await
        .map_err(|_| FetchError::Timeout { url: url.to_owned(), after: timeout })??;
    let bundle = SpiffeBundle::parse(trust_domain.clone(), &body).map_err(|source| {
        FetchError::BadBundle { url: url.to_owned(), trust_domain: trust_domain.clone(), source }
    })?;
    let empty = |reason| FetchError::EmptyBundle {
        url: url.to_owned(),
        trust_domain: trust_domain.clone(),
        reason,
    };
    if bundle.x509_authorities.is_empty() && bundle.jwt_authorities.is_empty() {
        return Err(empty("with no authority"));
    }
    if let EndpointProfile::HttpsSpiffe { endpoint_id } = profile
        && endpoint_id.trust_domain() == *trust_domain
        && bundle.x509_authorities.is_empty()
    {
        return Err(empty("with no X.509 authority (the next fetch could not authenticate it)"));
    }
    Ok(bundle)
}

/// Fetches `target`, following redirects; returns the body of the final `200`.
async fn follow(mut target: EndpointUrl, tls: &ClientTls) -> Result<Bytes, FetchError> {
    let configured = target.text.clone();
    for _ in 0..=MAX_REDIRECTS {
        match get(&target, tls).await? {
            Answer::Body(body) => return Ok(body),
            Answer::Redirect(location) => {
                let next = target.resolve(&location).ok_or_else(|| FetchError::HttpStatus {
                    url: target.text.clone(),
                    status: 302,
                    location: Some(location.clone()),
                })?;
                tracing::debug!(from = %target.text, to = %next.text, "bundle endpoint redirect");
                target = next;
            }
        }
    }
    Err(FetchError::TooManyRedirects { url: configured, limit: MAX_REDIRECTS })
}

enum Answer {
    Body(Bytes),
    Redirect(String),
}

/// Aborts the connection task when the fetch ends (or is dropped by the timeout).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One `GET` over a new connection.
async fn get(target: &EndpointUrl, tls: &ClientTls) -> Result<Answer, FetchError> {
    let url = target.text.as_str();
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|source| FetchError::Connect { url: url.to_owned(), source })?;
    let _ = tcp.set_nodelay(true);
    let stream = TlsConnector::from(tls.config.clone())
        .connect(target.server_name(), tcp)
        .await
        .map_err(|e| tls.handshake_error(url, &target.host, e))?;
    let http = |e: hyper::Error| FetchError::Http { url: url.to_owned(), reason: e.to_string() };
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(http)?;
    let _connection = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let request = Request::get(target.path.as_str())
        .header(HOST, target.authority.as_str())
        .header(ACCEPT, "application/json")
        .header(USER_AGENT, concat!("keycard/", env!("CARGO_PKG_VERSION")))
        .body(Empty::<Bytes>::new())
        .map_err(|e| FetchError::Http { url: url.to_owned(), reason: e.to_string() })?;
    let response = sender.send_request(request).await.map_err(http)?;
    let status = response.status();
    if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
        let location = response.headers().get(LOCATION).and_then(|l| l.to_str().ok());
        if let Some(location) = location {
            return Ok(Answer::Redirect(location.to_owned()));
        }
    }
    if status != StatusCode::OK {
        return Err(FetchError::HttpStatus {
            url: url.to_owned(),
            status: status.as_u16(),
            location: None,
        });
    }
    let too_large = || FetchError::TooLarge { url: url.to_owned(), limit: MAX_BUNDLE_SIZE };
    let declared = response.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok());
    if declared.and_then(|v| v.parse::<u64>().ok()).is_some_and(|n| n > MAX_BUNDLE_SIZE as u64) {
        return Err(too_large());
    }
    let body =
        Limited::new(response.into_body(), MAX_BUNDLE_SIZE).collect().await.map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                FetchError::Http { url: url.to_owned(), reason: e.to_string() }
            }
        })?;
    Ok(Answer::Body(body.to_bytes()))
}

/// A checked endpoint URL: `https://host[:port]/path[?query]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointUrl {
    /// The URL as given.
    pub text: String,
    /// The host, without the brackets of an IPv6 literal.
    pub host: String,
    /// The port (443 when the URL names none).
    pub port: u16,
    /// `host[:port]` as written, for the `Host` header.
    pub authority: String,
    /// Path and query (`/` when the URL has none).
    pub path: String,
}

impl EndpointUrl {
    /// Checks `url` (SPIFFE Federation §5.2.x.1: scheme `https`, no user information).
    pub fn parse(url: &str) -> Result<Self, FetchError> {
        let bad = |reason: &str| FetchError::BadUrl { url: url.to_owned(), reason: reason.into() };
        let uri: http::Uri = url.parse().map_err(|_| bad("is not a URL"))?;
        match uri.scheme_str() {
            Some("https") => {}
            Some(_) => return Err(bad("does not use https")),
            None => return Err(bad("has no scheme")),
        }
        let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("must not hold user information"));
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        if ServerName::try_from(host).is_err() {
            return Err(bad("has a host that is neither a DNS name nor an IP address"));
        }
        Ok(Self {
            text: url.to_owned(),
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(443),
            authority: authority.as_str().to_owned(),
            path: uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
        })
    }

    /// Where a redirect to `location` leads: an absolute `https` URL, or a path on this
    /// host. `None` when it is neither.
    fn resolve(&self, location: &str) -> Option<Self> {
        if location.starts_with('/') && !location.starts_with("//") {
            return Self::parse(&format!("https://{}{location}", self.authority)).ok();
        }
        Self::parse(location).ok()
    }

    fn server_name(&self) -> ServerName<'static> {
        // `parse` checked that the host is a valid name.
        ServerName::try_from(self.host.clone())
            .unwrap_or_else(|_| ServerName::try_from("localhost").expect("a valid DNS name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_interval_is_the_hint_within_bounds() {
        let s = Duration::from_secs;
        assert_eq!(refresh_interval(None), s(300));
        assert_eq!(refresh_interval(Some(s(0))), s(30));
        assert_eq!(refresh_interval(Some(s(10))), s(30));
        assert_eq!(refresh_interval(Some(s(120))), s(120));
        assert_eq!(refresh_interval(Some(s(86_400))), s(3600));
    }

    #[test]
    fn urls_must_be_https_with_a_host_and_no_user() {
        let u = EndpointUrl::parse("https://bundles.example.com/example.org?x=1").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("bundles.example.com", 443));
        assert_eq!(u.path, "/example.org?x=1");
        let u = EndpointUrl::parse("https://[::1]:8443").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("::1", 8443, "/"));
        assert_eq!(u.authority, "[::1]:8443");
        for (url, why) in [
            ("http://127.0.0.1:8443/", "does not use https"),
            ("127.0.0.1:8443", "https://host[:port]/path"),
            ("https://user:pw@example.com/", "user information"),
            ("https:///path", "https://host[:port]/path"),
            ("not a url", "is not a URL"),
        ] {
            let e = EndpointUrl::parse(url).unwrap_err();
            assert!(matches!(e, FetchError::BadUrl { .. }), "{url}: {e:?}");
            let text = e.to_string();
            assert!(text.contains(why) && text.contains("https://host[:port]/path"), "{text}");
        }
    }

    #[test]
    fn redirects_resolve_to_https_urls_only() {
        let base = EndpointUrl::parse("https://a.example:8443/x").unwrap();
        assert_eq!(base.resolve("/y").unwrap().text, "https://a.example:8443/y");
        assert_eq!(base.resolve("https://b.example/z").unwrap().host, "b.example");
        assert!(base.resolve("http://b.example/z").is_none());
        assert!(base.resolve("//b.example/z").is_none());
        assert!(base.resolve("z").is_none());
    }
}

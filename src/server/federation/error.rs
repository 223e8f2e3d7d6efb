//! Why the bundle endpoint could not start ([`EndpointError`]) and why a foreign bundle
//! could not be fetched ([`FetchError`]), each cause with a message an operator can act on.

use std::net::SocketAddr;
use std::time::Duration;

use keycard_workload_api::{BundleJsonError, SpiffeId, TrustDomain};

/// Why the bundle endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The address is taken, not local, or not allowed.
    #[error(
        "cannot listen for the bundle endpoint on {address}: {source} (is another process \
         using it? choose another [bundle_endpoint] address)"
    )]
    Bind {
        /// The configured address.
        address: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The `https_web` certificate or key file cannot be used.
    #[error("bundle_endpoint.{key} {path}: {reason}")]
    File {
        /// `cert_file` or `key_file`.
        key: &'static str,
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the TLS settings.
    #[error("bundle endpoint TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Why fetching a foreign trust domain's bundle failed. The last good bundle stays in use;
/// the message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The endpoint URL is not `https://host[:port]/path`.
    #[error("bundle endpoint URL {url:?} {reason}; write it as https://host[:port]/path")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The CA certificates given for `https_web` are not PEM certificates.
    #[error("the endpoint CA file is unusable: {0}; give PEM CERTIFICATE blocks")]
    BadCaPem(String),
    /// `https_spiffe` needs a bundle to authenticate the endpoint, and there is none.
    #[error(
        "no bundle is held for trust domain {trust_domain}, so the https_spiffe endpoint \
         cannot be authenticated; bootstrap the relationship with that trust domain's bundle"
    )]
    NoHeldBundle {
        /// The trust domain whose bundle is needed.
        trust_domain: TrustDomain,
    },
    /// The held bundle is of another trust domain than the endpoint's SPIFFE ID.
    #[error(
        "the endpoint {endpoint_id} must be authenticated with the bundle of its own trust \
         domain {}, but the bundle given is of {held}", endpoint_id.trust_domain()
    )]
    HeldBundleMismatch {
        /// The endpoint's configured SPIFFE ID.
        endpoint_id: SpiffeId,
        /// The trust domain of the bundle given.
        held: TrustDomain,
    },
    /// The held bundle has no X.509 authority, so no endpoint certificate can verify.
    #[error(
        "the bundle held for {trust_domain} has no usable X.509 authority ({reason}); set \
         its bundle again from a trusted copy"
    )]
    HeldBundleUnusable {
        /// Its trust domain.
        trust_domain: TrustDomain,
        /// Why.
        reason: String,
    },
    /// No TCP connection could be made.
    #[error("cannot connect to the bundle endpoint {url}: {source}")]
    Connect {
        /// The URL.
        url: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The whole fetch took longer than allowed.
    #[error("the bundle endpoint {url} did not answer within {}", humantime::format_duration(*after))]
    Timeout {
        /// The URL.
        url: String,
        /// The limit.
        after: Duration,
    },
    /// The endpoint's certificate was not issued by an authority the client trusts.
    #[error(
        "the bundle endpoint {url} presented a certificate not issued by {trusted} (unknown \
         issuer): {reason}"
    )]
    UnknownIssuer {
        /// The URL.
        url: String,
        /// What was trusted: the held bundle of a trust domain, the system roots or a CA file.
        trusted: String,
        /// The verifier's words.
        reason: String,
    },
    /// `https_spiffe`: the endpoint's SVID is valid but names another SPIFFE ID.
    #[error(
        "the bundle endpoint {url} presented SPIFFE ID {presented}, but {expected} is \
         expected; check the endpoint SPIFFE ID of the relationship"
    )]
    WrongSpiffeId {
        /// The URL.
        url: String,
        /// The configured endpoint SPIFFE ID.
        expected: SpiffeId,
        /// The ID in the endpoint's certificate.
        presented: SpiffeId,
    },
    /// `https_web`: the certificate is not valid for the URL's host.
    #[error(
        "the bundle endpoint {url} presented a certificate that is not valid for {host}: {reason}"
    )]
    WrongHostName {
        /// The URL.
        url: String,
        /// The host of the URL.
        host: String,
        /// The verifier's words.
        reason: String,
    },
    /// The certificate is refused for another reason (expired, not an X509-SVID, ...).
    #[error("the bundle endpoint {url} presented an unacceptable certificate: {reason}")]
    BadCertificate {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS handshake failed for a reason other than the certificate.
    #[error("TLS with the bundle endpoint {url} failed: {reason}")]
    Tls {
        /// The URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The HTTP exchange failed (connection closed, malformed answer).
    #[error("HTTP with the bundle endpoint {url} failed: {reason}")]
    Http {
        /// The URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The endpoint answered with a status other than 200.
    #[error("the bundle endpoint {url} answered HTTP {status}{}; check the URL's path", location.as_ref().map(|l| format!(" (to {l})")).unwrap_or_default())]
    HttpStatus {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
        /// Where a redirect pointed, when it could not be followed.
        location: Option<String>,
    },
    /// More redirects than allowed.
    #[error("the bundle endpoint {url} redirected more than {limit} times")]
    TooManyRedirects {
        /// The configured URL.
        url: String,
        /// The limit.
        limit: usize,
    },
    /// The body is larger than a bundle may be.
    #[error("the bundle endpoint {url} sent more than {limit} bytes; a bundle is far smaller")]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit in bytes.
        limit: usize,
    },
    /// The body is not a SPIFFE bundle.
    #[error("the bundle endpoint {url} did not send a SPIFFE bundle for {trust_domain}: {source}")]
    BadBundle {
        /// The URL.
        url: String,
        /// The trust domain the bundle was fetched for.
        trust_domain: TrustDomain,
        /// The rule the document breaks.
        source: BundleJsonError,
    },
    /// The bundle holds no authority the client can use.
    #[error("the bundle endpoint {url} sent a bundle for {trust_domain} {reason}; it is not used")]
    EmptyBundle {
        /// The URL.
        url: String,
        /// The trust domain the bundle was fetched for.
        trust_domain: TrustDomain,
        /// What it lacks.
        reason: &'static str,
    },
}

impl FetchError {
    /// A short stable name of the cause, for metric labels and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadUrl { .. } => "bad_url",
            Self::BadCaPem(_) => "bad_ca_pem",
            Self::NoHeldBundle { .. } => "no_held_bundle",
            Self::HeldBundleMismatch { .. } => "held_bundle_mismatch",
            Self::HeldBundleUnusable { .. } => "held_bundle_unusable",
            Self::Connect { .. } => "connect",
            Self::Timeout { .. } => "timeout",
            Self::UnknownIssuer { .. } => "unknown_issuer",
            Self::WrongSpiffeId { .. } => "wrong_spiffe_id",
            Self::WrongHostName { .. } => "wrong_host_name",
            Self::BadCertificate { .. } => "bad_certificate",
            Self::Tls { .. } => "tls",
            Self::Http { .. } => "http",
            Self::HttpStatus { .. } => "http_status",
            Self::TooManyRedirects { .. } => "too_many_redirects",
            Self::TooLarge { .. } => "too_large",
            Self::BadBundle { .. } => "bad_bundle",
            Self::EmptyBundle { .. } => "empty_bundle",
        }
    }
}

//! SPIFFE Federation, transport half: serving this trust domain's bundle to others, and
//! fetching theirs.
//!
//! - [`config`]: the `[bundle_endpoint]` table of the server config file.
//! - [`endpoint`]: the bundle endpoint server (HTTPS `GET /` answers with the SPIFFE
//!   bundle JSON); [`endpoint_tls`]: its TLS configuration per profile (`https_spiffe`
//!   with the server's own SVID, `https_web` with a certificate from files).
//! - [`fetch`]: [`fetch_bundle`], one authenticated fetch of a foreign bundle, and
//!   [`refresh_interval`], when to fetch again; [`fetch_tls`]: how each profile
//!   authenticates the endpoint.
//! - [`error`]: [`EndpointError`] and [`FetchError`].
//!
//! Which foreign trust domains to fetch, storing their bundles and handing them to
//! workloads is the relationship side's work; it calls [`fetch_bundle`].

pub mod config;
pub mod endpoint;
pub mod endpoint_tls;
pub mod error;
pub mod fetch;
pub mod fetch_tls;

pub use config::{BundleEndpointConfig, FileBundleEndpoint, ServingProfile};
pub use endpoint::BundleEndpoint;
pub use error::{EndpointError, FetchError};
pub use fetch::{EndpointProfile, fetch_bundle, refresh_interval};

#[cfg(test)]
mod tests;

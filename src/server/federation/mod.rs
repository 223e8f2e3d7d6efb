//! SPIFFE Federation on the server: serving this trust domain's bundle to others, fetching
//! theirs, and handing them to agents.
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
//! - [`refresh`]: which foreign bundles are due and who fetches them (one server of an HA
//!   deployment per refresh), over [`https::HttpsFetcher`].
//! - [`foreign`]: the foreign bundles as agents receive them, and reading an operator's
//!   bundle file.

pub mod config;
pub mod declared;
pub mod endpoint;
pub mod endpoint_tls;
pub mod error;
pub mod fetch;
pub mod fetch_tls;
pub mod foreign;
pub mod https;
pub mod refresh;
pub mod relationship;

pub use config::{BundleEndpointConfig, FileBundleEndpoint, ServingProfile};
pub use endpoint::BundleEndpoint;
pub use error::{EndpointError, FetchError};
pub use fetch::{EndpointProfile, fetch_bundle, refresh_interval};

#[cfg(test)]
mod tests;

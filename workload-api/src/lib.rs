//! `keycard-workload-api`: what a SPIFFE workload links to talk to a keycard agent.
//!
//! # Layout
//! - [`spiffe_id`]: `SpiffeId` and `TrustDomain`, parsed by the SPIFFE-ID standard's rules.
//! - [`x509`]: X509-SVIDs and X.509 bundles, validated by the X509-SVID standard's rules.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod proto;
pub mod spiffe_id;
pub mod x509;

pub use spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};
pub use x509::{
    X509Bundle, X509BundleError, X509BundleSet, X509Svid, X509SvidError, spiffe_id_of, verify_chain,
};

//! `keycard-workload-api`: what a SPIFFE workload links to talk to a keycard agent.
//!
//! # Layout
//! - [`spiffe_id`]: `SpiffeId` and `TrustDomain`, parsed by the SPIFFE-ID standard's rules.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod proto;
pub mod spiffe_id;

pub use spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};

//! keycard: a SPIFFE-style mTLS certificate authority.
//!
//! # Layout
//! - `main.rs`: the `keycard` command line.
#![forbid(unsafe_code)]

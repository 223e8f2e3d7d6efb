//! `keycard-workload-api`: what a SPIFFE workload links to talk to a keycard agent.
//!
//! # Layout
//! - [`spiffe_id`]: `SpiffeId` and `TrustDomain`, parsed by the SPIFFE-ID standard's rules.
//! - [`x509`]: X509-SVIDs and X.509 bundles, validated by the X509-SVID standard's rules.
//! - [`bundle_set`]: `BundleSet`, bundles keyed by trust domain (X.509 and JWT alike).
//! - [`jwk`]: public keys as JWKs (EC P-256/P-384, RSA, Ed25519), SPKI conversion, JWS verify.
//! - [`jws`]: compact JWS encoding/decoding, `JwsAlg`, the `JwsSigner` trait, `Es256Signer`.
//! - [`jwt_bundle`]: `JwtBundle` (JWT authorities by `kid`) and `JwtBundleSet` (by trust domain).
//! - [`bundle_json`]: `SpiffeBundle`, the SPIFFE bundle JWK Set format, both ways.
//! - [`jwt_svid`]: JWT-SVID validation against a `JwtBundleSet`, and signing.
//! - [`jwt_binding`]: JWT-SVIDs bound to an X.509-SVID (RFC 8705 `cnf` / `x5t#S256`).
//! - [`bound_bearer`]: a tower layer for HTTP resource servers behind the rustls server
//!   config: the `Authorization` bearer token must be bound to the connection's client cert.
//! - [`proto`]: the Workload API wire types and tonic stubs (service `SpiffeWorkloadAPI`).
//! - [`client`]: `WorkloadApiClient`, the Workload API over a Unix socket, answers checked.
//! - [`jwt_source`]: `JwtSource`, JWT-SVIDs on demand and JWT bundles for local validation.
//! - [`source`]: `X509Source`, the current SVIDs and bundles, following the agent's stream.
//! - [`tls`]: rustls server and client configs that hot-swap the SVID and authorize peers
//!   by SPIFFE ID.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bound_bearer;
pub mod bundle_json;
pub mod bundle_set;
pub mod client;
pub mod jwk;
pub mod jws;
pub mod jwt_binding;
pub mod jwt_bundle;
pub mod jwt_source;
pub mod jwt_svid;
pub mod proto;
pub mod source;
pub mod spiffe_id;
pub mod tls;
pub mod x509;

pub use bundle_json::{BundleJsonError, SpiffeBundle};
pub use bundle_set::{BundleSet, TrustDomainBundle};
pub use client::{ClientError, WorkloadApiClient, X509Context};
pub use jwk::{EcCurve, Jwk, JwkError, JwkParams};
pub use jws::{Es256Signer, JwsAlg, JwsError, JwsSigner};
pub use jwt_binding::{BindingError, Unbound, check_binding, x5t_s256};
pub use jwt_bundle::{JwtBundle, JwtBundleError, JwtBundleSet};
pub use jwt_source::JwtSource;
pub use jwt_svid::{JwtSvid, JwtSvidError, encode_jwt_svid, validate_jwt_svid};
pub use source::X509Source;
pub use spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};
pub use tls::{Authorizer, client_config, peer_spiffe_id, server_config};
pub use x509::{
    X509Bundle, X509BundleError, X509BundleSet, X509Svid, X509SvidError, spiffe_id_and_serial_of,
    spiffe_id_of, verify_chain,
};

//! The node agent.
//!
//! - [`client`]: the agent's client of the server's agent API (attest, renew, sync, sign,
//!   bundle); [`server_tls`]: how it authenticates the server over TLS.
//! - [`attest`]: workload attestation from the socket's peer credentials (unix selectors,
//!   PID-reuse defence).
//! - [`cache`]: the workload SVID cache the Workload API serves from; [`manager`]: the
//!   loop that keeps it synced with the server and renewed.
//! - [`h2fix`]: lets grpcio-style clients that send a socket path as `:authority` in.
//! - [`renewal`]: when each SVID is renewed (staggered so a fleet never renews at once).

pub mod admin;
pub mod attest;
pub mod cache;
pub mod client;
pub mod config;
pub mod disk_cache;
pub mod h2fix;
pub mod identity;
pub mod jwt;
pub mod manager;
pub mod renewal;
pub mod run;
pub mod sds;
pub mod server_tls;
pub mod storage;
pub mod workload_api;

pub use client::{
    AgentIdentity, Attestation, ClientError, IssuedX509Svid, ServerClient, SyncedEntries,
};
pub use server_tls::{TlsConnectorService, TrustCell, open_channel};

//! keycard: a SPIFFE-style mTLS certificate authority.
//!
//! # Layout
//! - `main.rs`: the `keycard` command line.
//! - [`agent`]: the node agent (`keycard agent run`): node attestation, the sync and
//!   renewal loop, the workload SVID cache, workload attestation and the Workload API.
//! - [`cli`]: the admin commands (`keycard entry`, `token`, ...): admin API clients.
//! - [`clock`]: the `Clock` trait (system clock, manual test clock); all time goes through it.
//! - [`dev`]: `keycard dev`: a server and an agent with development defaults.
//! - [`config`]: TOML loading and value parsing shared by both daemons' configurations.
//! - [`shutdown`]: the graceful-shutdown signal (SIGINT/SIGTERM) shared by both daemons.
//! - [`fsutil`]: atomic private file writes (temp file, fsync, rename, fsync directory).
//! - [`helper`]: `keycard helper`, the sidecar that writes SVID files and signals a child.
//! - [`pemfile`]: reading operator-supplied PEM certificates and keys.
//! - [`ca`]: signing: key managers (memory, disk), the X.509 authority (self-signed or
//!   signed by an upstream CA on disk), SVID templates and CSR checks, the JWT authority,
//!   the authority journal and the rotation manager.
//! - [`secret`]: `Secret`, a string (a join token, a JWT) that `Debug` never prints.
//! - [`selector`]: `Selector` (`type:value`) and `SelectorSet` with subset matching.
//! - [`server`]: the CA daemon: datastore, registration entries, admin and agent APIs,
//!   federation (the bundle endpoint, foreign bundles kept fresh).
//! - [`telemetry`]: Prometheus metrics, health endpoints, audit events.
//! - [`unixsock`]: the Unix-socket listeners of all three sockets (directory checks, stale
//!   sockets, peer-uid allow-list).
//! - [`wire`]: the agent-server contract (agent API protos, shared constants and messages);
//!   the agent and the server import it and never each other.
#![deny(unsafe_code)]

pub mod agent;
pub mod ca;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dev;
pub mod fsutil;
pub mod helper;
pub mod pemfile;
pub mod secret;
pub mod selector;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod unixsock;
pub mod wire;

#[cfg(test)]
mod layout_tests;

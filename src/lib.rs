//! keycard: a SPIFFE-style mTLS certificate authority.
//!
//! # Layout
//! - `main.rs`: the `keycard` command line.
//! - [`cli`]: the admin commands (`keycard entry`, `token`, ...): admin API clients.
//! - [`clock`]: the `Clock` trait (system clock, manual test clock); all time goes through it.
//! - [`fsutil`]: atomic private file writes (temp file, fsync, rename, fsync directory).
//! - [`ca`]: signing: key managers (memory, disk), the X.509 authority (self-signed or
//!   signed by an upstream CA on disk), SVID templates and CSR checks, the JWT authority,
//!   the authority journal and the rotation manager.
//! - [`selector`]: `Selector` (`type:value`) and `SelectorSet` with subset matching.
//! - [`server`]: the CA daemon: datastore, registration entries, admin and agent APIs.
//! - [`telemetry`]: Prometheus metrics, health endpoints, audit events.
#![forbid(unsafe_code)]

pub mod ca;
pub mod cli;
pub mod clock;
pub mod fsutil;
pub mod selector;
pub mod server;
pub mod telemetry;

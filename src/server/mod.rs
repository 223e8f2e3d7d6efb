//! The CA server daemon: datastore, registration entries, admin API, node attestation,
//! the agent API and federation.

pub mod admin;
pub mod agent_api;
pub mod cluster;
pub mod config;
pub mod datastore;
pub mod entry;
pub mod federation;
pub mod join_token;
pub mod run;

pub use run::{RunError, run};

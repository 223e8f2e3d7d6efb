//! keycard's integration tests: one binary, a module per area, each running real parts.

mod agent;
mod agent_identity;
mod agent_limits;
mod agent_pacing;
#[path = "../common/authority.rs"]
mod authority;
mod cli;
#[path = "../common/examples.rs"]
mod examples;
mod fuzz_replay;
mod grpcio_authority;
mod helper;
mod interop;
mod mtls;
mod procs;
mod py_spiffe;
mod python;
mod server;
mod startup;

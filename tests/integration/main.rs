//! keycard's integration tests: one binary, a module per area, each running real parts.

mod agent;
mod agent_identity;
mod agent_limits;
mod agent_pacing;
mod attackers;
mod attacks;
#[path = "../common/authority.rs"]
mod authority;
mod bound_jwt;
mod cli;
mod envoy;
#[path = "../common/examples.rs"]
mod examples;
mod faults;
mod federation;
mod flood;
mod forked;
mod fuzz_replay;
mod grpcio_authority;
mod ha;
mod helper;
mod interop;
mod jwt_load;
mod limits;
mod mtls;
mod pair;
mod procs;
mod py_spiffe;
mod python;
mod rotation_load;
mod sds_wire;
mod secrets;
mod server;
mod startup;

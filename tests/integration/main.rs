//! keycard's integration tests: one binary, a module per area, each running real parts.

mod cli;
mod grpcio_authority;
mod python;
mod server;

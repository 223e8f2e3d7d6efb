//! End-to-end tests: the real `keycard` binary in dev mode, and real workload processes
//! (the examples, the `keycard api` CLI) under different uids.

#[path = "../common/authority.rs"]
mod authority;
mod dev;
#[path = "../common/examples.rs"]
mod examples;
mod readme;
mod support;
mod workloads;

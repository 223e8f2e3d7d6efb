//! libFuzzer wrapper of checks/workload_request.rs (the invariants live there, shared with the replay
//! test tests/integration/fuzz_replay.rs).
#![no_main]

#[allow(dead_code)]
#[path = "../checks/common.rs"]
mod common;
#[path = "../checks/workload_request.rs"]
mod workload_request;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    workload_request::check(data);
});

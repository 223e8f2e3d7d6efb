//! libFuzzer wrapper of checks/csr.rs (the invariants live there, shared with the replay
//! test tests/integration/fuzz_replay.rs).
#![no_main]

#[allow(dead_code)]
#[path = "../checks/common.rs"]
mod common;
#[path = "../checks/csr.rs"]
mod csr;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    csr::check(data);
});

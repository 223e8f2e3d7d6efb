//! libFuzzer wrapper of checks/spiffe_id.rs (the invariants live there, shared with the replay
//! test tests/integration/fuzz_replay.rs).
#![no_main]

#[allow(dead_code)]
#[path = "../checks/common.rs"]
mod common;
#[path = "../checks/spiffe_id.rs"]
mod spiffe_id;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    spiffe_id::check(data);
});

//! libFuzzer wrapper of checks/h2_authority.rs (the invariants live there, shared with the replay
//! test tests/integration/fuzz_replay.rs).
#![no_main]

#[allow(dead_code)]
#[path = "../checks/common.rs"]
mod common;
#[path = "../checks/h2_authority.rs"]
mod h2_authority;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    h2_authority::check(data);
});

//! libFuzzer wrapper of checks/jwt_svid.rs (the invariants live there, shared with the replay
//! test tests/integration/fuzz_replay.rs).
#![no_main]

#[allow(dead_code)]
#[path = "../checks/common.rs"]
mod common;
#[path = "../checks/jwt_svid.rs"]
mod jwt_svid;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    jwt_svid::check(data);
});

//! libFuzzer wrapper of checks/bundle_json.rs (the invariants live there, shared with the replay
//! test tests/integration/fuzz_replay.rs).
#![no_main]

#[path = "../checks/bundle_json.rs"]
mod bundle_json;
#[allow(dead_code)]
#[path = "../checks/common.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    bundle_json::check(data);
});

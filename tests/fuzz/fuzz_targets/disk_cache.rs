//! libFuzzer wrapper of checks/disk_cache.rs (the invariants live there, shared with the replay
//! test tests/integration/fuzz_replay.rs).
#![no_main]

#[allow(dead_code)]
#[path = "../checks/common.rs"]
mod common;
#[path = "../checks/disk_cache.rs"]
mod disk_cache;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    disk_cache::check(data);
});

//! libFuzzer wrapper of checks/agent_api.rs (the invariants live there, shared with the replay
//! test tests/integration/fuzz_replay.rs).
#![no_main]

#[path = "../checks/agent_api.rs"]
mod agent_api;
#[allow(dead_code)]
#[path = "../checks/common.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    agent_api::check(data);
});

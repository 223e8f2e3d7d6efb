//! libFuzzer wrapper of checks/x509_svid.rs (the invariants live there, shared with the replay
//! test tests/integration/fuzz_replay.rs).
#![no_main]

#[allow(dead_code)]
#[path = "../checks/common.rs"]
mod common;
#[path = "../checks/x509_svid.rs"]
mod x509_svid;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    x509_svid::check(data);
});

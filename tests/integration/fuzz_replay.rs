//! Replays the fuzz corpus and every past crash under plain `cargo test`.
//!
//! The invariants live in tests/fuzz/checks/<target>.rs, one `check(&[u8])` per target,
//! shared with the libFuzzer wrappers in tests/fuzz/fuzz_targets/. Each test here runs
//! its target's check on every file of tests/fuzz/corpus/<target>/ (the seeds and what the
//! fuzzer kept) and tests/fuzz/artifacts/<target>/ (inputs that once crashed: a fixed bug
//! stays fixed). A failing file is named in the panic message.
//!
//! The seed files are written by `write_seeds` (ignored; see seeds.rs and
//! tests/fuzz/README.md).

use std::path::{Path, PathBuf};

#[path = "../fuzz/checks/agent_api.rs"]
mod agent_api;
#[path = "../fuzz/checks/bundle_json.rs"]
mod bundle_json;
#[path = "../fuzz/checks/common.rs"]
mod common;
#[path = "../fuzz/checks/config.rs"]
mod config;
#[path = "../fuzz/checks/csr.rs"]
mod csr;
#[path = "../fuzz/checks/disk_cache.rs"]
mod disk_cache;
mod file_seeds;
#[path = "../fuzz/checks/h2_authority.rs"]
mod h2_authority;
#[path = "../fuzz/checks/jwt_svid.rs"]
mod jwt_svid;
mod seeds;
#[path = "../fuzz/checks/spiffe_id.rs"]
mod spiffe_id;
#[path = "../fuzz/checks/workload_request.rs"]
mod workload_request;
#[path = "../fuzz/checks/x509_svid.rs"]
mod x509_svid;

/// tests/fuzz in the source tree.
fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz")
}

/// The files of one directory, sorted; none when it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.expect("read corpus directory").path())
            .filter(|p| p.is_file() && p.file_name().is_none_or(|n| n != ".gitkeep"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{}: {e}", dir.display()),
    };
    out.sort();
    out
}

/// Runs `check` on every corpus and artifact file of `target`; fails naming each file
/// whose check panicked, and when no corpus file is accepted (then the invariants, which
/// are about what keycard accepts, would be checked on nothing).
fn replay(target: &str, check: fn(&[u8]) -> bool) {
    let corpus = files(&fuzz_dir().join("corpus").join(target));
    assert!(!corpus.is_empty(), "tests/fuzz/corpus/{target} has no seeds");
    let artifacts = files(&fuzz_dir().join("artifacts").join(target));
    let (mut failed, mut accepted) = (Vec::new(), 0);
    for path in corpus.iter().chain(&artifacts) {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        match std::panic::catch_unwind(|| check(&data)) {
            Ok(true) => accepted += 1,
            Ok(false) => {}
            Err(_) => failed.push(path.display().to_string()),
        }
    }
    assert!(failed.is_empty(), "{target}: the check failed on {failed:#?}");
    assert!(accepted > 0, "{target}: no corpus file is accepted, so no invariant was checked");
    eprintln!(
        "{target}: {} corpus files ({accepted} accepted), {} artifacts replayed",
        corpus.len(),
        artifacts.len()
    );
}

#[test]
fn spiffe_id_corpus() {
    replay("spiffe_id", spiffe_id::check);
}

#[test]
fn csr_corpus() {
    replay("csr", csr::check);
}

#[test]
fn x509_svid_corpus() {
    replay("x509_svid", x509_svid::check);
}

#[test]
fn bundle_json_corpus() {
    replay("bundle_json", bundle_json::check);
}

#[test]
fn jwt_svid_corpus() {
    replay("jwt_svid", jwt_svid::check);
}

#[test]
fn workload_request_corpus() {
    replay("workload_request", workload_request::check);
}

#[test]
fn agent_api_corpus() {
    replay("agent_api", agent_api::check);
}

#[test]
fn h2_authority_corpus() {
    replay("h2_authority", h2_authority::check);
}

#[test]
fn disk_cache_corpus() {
    replay("disk_cache", disk_cache::check);
}

#[test]
fn config_corpus() {
    replay("config", config::check);
}

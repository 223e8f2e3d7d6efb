//! The layout rule of DESIGN.md, checked: the agent and the server meet only over the wire
//! ([`crate::wire`]) and share only the socket listeners ([`crate::unixsock`]); neither
//! imports the other outside tests, and `ca` imports neither.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir` that is not a test file (`tests.rs`, `*_tests.rs`, or
/// anything under a `tests/` directory).
fn non_test_sources(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if name != "tests" {
                    pending.push(path);
                }
            } else if name.ends_with(".rs") && name != "tests.rs" && !name.ends_with("_tests.rs") {
                found.push(path);
            }
        }
    }
    found
}

/// The files under `src/<module>` that name `crate::<forbidden>`.
fn offenders(module: &str, forbidden: &str) -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let needle = format!("crate::{forbidden}");
    non_test_sources(&src.join(module))
        .into_iter()
        .filter(|path| std::fs::read_to_string(path).unwrap().contains(&needle))
        .map(|path| path.display().to_string())
        .collect()
}

#[test]
fn the_agent_and_the_server_never_import_each_other() {
    assert_eq!(offenders("agent", "server"), Vec::<String>::new(), "agent imports server");
    assert_eq!(offenders("server", "agent"), Vec::<String>::new(), "server imports agent");
}

#[test]
fn the_ca_knows_neither_daemon() {
    assert_eq!(offenders("ca", "server"), Vec::<String>::new());
    assert_eq!(offenders("ca", "agent"), Vec::<String>::new());
    assert_eq!(offenders("wire", "server"), Vec::<String>::new());
    assert_eq!(offenders("wire", "agent"), Vec::<String>::new());
    assert_eq!(offenders("unixsock", "server"), Vec::<String>::new());
    assert_eq!(offenders("unixsock", "agent"), Vec::<String>::new());
}

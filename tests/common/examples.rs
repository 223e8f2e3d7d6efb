//! Finding the example binaries from a test binary (shared by the integration and e2e
//! test binaries through `#[path]`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// An example binary: `cargo test` builds them next to the test binaries; a filtered
/// run (`cargo test --test NAME`) does not, so it is built here then.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let path = profile_dir.join("examples").join(name);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--example", name, "--manifest-path"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", profile_dir.parent().unwrap())
            .status()
            .unwrap();
        assert!(status.success(), "cannot build the example {name}");
    }
    path
}

//! A Python interpreter with pinned grpcio and py-spiffe, for tests that run real Python
//! gRPC and SPIFFE clients.
//!
//! `KEYCARD_PYTHON` names one to use as is (`scripts/test.sh`, the README's test command,
//! sets it). Otherwise the first test that asks runs `scripts/py-venv.sh`, the one place
//! that makes the virtualenv with exactly the versions of `tests/requirements.txt` (in
//! `KEYCARD_PY_VENV`, default `/tmp/keycard-py-venv`, reused while they are unchanged). A
//! machine needs `python3` and access to PyPI; the tests fail, naming what is missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The interpreter to run Python clients with; see the module documentation.
pub fn grpcio_python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| match std::env::var_os("KEYCARD_PYTHON") {
        Some(python) => PathBuf::from(python),
        None => ensure_venv(),
    })
}

fn ensure_venv() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/py-venv.sh");
    let out = Command::new(&script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed (the Python interop tests need python3 with venv and access to PyPI):\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

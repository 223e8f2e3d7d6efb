//! A Python interpreter with a pinned grpcio and py-spiffe, for tests that run real Python
//! gRPC and SPIFFE clients.
//!
//! `KEYCARD_PYTHON` names one to use as is. Otherwise the first test that asks makes a
//! virtualenv (in `KEYCARD_PY_VENV`, default `/tmp/keycard-py-venv`) with `python3 -m venv`
//! and pip, once: later runs find the pinned versions there and reuse it. A lock file
//! keeps two test processes from building it at the same time. A machine needs `python3`
//! and access to PyPI; the tests fail, naming what is missing, when either is absent.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The grpcio release the tests pin (what py-spiffe builds on).
const GRPCIO_VERSION: &str = "1.85.1";
/// The protobuf release installed with it.
const PROTOBUF_VERSION: &str = "7.36.2";
/// The py-spiffe release the tests pin (PyPI package `spiffe`).
const PY_SPIFFE_VERSION: &str = "0.3.2";
/// The `cryptography` release installed with it: its strict DER parser is what refused
/// SVIDs with BasicConstraints `cA FALSE` spelled out.
const CRYPTOGRAPHY_VERSION: &str = "50.0.2";

/// The interpreter to run Python clients with; see the module documentation.
pub fn grpcio_python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| match std::env::var_os("KEYCARD_PYTHON") {
        Some(python) => PathBuf::from(python),
        None => ensure_venv(),
    })
}

/// Whether `python` has exactly the pinned grpcio, protobuf, py-spiffe and cryptography.
fn has_pinned_versions(python: &Path) -> bool {
    let check = format!(
        "import sys; from importlib.metadata import version as v; \
         sys.exit(v('grpcio') != '{GRPCIO_VERSION}' or v('protobuf') != '{PROTOBUF_VERSION}' \
         or v('spiffe') != '{PY_SPIFFE_VERSION}' or v('cryptography') != '{CRYPTOGRAPHY_VERSION}')"
    );
    Command::new(python).args(["-c", &check]).output().is_ok_and(|o| o.status.success())
}

fn ensure_venv() -> PathBuf {
    let venv = std::env::var_os("KEYCARD_PY_VENV")
        .map_or_else(|| PathBuf::from("/tmp/keycard-py-venv"), PathBuf::from);
    let python = venv.join("bin").join("python");
    if has_pinned_versions(&python) {
        return python;
    }
    let lock_path = venv.with_extension("lock");
    let lock = File::create(&lock_path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", lock_path.display()));
    lock.lock().unwrap_or_else(|e| panic!("cannot lock {}: {e}", lock_path.display()));
    // Another process may have finished the virtualenv while this one waited.
    if has_pinned_versions(&python) {
        return python;
    }
    let run = |cmd: &mut Command, what: &str| {
        let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
        assert!(
            out.status.success(),
            "{what} failed (the grpcio and py-spiffe tests need python3 with venv and access to PyPI):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv), "python3 -m venv");
    run(
        Command::new(venv.join("bin").join("pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("grpcio=={GRPCIO_VERSION}"))
            .arg(format!("protobuf=={PROTOBUF_VERSION}"))
            .arg(format!("spiffe=={PY_SPIFFE_VERSION}"))
            .arg(format!("cryptography=={CRYPTOGRAPHY_VERSION}")),
        "pip install grpcio spiffe",
    );
    assert!(has_pinned_versions(&python), "the new virtualenv lacks the pinned packages");
    python
}

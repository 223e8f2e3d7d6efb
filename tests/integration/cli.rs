//! The `keycard` binary itself, run as a user would run it.

use std::process::Command;

fn keycard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keycard"))
}

#[test]
fn check_id_accepts_valid_and_explains_invalid_ids() {
    let out = keycard().args(["check-id", "spiffe://example.org/web"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("ok      spiffe://example.org/web"), "{stdout}");

    let out = keycard()
        .args(["check-id", "spiffe://example.org/web", "spiffe://Example.org/web"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("trust domain must be lowercase"), "{stdout}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("1 of 2 SPIFFE IDs are invalid"), "{stderr}");
}

#[test]
fn no_arguments_prints_usage() {
    let out = keycard().output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8(out.stdout).unwrap().contains("Usage: keycard"));
}

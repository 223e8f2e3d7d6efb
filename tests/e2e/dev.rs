//! `keycard dev`, as a newcomer uses it: start, paste the printed fetch command, get an
//! SVID; Ctrl-C; start again on the same state.

use crate::support::{Dev, keycard};

#[test]
fn dev_mode_gives_the_calling_user_an_svid_and_reuses_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(&dir.path().join(".keycard-dev"));
    let fetch = dev
        .printed
        .iter()
        .find(|l| l.contains("api fetch x509 --socket"))
        .expect("dev prints a fetch command")
        .trim()
        .strip_prefix("cargo run --release -- ")
        .expect("the fetch command is a cargo run line")
        .to_owned();
    let args: Vec<&str> = fetch.split_whitespace().collect();
    let deadline = std::time::Instant::now() + crate::support::PATIENCE;
    let text = loop {
        let out = keycard().args(&args).output().unwrap();
        if out.status.success() {
            break String::from_utf8(out.stdout).unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "the printed fetch failed: {out:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let took = dev.started.elapsed();
    assert!(text.contains("SPIFFE ID:         spiffe://example.org/user/"), "{text}");
    println!("first SVID {took:.1?} after `keycard dev` started");
    let entries = dev.admin(&["entry", "show"]);
    assert_eq!(entries["entries"].as_array().map(Vec::len), Some(1), "{entries}");
    dev.stop();

    // Again, on the same state: same CA, same single entry, the agent's SVID reused.
    let dev = Dev::start(&dir.path().join(".keycard-dev"));
    let again = dev.api_until_ok(None, &["fetch", "x509"]);
    assert!(again.contains("spiffe://example.org/user/"), "{again}");
    let entries = dev.admin(&["entry", "show"]);
    assert_eq!(entries["entries"].as_array().map(Vec::len), Some(1), "{entries}");
    let agents = dev.admin(&["agent", "list"]);
    assert_eq!(agents["agents"].as_array().map(Vec::len), Some(1), "{agents}");
    dev.stop();
}

/// The printed `export KEYCARD_AGENT_ADMIN_SOCKET=...` makes `keycard agent explain` work
/// as pasted; an entry under a parent that does not exist yet is stored with a warning.
#[test]
fn dev_prints_the_agent_admin_socket_and_warns_about_missing_parents() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(&dir.path().join(".keycard-dev"));
    let export = dev
        .printed
        .iter()
        .find_map(|l| l.trim().strip_prefix("export KEYCARD_AGENT_ADMIN_SOCKET="))
        .expect("dev prints the agent admin socket")
        .to_owned();
    let pid = std::process::id().to_string();
    // The agent binds its admin socket a moment after dev prints its text.
    let deadline = std::time::Instant::now() + crate::support::PATIENCE;
    let out = loop {
        let out = keycard()
            .args(["agent", "explain", "--pid", &pid])
            .env("KEYCARD_AGENT_ADMIN_SOCKET", &export)
            .output()
            .unwrap();
        if out.status.success() || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains(&format!("Process {pid} has")), "{out:?}");

    let out = dev.admin_output(&[
        "entry",
        "create",
        "--parent-id",
        "spiffe://example.org/node/later",
        "--spiffe-id",
        "spiffe://example.org/early",
        "--selector",
        "unix:uid:4242",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{out:?}");
    assert!(stderr.contains("warning: no agent, join token or entry"), "{stderr}");
    assert!(stderr.contains("keycard token generate --spiffe-id"), "{stderr}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["parent_missing"], true, "{doc}");

    // A 16 KB DNS name: refused with a bounded message, not an h2 error blamed on the uid.
    let huge = "a".repeat(16 * 1024);
    let out = dev.admin_output(&[
        "entry",
        "create",
        "--parent-id",
        "spiffe://example.org/node/dev",
        "--spiffe-id",
        "spiffe://example.org/huge",
        "--selector",
        "unix:uid:4243",
        "--dns",
        &huge,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(stderr.contains("DNS name") && stderr.contains("(16386 bytes)"), "{stderr}");
    assert!(stderr.contains("InvalidArgument") && !stderr.contains("uid"), "{stderr}");
    assert!(stderr.len() < 2048, "{} bytes", stderr.len());

    if crate::support::is_root() {
        permission_refusals_are_named(&dev, dir.path(), &export, &pid);
    }
    dev.stop();
}

/// Another uid: refused by the file system (EACCES), or, with the directory opened up, by
/// the agent's peer-uid check (logged). Either way the CLI says permission was refused.
fn permission_refusals_are_named(dev: &Dev, root: &std::path::Path, socket: &str, pid: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    use std::os::unix::process::CommandExt as _;
    let explain_as_nobody = || {
        let out = keycard()
            .args(["agent", "explain", "--pid", pid, "--agent-admin-socket", socket])
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // Let nobody walk down to the agent's private directory (the temp dir itself is 0700).
    let private = dev.agent_admin_socket.parent().unwrap();
    for dir in private.ancestors().skip(1).take_while(|d| d.starts_with(root)) {
        let mode = std::fs::metadata(dir).unwrap().permissions().mode();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o711)).unwrap();
    }
    std::fs::set_permissions(private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let err = explain_as_nobody();
    assert!(err.contains("permission refused") && !err.contains("is the agent running"), "{err}");

    // Opened up by hand: the agent accepts, checks the uid, drops the connection, logs it.
    std::fs::set_permissions(private, std::fs::Permissions::from_mode(0o711)).unwrap();
    let sock = &dev.agent_admin_socket;
    std::fs::set_permissions(sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let err = explain_as_nobody();
    std::fs::set_permissions(private, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert!(err.contains("permission refused") && err.contains("closed the connection"), "{err}");
    let log = dev.log();
    assert!(log.contains("refused a connection from a uid that is not allowed"), "{log}");
}

/// `keycard dev` after the agent SVID is gone (expired after an hour off, or removed):
/// it evicts its agent and attests again with a fresh token, keeping the CA and entries.
#[test]
fn dev_recovers_an_agent_whose_svid_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join(".keycard-dev");
    let dev = Dev::start(&state);
    dev.api_until_ok(None, &["fetch", "x509"]);
    let bundle = std::fs::read_to_string(state.join("bundle.pem")).unwrap();
    dev.stop();

    // What an hour off does to the dev agent: no valid stored SVID, a known agent record.
    std::fs::remove_file(state.join("agent").join("agent_svid.pem")).unwrap();
    let dev = Dev::start(&state);
    let again = dev.api_until_ok(None, &["fetch", "x509"]);
    assert!(again.contains("spiffe://example.org/user/"), "{again}");
    let entries = dev.admin(&["entry", "show"]);
    assert_eq!(entries["entries"].as_array().map(Vec::len), Some(1), "{entries}");
    let agents = dev.admin(&["agent", "list"]);
    assert_eq!(agents["agents"].as_array().map(Vec::len), Some(1), "{agents}");
    let now = std::fs::read_to_string(state.join("bundle.pem")).unwrap();
    assert_eq!(now, bundle, "same CA");
    assert!(dev.log().contains("evicting it so that it attests again"), "{}", dev.log());
    dev.stop();
}

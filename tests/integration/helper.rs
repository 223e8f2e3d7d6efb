//! `keycard helper` against a real agent: the files it writes work with openssl (s_server
//! and s_client with each other, and s_client with the example mTLS service), after a
//! rotation it rewrites them and signals its child (even when the helper itself was
//! started with that signal ignored, as under `nohup`), and `keycard api fetch x509
//! --write` writes the same files. Every process a test starts is in a [`Group`] that is
//! killed when the test ends, pass or fail.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::agent::{FAST_ROTATION, PATIENCE, Setup};
use crate::examples::example;
use crate::procs::{Group, keycard};

/// `openssl s_client` to `port` presenting and trusting the helper's files in `dir`.
fn s_client_command(dir: &Path, port: u16) -> Command {
    let mut command = Command::new("openssl");
    command
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-verify_return_error"])
        .arg("-cert")
        .arg(dir.join("svid.pem"))
        .arg("-key")
        .arg(dir.join("svid_key.pem"))
        .arg("-CAfile")
        .arg(dir.join("svid_bundle.pem"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    command
}

/// `openssl s_client` that sends `input` and keeps the connection open until its output
/// shows `expected` (or [`PATIENCE`] runs out); returns the output so far.
fn s_client_until(dir: &Path, port: u16, input: &str, expected: &str) -> String {
    let mut group = Group::spawn(s_client_command(dir, port).stderr(Stdio::null()));
    let child = group.child();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut output = String::new();
    while !output.contains(expected) {
        match rx.recv_timeout(PATIENCE) {
            Ok(line) => output += &format!("{line}\n"),
            Err(_) => break,
        }
    }
    drop(stdin);
    drop(group);
    assert!(output.contains(expected), "no {expected:?} from the server:\n{output}");
    output
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `openssl s_client` with the helper's files; returns its output (stdin: `input`).
fn s_client(dir: &Path, port: u16, input: &str) -> String {
    let mut child = s_client_command(dir, port).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The file names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The bit of `signal` in a `/proc/PID/status` signal mask.
fn bit(signal: libc::c_int) -> u64 {
    1 << (signal - 1)
}

/// The `SigIgn` mask of process `pid`.
fn ignored_signals(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("SigIgn:")).unwrap();
    u64::from_str_radix(line["SigIgn:".len()..].trim(), 16).unwrap()
}

/// Starts a long-running helper the way `nohup` would, with SIGHUP and SIGUSR1 ignored,
/// with `--renew-signal signal` and a `sh` child that traps `trap` and notes each one in
/// `dir/signals`; waits until a rotation has both rewritten `dir/live/svid.pem` and been
/// signalled, then stops the helper with SIGTERM and checks that it exits cleanly.
fn helper_rewrites_and_signals(socket: &str, dir: &Path, signal: &str, trap: &str) {
    let live = dir.join("live");
    let signals = dir.join("signals");
    let script =
        format!("trap 'echo {trap} >> {}' {trap}; while :; do sleep 0.1; done", signals.display());
    // What nohup hands down: an ignored disposition survives exec.
    let mut command = Command::new("sh");
    command
        .args(["-c", "trap '' HUP USR1; exec \"$0\" \"$@\""])
        .arg(keycard().get_program())
        .args(["helper", "--socket", socket, "--renew-signal", signal, "--cmd", "sh"])
        .arg("--cert-dir")
        .arg(&live)
        .args(["--", "-c", &script])
        .stderr(Stdio::null());
    let mut helper = Group::spawn(&mut command);
    let deadline = Instant::now() + PATIENCE;
    let first = loop {
        if let Ok(pem) = std::fs::read(live.join("svid.pem")) {
            break pem;
        }
        assert!(Instant::now() < deadline, "the helper wrote nothing");
        std::thread::sleep(Duration::from_millis(50));
    };
    // The helper is running (it wrote): it inherited the ignored signals.
    let ignored = ignored_signals(helper.child().id());
    let both = bit(libc::SIGHUP) | bit(libc::SIGUSR1);
    assert_eq!(ignored & both, both, "the helper was not started with HUP and USR1 ignored");
    loop {
        let seen = std::fs::read_to_string(&signals).unwrap_or_default();
        let now = std::fs::read(live.join("svid.pem")).unwrap();
        if seen.lines().any(|l| l == trap) && now != first {
            break;
        }
        assert!(Instant::now() < deadline, "no rewrite + {signal} after a rotation ({seen:?})");
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = helper.terminate();
    assert!(status.success(), "the helper exited with {status}");
}

#[test]
fn helper_files_work_with_openssl_and_renewals_signal_the_child() {
    let setup = Setup::start_with("127.0.0.1:0", FAST_ROTATION);
    setup.entry("web");
    let agent = setup.agent("");
    let socket = format!("unix://{}", agent.socket.display());
    let dir = tempfile::tempdir().unwrap();
    let once = dir.path().join("once");
    let out = keycard()
        .args(["helper", "--once", "--socket", &socket, "--jwt-audience", "db", "--cert-dir"])
        .arg(&once)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode =
        |name: &str| std::fs::metadata(once.join(name)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("svid_key.pem"), 0o600);
    assert_eq!(mode("jwt_svid.db.token"), 0o600);
    assert_eq!(mode("svid.pem"), 0o644);

    // openssl s_server and s_client, given only these files, do mutual TLS.
    let port = free_port();
    let mut server = Group::spawn(
        Command::new("openssl")
            .args(["s_server", "-accept", &port.to_string(), "-naccept", "1", "-Verify", "1"])
            .args(["-verify_return_error", "-cert"])
            .arg(once.join("svid.pem"))
            .arg("-key")
            .arg(once.join("svid_key.pem"))
            .arg("-CAfile")
            .arg(once.join("svid_bundle.pem"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    // s_server prints ACCEPT once it listens (a probe connection would use up -naccept).
    let mut server_out = BufReader::new(server.child().stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("ACCEPT") {
        line.clear();
        assert!(server_out.read_line(&mut line).unwrap() > 0, "s_server stopped before ACCEPT");
    }
    let client = s_client(&once, port, "");
    assert!(client.contains("Verify return code: 0 (ok)"), "{client}");
    let mut served = String::new();
    std::io::Read::read_to_string(&mut server_out, &mut served).unwrap();
    let status = server.child().wait().unwrap();
    assert!(status.success(), "s_server: {status} {served}");

    // s_client with the helper's files against the example mTLS service.
    let port = free_port();
    let mut echo = Group::spawn(
        Command::new(example("mtls_echo_server"))
            .args([format!("127.0.0.1:{port}"), "example.org".into()])
            .env("SPIFFE_ENDPOINT_SOCKET", &socket)
            .stdout(Stdio::piped()),
    );
    let mut banner = String::new();
    BufReader::new(echo.child().stdout.as_mut().unwrap()).read_line(&mut banner).unwrap();
    assert!(banner.contains("listening"), "{banner}");
    let talk = s_client_until(&once, port, "hello\n", "spiffe://example.org/workload/web: hello");
    drop(echo);
    assert!(talk.contains("Verify return code: 0 (ok)"), "{talk}");

    // A long-running helper: after a rotation it rewrites the files and sends SIGHUP,
    // although it was itself started with SIGHUP ignored.
    helper_rewrites_and_signals(&socket, dir.path(), "SIGHUP", "HUP");
    agent.stop();
}

#[test]
fn a_helper_started_with_its_renew_signal_ignored_still_signals_its_child() {
    let setup = Setup::start_with("127.0.0.1:0", FAST_ROTATION);
    setup.entry("web");
    let agent = setup.agent("");
    let socket = format!("unix://{}", agent.socket.display());
    let dir = tempfile::tempdir().unwrap();
    helper_rewrites_and_signals(&socket, dir.path(), "SIGUSR1", "USR1");
    agent.stop();
}

#[test]
fn api_fetch_x509_write_and_the_helper_write_the_same_files() {
    let setup = Setup::start("127.0.0.1:0");
    setup.entry("web");
    let agent = setup.agent("");
    let socket = format!("unix://{}", agent.socket.display());
    let dir = tempfile::tempdir().unwrap();
    let (helper_dir, api_dir) = (dir.path().join("helper"), dir.path().join("api"));
    // The helper waits for the first SVID; after it, the agent has one for the CLI too.
    let out = keycard()
        .args(["helper", "--once", "--socket", &socket, "--cert-dir"])
        .arg(&helper_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = keycard()
        .args(["api", "fetch", "x509", "--socket", &socket, "--write"])
        .arg(&api_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let expected = ["svid.pem", "svid_bundle.pem", "svid_key.pem"];
    assert_eq!(names(&helper_dir), expected);
    assert_eq!(names(&api_dir), expected);
    use std::os::unix::fs::PermissionsExt as _;
    for name in expected {
        let mode = |dir: &Path| std::fs::metadata(dir.join(name)).unwrap().permissions().mode();
        assert_eq!(mode(&helper_dir), mode(&api_dir), "{name}");
    }
    assert_eq!(
        std::fs::read(helper_dir.join("svid_bundle.pem")).unwrap(),
        std::fs::read(api_dir.join("svid_bundle.pem")).unwrap()
    );
    // openssl accepts the CLI's chain against its bundle, as it does the helper's.
    let verify = Command::new("openssl")
        .args(["verify", "-purpose", "sslclient", "-CAfile"])
        .arg(api_dir.join("svid_bundle.pem"))
        .arg(api_dir.join("svid.pem"))
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");
    agent.stop();
}

//! `keycard helper` against a real agent: the files it writes work with openssl (s_server
//! and s_client with each other, and s_client with the example mTLS service), and after a
//! rotation it rewrites them and signals its child.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::agent::{FAST_ROTATION, PATIENCE, Setup};
use crate::examples::example;
use crate::procs::keycard;

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
        .arg(dir.join("bundle.pem"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    command
}

/// `openssl s_client` that sends `input` and keeps the connection open until its output
/// shows `expected` (or [`PATIENCE`] runs out); returns the output so far.
fn s_client_until(dir: &Path, port: u16, input: &str, expected: &str) -> String {
    let mut child = s_client_command(dir, port).stderr(Stdio::null()).spawn().unwrap();
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
    let _ = child.kill();
    let _ = child.wait();
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
    let mut server = Command::new("openssl")
        .args(["s_server", "-accept", &port.to_string(), "-naccept", "1", "-Verify", "1"])
        .args(["-verify_return_error", "-cert"])
        .arg(once.join("svid.pem"))
        .arg("-key")
        .arg(once.join("svid_key.pem"))
        .arg("-CAfile")
        .arg(once.join("bundle.pem"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // s_server prints ACCEPT once it listens (a probe connection would use up -naccept).
    let mut server_out = BufReader::new(server.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("ACCEPT") {
        line.clear();
        assert!(server_out.read_line(&mut line).unwrap() > 0, "s_server stopped before ACCEPT");
    }
    let client = s_client(&once, port, "");
    assert!(client.contains("Verify return code: 0 (ok)"), "{client}");
    let mut served = String::new();
    std::io::Read::read_to_string(&mut server_out, &mut served).unwrap();
    let status = server.wait().unwrap();
    assert!(status.success(), "s_server: {status} {served}");

    // s_client with the helper's files against the example mTLS service.
    let port = free_port();
    let mut echo = Command::new(example("mtls_echo_server"))
        .args([format!("127.0.0.1:{port}"), "example.org".into()])
        .env("SPIFFE_ENDPOINT_SOCKET", &socket)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    BufReader::new(echo.stdout.as_mut().unwrap()).read_line(&mut banner).unwrap();
    assert!(banner.contains("listening"), "{banner}");
    let talk = s_client_until(&once, port, "hello\n", "spiffe://example.org/workload/web: hello");
    let _ = echo.kill();
    let _ = echo.wait();
    assert!(talk.contains("Verify return code: 0 (ok)"), "{talk}");

    // A long-running helper: after a rotation it rewrites the files and sends SIGHUP.
    let live = dir.path().join("live");
    let signals = dir.path().join("signals");
    let script =
        format!("trap 'echo hup >> {}' HUP; while :; do sleep 0.1; done", signals.display());
    let mut helper = keycard()
        .args([
            "helper",
            "--socket",
            &socket,
            "--renew-signal",
            "SIGHUP",
            "--cmd",
            "sh",
            "--cert-dir",
        ])
        .arg(&live)
        .args(["--", "-c", &script])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    let first = loop {
        if let Ok(pem) = std::fs::read(live.join("svid.pem")) {
            break pem;
        }
        assert!(Instant::now() < deadline, "the helper wrote nothing");
        std::thread::sleep(Duration::from_millis(50));
    };
    loop {
        let hups = std::fs::read_to_string(&signals).unwrap_or_default();
        let now = std::fs::read(live.join("svid.pem")).unwrap();
        if hups.lines().count() >= 1 && now != first {
            break;
        }
        assert!(Instant::now() < deadline, "no rewrite + SIGHUP after a rotation ({hups:?})");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill").args(["-TERM", &helper.id().to_string()]).status();
    let status = helper.wait().unwrap();
    assert!(status.success(), "the helper exited with {status}");
    agent.stop();
}

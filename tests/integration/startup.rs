//! `keycard server run` when what it needs is taken (a port held by `keycard dev`, another
//! server's admin socket): it stops with one clear line, each cause printed once, and
//! creates nothing on disk. And the example mTLS client started before its server: one
//! line saying what to check, not a debug dump.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::examples::example;
use crate::procs::{Group, Server, keycard};

/// Runs `command` to its end (20 s at most; a server that did start is killed) and returns
/// its output.
fn run_to_end(command: &mut Command) -> Output {
    let mut group = Group::spawn(command.stdout(Stdio::piped()).stderr(Stdio::piped()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while group.child().try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the server started although its port was taken");
        std::thread::sleep(Duration::from_millis(50));
    }
    let child = group.child();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    std::io::Read::read_to_end(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    std::io::Read::read_to_end(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    Output { status: child.wait().unwrap(), stdout, stderr }
}

/// `keycard server run` with its state in `data_dir` and the given flags.
fn server_run(data_dir: &Path, flags: &[&str]) -> Output {
    run_to_end(
        keycard()
            .args(["server", "run", "--trust-domain", "example.org", "--data-dir"])
            .arg(data_dir)
            .args(flags),
    )
}

/// The `Error: ...` line of a failed run.
fn error_line(out: &Output) -> String {
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr.lines().find(|l| l.starts_with("Error: ")).unwrap_or_else(|| panic!("{stderr}")).into()
}

#[test]
fn a_server_whose_port_is_taken_says_so_once_and_creates_nothing() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();

    // The agent API port.
    let state = dir.path().join("state");
    let line = error_line(&server_run(&state, &["--bind-address", &taken]));
    assert!(line.contains(&format!("cannot listen on {taken}")), "{line}");
    assert!(line.contains("--bind-address"), "{line}");
    assert_eq!(line.matches("(os error 98)").count(), 1, "a cause printed twice: {line}");
    assert!(line.contains("Address already in use"), "{line}");
    assert!(!state.exists(), "a state directory was created: {line}");

    // The health port.
    let flags = ["--bind-address", "127.0.0.1:0", "--health-address", &taken];
    let line = error_line(&server_run(&state, &flags));
    assert!(line.contains(&taken), "{line}");
    assert_eq!(line.matches("(os error 98)").count(), 1, "a cause printed twice: {line}");
    assert!(!state.exists(), "a state directory was created: {line}");
}

#[test]
fn a_second_server_on_a_live_admin_socket_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let first = Server::start(&dir.path().join("first"));
    let second = dir.path().join("second");
    let socket = first.admin_socket.to_str().unwrap().to_owned();
    let flags = ["--bind-address", "127.0.0.1:0", "--admin-socket", &socket];
    let line = error_line(&server_run(&second, &flags));
    assert!(line.contains("another process is listening on the admin socket"), "{line}");
    assert!(line.contains(&socket), "{line}");
    assert!(!second.exists(), "a state directory was created: {line}");
    // The first server is untouched.
    assert!(first.admin_text(&["healthcheck"]).contains("healthy"));
    first.stop();
}

#[test]
fn the_example_client_says_when_its_server_is_not_up() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let address = format!("127.0.0.1:{port}");
    let out = run_to_end(
        Command::new(example("mtls_echo_client"))
            .args([&address, "example.org", "hello"])
            .env("SPIFFE_ENDPOINT_SOCKET", "unix:///nonexistent/agent.sock"),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!("mtls_echo_client: cannot connect to {address}: ")),
        "{stderr}"
    );
    assert!(stderr.contains("is mtls_echo_server running"), "{stderr}");
    assert!(!stderr.contains("Os {"), "a debug dump: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

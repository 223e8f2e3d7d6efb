//! Callers that change after they connected (issue 15, defect 3), with real processes: a
//! Python connector that relays the test's gRPC client onto its own connection to the
//! agent, so that the agent sees the connector as the caller. The connector then drops to
//! another uid and execs, execs another binary, or hands its connection to a process of
//! another uid over SCM_RIGHTS and exits.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tonic::Code;

use super::tests::{Setup, client, entry, jwt_request, with_header};
use super::*;

const NOBODY: u32 = 65534;

/// The connector. `exec AGENT FRONT`: connects to the agent, relays one client from FRONT
/// onto that connection; a line `UID INTERPRETER` on stdin makes it drop to UID (`-`:
/// keep) and exec INTERPRETER running this script in `relay` mode on the same two
/// sockets. `pass AGENT FRONT UID`: connects, forks a receiver that drops to UID, takes
/// the connection over SCM_RIGHTS and relays FRONT onto it; the connector waits on stdin.
const CONNECTOR: &str = r#"
import errno, os, select, socket, sys, time

def relay(a, b, control=False):
    watch = [a, b] + ([0] if control else [])
    while True:
        for s in select.select(watch, [], [])[0]:
            if isinstance(s, int):
                return os.read(0, 4096).decode()
            data = s.recv(65536)
            if not data:
                return None
            (b if s is a else a).sendall(data)

def front(path):
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    os.chmod(path, 0o777)
    listener.listen(1)
    print("ready", flush=True)
    return listener.accept()[0]

def drop(uid):
    os.setgroups([]); os.setgid(uid); os.setuid(uid)

mode = sys.argv[1]
if mode == "relay":
    a, b = (socket.socket(fileno=int(n)) for n in sys.argv[2:4])
    print("relaying", os.getuid(), flush=True)
    relay(a, b)
elif mode == "exec":
    a = socket.socket(socket.AF_UNIX); a.connect(sys.argv[2])
    b = front(sys.argv[3])
    line = relay(a, b, control=True)
    if line:
        uid, interpreter = line.split()
        if uid != "-":
            drop(int(uid))
        for s in (a, b):
            os.set_inheritable(s.fileno(), True)
        args = [interpreter, "-S", sys.argv[0], "relay", str(a.fileno()), str(b.fileno())]
        for _ in range(500):
            try:
                os.execv(interpreter, args)
            except OSError as e:
                if e.errno != errno.ETXTBSY:
                    raise
                time.sleep(0.01)
elif mode == "pass":
    here, there = socket.socketpair()
    a = socket.socket(socket.AF_UNIX); a.connect(sys.argv[2])
    if os.fork() == 0:
        here.close(); a.close()
        if os.getuid() == 0:
            drop(int(sys.argv[4]))
        conn = socket.socket(fileno=socket.recv_fds(there, 1, 1)[1][0])
        relay(conn, front(sys.argv[3]))
        os._exit(0)
    socket.send_fds(here, [b"x"], [a.fileno()])
    a.close()
    sys.stdin.read()
"#;

fn is_root() -> bool {
    // The owner of our own /proc entry is our effective uid.
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0
}

/// The connector process and everything it forks (one process group), killed on drop.
struct Connector {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    front: PathBuf,
}

impl Drop for Connector {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let group = format!("-{pid}");
            let _ = std::process::Command::new("kill").args(["-KILL", "--", &group]).status();
        }
    }
}

impl Connector {
    /// Starts the connector in `mode` against the agent of `s`; waits until it listens.
    async fn start(s: &Setup, mode: &str, extra: &[&str]) -> Self {
        let dir = s.dir.path().join(format!("front-{mode}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let script = dir.join("connector.py");
        std::fs::write(&script, CONNECTOR).unwrap();
        let front = dir.join("front.sock");
        let mut child = Command::new("/usr/bin/python3")
            .arg("-S")
            .arg(&script)
            .arg(mode)
            .arg(&s.socket)
            .arg(&front)
            .args(extra)
            .env("PYTHONHOME", "/usr")
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut c = Self { child, stdout, front };
        assert_eq!(c.line().await, "ready");
        c
    }

    async fn line(&mut self) -> String {
        let next = tokio::time::timeout(Duration::from_secs(20), self.stdout.next_line()).await;
        next.expect("the connector said nothing for 20 s").unwrap().expect("connector gone")
    }

    async fn say(&mut self, line: &str) {
        use tokio::io::AsyncWriteExt as _;
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        stdin.flush().await.unwrap();
    }

    /// Kills the connector itself (not what it forked) and waits until it is gone.
    async fn kill_connector(&mut self) {
        self.child.kill().await.unwrap();
    }
}

/// Awaits `f`, failing the test after 20 s (a stream that is never ended must not hang it).
async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f).await.expect("no answer within 20 s")
}

fn python_present() -> bool {
    let present = Path::new("/usr/bin/python3").exists();
    if !present {
        println!("note: /usr/bin/python3 is missing; connector tests skipped");
    }
    present
}

/// An agent with one entry for this test's uid and its SVID minted.
async fn agent() -> Setup {
    let mut s = Setup::start().await;
    let mine = s.my_selector();
    s.sync(vec![entry("e1", "spiffe://example.org/me", &mine)]);
    s.mint("e1");
    s
}

#[tokio::test]
async fn a_caller_that_drops_to_another_uid_and_execs_loses_its_identity() {
    if !python_present() {
        return;
    }
    if !is_root() {
        println!("note: not root, the connector cannot setuid; test skipped");
        return;
    }
    let s = agent().await;
    let mut conn = Connector::start(&s, "exec", &[]).await;
    let mut c = client(&conn.front).await;
    let mut stream = c.fetch_x509svid(with_header(X509svidRequest {})).await.unwrap().into_inner();
    assert_eq!(
        within(stream.message()).await.unwrap().unwrap().svids.len(),
        1,
        "root's SVID first"
    );

    conn.say(&format!("{NOBODY} /usr/bin/python3")).await;
    assert_eq!(conn.line().await, format!("relaying {NOBODY}"));
    // New calls on the same connection: root's identity is gone.
    let err = c.fetch_x509svid(with_header(X509svidRequest {})).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("effective uid"), "{err:?}");
    let err = c.fetch_jwtsvid(jwt_request(&["db"], "")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // The open stream gets no rotated key: it ends instead.
    s.mint("e1");
    let err = within(stream.message()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
}

#[tokio::test]
async fn a_caller_that_execs_another_binary_loses_its_identity() {
    if !python_present() {
        return;
    }
    let s = agent().await;
    let other = s.dir.path().join("other-python");
    std::fs::copy("/usr/bin/python3", &other).unwrap();
    let mut conn = Connector::start(&s, "exec", &[]).await;
    let mut c = client(&conn.front).await;
    assert!(c.fetch_x509svid(with_header(X509svidRequest {})).await.is_ok());

    conn.say(&format!("- {}", other.display())).await;
    assert!(conn.line().await.starts_with("relaying "));
    let err = c.fetch_x509svid(with_header(X509svidRequest {})).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("executable"), "{err:?}");
}

/// The connector hands its connection to a process of another uid and exits: the stream
/// it had open ends with PermissionDenied, and new calls are refused.
#[tokio::test]
async fn a_connection_passed_to_another_uid_dies_with_its_connector() {
    if !python_present() {
        return;
    }
    let s = agent().await;
    let mut conn = Connector::start(&s, "pass", &[&NOBODY.to_string()]).await;
    let mut c = client(&conn.front).await;
    let mut stream = c.fetch_x509svid(with_header(X509svidRequest {})).await.unwrap().into_inner();
    assert_eq!(within(stream.message()).await.unwrap().unwrap().svids.len(), 1);
    let mut bundles =
        c.fetch_x509_bundles(with_header(X509BundlesRequest {})).await.unwrap().into_inner();
    assert!(within(bundles.message()).await.unwrap().is_some());

    conn.kill_connector().await;
    let killed = std::time::Instant::now();
    // Without any update from the cache: the exit itself ends both streams, at once (the
    // periodic re-check would take RECHECK_INTERVAL).
    for err in
        [within(stream.message()).await.unwrap_err(), within(bundles.message()).await.unwrap_err()]
    {
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    }
    assert!(killed.elapsed() < RECHECK_INTERVAL / 2, "ended after {:?}", killed.elapsed());
    s.mint("e1");
    let err = c.fetch_x509svid(with_header(X509svidRequest {})).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = c.fetch_jwtsvid(jwt_request(&["db"], "")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
}

/// The connector exits before its connection's first request, when it is attested.
#[tokio::test]
async fn a_caller_that_exits_before_attestation_is_denied() {
    if !python_present() {
        return;
    }
    let s = agent().await;
    let mut conn = Connector::start(&s, "pass", &[&NOBODY.to_string()]).await;
    conn.kill_connector().await;
    let mut c = client(&conn.front).await;
    let err = c.fetch_x509svid(with_header(X509svidRequest {})).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("exited"), "{err:?}");
}

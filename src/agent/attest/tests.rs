//! Attestation over real Unix sockets with real processes: this test process, a Python
//! child that drops to another uid, and callers that exit (and whose PID is handed to
//! another process when the tests run as root) before attestation ends.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::net::{UnixListener, UnixStream};

use super::*;
use crate::selector::Selector;

const CONNECT_ENV: &str = "KEYCARD_ATTEST_TEST_CONNECT";
const NOBODY: u32 = 65534;

fn sel(value: &str) -> Selector {
    Selector::new("unix", value).unwrap()
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").unwrap().uid() == 0
}

fn values(set: &SelectorSet, prefix: &str) -> Vec<String> {
    set.iter().filter_map(|s| s.value().strip_prefix(prefix).map(str::to_owned)).collect()
}

fn kernel_has_peer_pidfd() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().unwrap().parse().unwrap();
    let minor: u32 = parts.next().unwrap().parse().unwrap();
    (major, minor) >= (6, 5)
}

/// A listening socket that other uids may connect to.
fn listener(dir: &Path) -> (UnixListener, PathBuf) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.join("api.sock");
    let l = UnixListener::bind(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
    (l, path)
}

async fn accept(l: &UnixListener) -> UnixStream {
    let (s, _) = tokio::time::timeout(Duration::from_secs(5), l.accept()).await.unwrap().unwrap();
    s
}

/// Not a test of its own: the body of the child processes of the PID-reuse test (this test
/// binary re-executed with `CONNECT_ENV` set). Connects, then waits for stdin to close.
#[test]
fn connector_child() {
    let Ok(path) = std::env::var(CONNECT_ENV) else { return };
    let _s = std::os::unix::net::UnixStream::connect(path).unwrap();
    let _ = std::io::stdin().read(&mut [0u8; 1]);
}

fn spawn_connector(path: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "agent::attest::tests::connector_child", "--test-threads=1", "-q"])
        .env(CONNECT_ENV, path)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn own_process_selectors_over_a_socket_pair() {
    let dir = tempfile::tempdir().unwrap();
    let (l, path) = listener(dir.path());
    let _client = UnixStream::connect(&path).await.unwrap();
    let server = accept(&l).await;
    // Debug test binaries can be larger than the default limit.
    let options = UnixAttestorOptions { sha256: true, max_binary_size: u64::MAX };
    let Attested { caller, selectors, .. } = attest(&server, &options).await.unwrap();

    let me = std::fs::metadata("/proc/self").unwrap();
    assert_eq!(caller.pid() as u32, std::process::id());
    assert_eq!((caller.uid(), caller.gid()), (me.uid(), me.gid()));
    assert_eq!(
        caller.start_time(),
        procfs::parse_stat(&std::fs::read_to_string("/proc/self/stat").unwrap())
            .unwrap()
            .start_time
    );
    if kernel_has_peer_pidfd() {
        assert!(caller.has_pidfd(), "kernel has SO_PEERPIDFD but no pidfd was taken");
    }
    assert!(caller.is_same_process().unwrap());

    assert!(selectors.iter().all(|s| s.kind() == "unix"));
    assert!(selectors.contains(&sel(&format!("uid:{}", me.uid()))));
    assert!(selectors.contains(&sel(&format!("gid:{}", me.gid()))));
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let user = procfs::name_for_id(&passwd, me.uid()).map(str::to_owned);
    assert_eq!(values(&selectors, "user:"), user.into_iter().collect::<Vec<_>>());

    let exe = std::env::current_exe().unwrap();
    assert_eq!(values(&selectors, "path:"), vec![exe.to_str().unwrap().to_owned()]);
    let digest = hex::encode(Sha256::digest(std::fs::read(&exe).unwrap()));
    assert_eq!(values(&selectors, "sha256:"), vec![digest]);

    let status = procfs::parse_status(&std::fs::read_to_string("/proc/self/status").unwrap());
    let mut groups: Vec<String> = status.unwrap().groups.iter().map(u32::to_string).collect();
    groups.sort();
    groups.dedup();
    let mut found = values(&selectors, "supplementary_gid:");
    found.sort();
    assert_eq!(found, groups);
}

#[test]
fn sha256_is_opt_in_and_size_limited() {
    let pid = std::process::id() as i32;
    let exe = std::env::current_exe().unwrap();
    let size = std::fs::metadata(&exe).unwrap().len();

    let plain = attest_pid(pid, &UnixAttestorOptions::default()).unwrap();
    assert!(values(&plain, "sha256:").is_empty());
    assert_eq!(values(&plain, "path:"), vec![exe.to_str().unwrap().to_owned()]);

    let small = UnixAttestorOptions { sha256: true, max_binary_size: size - 1 };
    let limited = attest_pid(pid, &small).unwrap();
    assert!(values(&limited, "sha256:").is_empty(), "hashed above the size limit");
    assert_eq!(limited, plain, "over the limit only the sha256 selector is left out");

    let exact = UnixAttestorOptions { sha256: true, max_binary_size: size };
    assert_eq!(values(&attest_pid(pid, &exact).unwrap(), "sha256:").len(), 1);
}

#[test]
fn unknown_pid_is_gone() {
    // PIDs above pid_max (at most 2^22) never exist.
    let err = attest_pid(1 << 23, &UnixAttestorOptions::default()).unwrap_err();
    assert!(matches!(err, AttestError::ProcessGone { .. }), "{err}");
    assert!(matches!(attest_pid(0, &Default::default()), Err(AttestError::ProcessGone { .. })));
}

/// Starts a copy of `sleep` at `path` (retrying while another test thread's fork still
/// holds the copy open for writing: `ETXTBSY`).
fn spawn_copy_of_sleep(path: &Path) -> Child {
    let sleep = ["/usr/bin/sleep", "/bin/sleep"].into_iter().find(|p| Path::new(p).exists());
    std::fs::copy(sleep.unwrap(), path).unwrap();
    for _ in 0..100 {
        match Command::new(path).arg("30").spawn() {
            Ok(child) => return child,
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => std::thread::yield_now(),
            Err(e) => panic!("{e}"),
        }
    }
    panic!("{} stays busy", path.display())
}

#[test]
fn deleted_executable_has_no_path_but_a_name_ending_in_deleted_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("worker");
    let odd = dir.path().join("worker (deleted)");
    let mut a = spawn_copy_of_sleep(&gone);
    let mut b = spawn_copy_of_sleep(&odd);
    std::fs::remove_file(&gone).unwrap();
    let options = UnixAttestorOptions { sha256: true, ..Default::default() };
    let of_gone = attest_pid(a.id() as i32, &options);
    let of_odd = attest_pid(b.id() as i32, &options);
    for c in [&mut a, &mut b] {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    let of_gone = of_gone.unwrap();
    assert!(values(&of_gone, "path:").is_empty(), "{of_gone}");
    // The deleted file is still hashed: it is read through /proc/<pid>/exe.
    assert_eq!(values(&of_gone, "sha256:").len(), 1, "{of_gone}");
    assert_eq!(values(&of_odd.unwrap(), "path:"), vec![odd.to_str().unwrap().to_owned()]);
}

/// A Python child that (as root) drops to uid/gid 65534 with supplementary groups, then
/// connects: its selectors are its own, not the agent's.
#[tokio::test]
async fn child_process_selectors_are_its_own() {
    let python = Path::new("/usr/bin/python3");
    if !python.exists() {
        eprintln!("SKIPPED: /usr/bin/python3 not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (l, path) = listener(dir.path());
    let script = "import os, socket, sys\n\
                  if os.getuid() == 0:\n    os.setgroups([4, 24, 100]); os.setgid(65534); \
                  os.setuid(65534)\n\
                  s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); sys.stdin.read()\n";
    let mut child = Command::new(python)
        .args(["-S", "-c", script])
        .arg(&path)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let server = accept(&l).await;
    let options = UnixAttestorOptions { sha256: true, ..Default::default() };
    let attested = attest(&server, &options).await.unwrap();
    child.kill().unwrap();
    child.wait().unwrap();

    let s = &attested.selectors;
    assert_eq!(attested.caller.pid() as u32, child.id());
    let real_python = std::fs::canonicalize(python).unwrap();
    assert_eq!(values(s, "path:"), vec![real_python.to_str().unwrap().to_owned()]);
    let digest = hex::encode(Sha256::digest(std::fs::read(&real_python).unwrap()));
    assert_eq!(values(s, "sha256:"), vec![digest]);
    if is_root() {
        assert!(s.contains(&sel("uid:65534")) && s.contains(&sel("gid:65534")), "{s}");
        assert!(!s.contains(&sel("uid:0")));
        let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
        for gid in [4, 24, 100] {
            assert!(s.contains(&sel(&format!("supplementary_gid:{gid}"))), "{s}");
            if let Some(name) = procfs::name_for_id(&group, gid) {
                assert!(s.contains(&sel(&format!("supplementary_group:{name}"))), "{s}");
            }
        }
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        if let Some(name) = procfs::name_for_id(&passwd, NOBODY) {
            assert!(s.contains(&sel(&format!("user:{name}"))), "{s}");
        }
    } else {
        eprintln!("not root: the child keeps our uid; checking path and hash only");
    }
}

/// Starts a process that tries to take over `pid`: as root, the kernel's next PID is set
/// to `pid` first (`ns_last_pid`), so the replacement usually gets exactly that PID.
fn spawn_replacement(pid: u32) -> Child {
    if is_root() {
        let _ = std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string());
    }
    Command::new("sleep").arg("30").stdout(Stdio::null()).spawn().unwrap()
}

/// Done-when of issue 5: a caller that exits, with another process taking its place before
/// attestation ends, gets no selectors, over 100 iterations. Four ways in turn: the caller
/// dies before `attest`; dies before `attest` and is replaced; dies after its pidfd and
/// start time are taken and is replaced while selectors are collected; the same without a
/// pidfd (the fallback for old kernels: the pinned `/proc/<pid>` directory must catch it,
/// since start times tick only every 10 ms and the replacement has the same uid).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_replaced_during_attestation_is_refused_100_times() {
    let dir = tempfile::tempdir().unwrap();
    let (l, path) = listener(dir.path());
    let options = UnixAttestorOptions::default();
    let mut reused = 0;
    for i in 0..100 {
        let mut child = spawn_connector(&path);
        let server = accept(&l).await;
        let pid = child.id();
        let variant = i % 4;
        let mut replacement = None;
        let outcome: Result<(), AttestError> = if variant < 2 {
            child.kill().unwrap();
            child.wait().unwrap();
            if variant == 1 {
                replacement = Some(spawn_replacement(pid));
            }
            attest(&server, &options).await.map(|a| panic!("iteration {i}: attested {a:?}"))
        } else {
            let mut caller = Caller::from_peer(Caller::peer_of(&server).unwrap()).unwrap();
            if variant == 3 {
                caller = caller.without_pidfd();
            }
            assert!(caller.is_same_process().unwrap(), "iteration {i}: live caller refused");
            child.kill().unwrap();
            child.wait().unwrap();
            replacement = Some(spawn_replacement(pid));
            // The selectors may describe the replacement; the re-check must refuse them.
            let _ = unix::collect(&caller, &[], &options);
            assert!(!caller.is_same_process().unwrap(), "iteration {i}: replaced caller kept");
            caller.ensure_same_process()
        };
        if let Some(mut r) = replacement {
            reused += usize::from(r.id() == pid);
            r.kill().unwrap();
            r.wait().unwrap();
        }
        match outcome {
            Err(AttestError::ProcessGone { .. } | AttestError::ProcessChanged { .. }) => {}
            other => panic!("iteration {i} (variant {variant}): {other:?}"),
        }
    }
    eprintln!("replacements that got the caller's exact PID: {reused} of 75");
    if is_root() {
        assert!(reused > 0, "as root some replacements should have taken the PID");
    }
}

/// Without `SO_PEERPIDFD` the pidfd comes from `pidfd_open(pid)`, which pins whoever has
/// the PID by then. When the connector (here: this process's uid) is gone and its PID went
/// to a process of another uid, the uid/gid cross-check with `SO_PEERCRED` refuses it, on
/// the first check and on every later one.
#[test]
fn a_fallback_pidfd_on_a_process_of_another_uid_is_refused() {
    use std::os::unix::process::CommandExt as _;
    if !is_root() {
        println!("note: not root, cannot start a process of another uid; skipped");
        return;
    }
    let mut other = Command::new("sleep").arg("30").uid(NOBODY).gid(NOBODY).spawn().unwrap();
    let pid = other.id() as i32;
    let pidfd = peer::pidfd_open(pid).unwrap();
    // What SO_PEERCRED said of the connector that had this PID: root.
    let claimed = peer::PeerIds { pid, uid: 0, gid: 0, pidfd };
    let outcome = Caller::from_peer(claimed);
    other.kill().unwrap();
    other.wait().unwrap();
    match outcome {
        Err(AttestError::ProcessChanged { what: "effective uid", .. }) => {}
        other => panic!("a process of another uid was taken for the caller: {other:?}"),
    }
}

/// A caller that changes its supplementary groups after attestation is refused: they are
/// part of its selectors.
#[tokio::test]
async fn a_caller_that_changes_its_groups_is_refused() {
    if !is_root() {
        println!("note: not root, the child cannot call setgroups; skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (l, path) = listener(dir.path());
    let script = "import os, socket, sys\n\
                  s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n\
                  sys.stdin.readline(); os.setgroups([4]); print('done', flush=True)\n\
                  sys.stdin.read()\n";
    let mut child = Command::new("/usr/bin/python3")
        .args(["-S", "-c", script])
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let server = accept(&l).await;
    let attested = attest(&server, &UnixAttestorOptions::default()).await;
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, b"go\n").unwrap();
    let mut line = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let after = attested.as_ref().map(|a| a.ensure_unchanged());
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(line, "done\n");
    match after.unwrap() {
        Err(AttestError::ProcessChanged { what: "supplementary groups", .. }) => {}
        other => panic!("a caller with new groups was kept: {other:?}"),
    }
}

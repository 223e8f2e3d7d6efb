//! How the README test runs shell blocks: process groups whose output is captured, the
//! namespaces they run in, and the `cargo` shim.

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Block, DAEMON_PATIENCE};
use crate::examples::example;
use crate::support::is_root;

/// Output collected from a process's stdout and stderr.
#[derive(Clone, Default)]
pub(super) struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    pub(super) fn follow(&self, mut from: impl std::io::Read + Send + 'static) {
        let sink = self.0.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
    }

    pub(super) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A process group the test started; SIGKILLed on drop unless it already ended.
pub(super) struct Group {
    pub(super) child: Child,
    pub(super) out: Captured,
    pub(super) what: String,
}

impl Group {
    pub(super) fn signal(&self, sig: i32) {
        // Safety: kill(2) on a process group this test created; no memory is touched.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(-(self.child.id() as i32), sig);
        }
    }

    /// Waits up to `limit` for the leader to exit.
    pub(super) fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Where and how blocks run.
pub(super) struct Runner {
    work: PathBuf,
    path_env: String,
    home: PathBuf,
    /// The namespace holder (root only): blocks enter its network and mount namespaces.
    holder: Option<Group>,
}

impl Runner {
    pub(super) fn new(base: &Path) -> Runner {
        let work = base.join("work");
        let home = base.join("home");
        let shims = base.join("bin");
        for dir in [&work, &home, &shims] {
            std::fs::create_dir_all(dir).unwrap();
        }
        copy_tree(&repo().join("certs-dev"), &work.join("certs-dev"));
        copy_tree(&repo().join("conf"), &work.join("conf"));
        write_cargo_shim(&shims.join("cargo"));
        let path_env = format!("{}:{}", shims.display(), std::env::var("PATH").unwrap_or_default());
        let mut runner = Runner { work, path_env, home, holder: None };
        if is_root() {
            let script = "ip link set lo up && mkdir -p /tmp/keycard-agent \
                 && mount -t tmpfs tmpfs /tmp/keycard-agent && echo ready && exec sleep 3600";
            let mut cmd = Command::new("unshare");
            cmd.args(["--net", "--mount", "--propagation", "private", "sh", "-c", script]);
            let mut holder = runner.spawn_group(cmd, "namespace holder");
            wait_for(&mut holder, "ready");
            runner.holder = Some(holder);
        } else {
            println!(
                "note: not root: README ports and the agent socket directory are the machine's own"
            );
        }
        runner
    }

    fn spawn_group(&self, mut cmd: Command, what: &str) -> Group {
        cmd.current_dir(&self.work)
            .env_clear()
            .env("PATH", &self.path_env)
            .env("HOME", &self.home)
            .env("TERM", "dumb")
            .env("KEYCARD_TEST_BIN", env!("CARGO_BIN_EXE_keycard"))
            .env("KEYCARD_TEST_EXAMPLES", example("mtls_echo_server").parent().unwrap())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
        let out = Captured::default();
        out.follow(child.stdout.take().unwrap());
        out.follow(child.stderr.take().unwrap());
        Group { child, out, what: what.to_owned() }
    }

    /// Starts `script` in a fresh shell, in the namespaces when there are some.
    pub(super) fn start(&self, block: &Block) -> Group {
        let what = format!("README.md:{} ({})", block.line, block.section);
        let cmd = match &self.holder {
            Some(h) => {
                let mut c = Command::new("nsenter");
                let wd = format!("--wd={}", self.work.display());
                c.args(["--target", &h.child.id().to_string(), "--net", "--mount", &wd, "--"]);
                c.args(["bash", "-ec", &block.script]);
                c
            }
            None => {
                let mut c = Command::new("bash");
                c.args(["-ec", &block.script]);
                c
            }
        };
        self.spawn_group(cmd, &what)
    }
}

pub(super) fn wait_for(group: &mut Group, text: &str) {
    let deadline = Instant::now() + DAEMON_PATIENCE;
    while !group.out.text().contains(text) {
        if let Some(status) = group.child.try_wait().unwrap() {
            panic!(
                "{} exited ({status}) before printing {text:?}:\n{}",
                group.what,
                group.out.text()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{} did not print {text:?} within {DAEMON_PATIENCE:?}:\n{}",
            group.what,
            group.out.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(super) fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(status.success(), "cp -a {} {}", from.display(), to.display());
}

/// `cargo run [-q] [--release] [--locked] [--example NAME] -- ARGS` runs the binary under
/// test, `cargo build ...` has nothing left to do; any other cargo command fails loudly
/// (mark such a block `skip`).
fn write_cargo_shim(path: &Path) {
    let shim = r#"#!/bin/sh
# The test built every binary already.
[ "$1" = build ] && exit 0
[ "$1" = run ] || { echo "README test: only 'cargo run' and 'cargo build' work here, not: cargo $*" >&2; exit 97; }
shift
bin="$KEYCARD_TEST_BIN"
while [ $# -gt 0 ]; do
  case "$1" in
    -q|--quiet|--release|--locked) shift ;;
    --example) bin="$KEYCARD_TEST_EXAMPLES/$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "README test: cargo run option $1 is not known to the shim" >&2; exit 97 ;;
  esac
done
exec "$bin" "$@"
"#;
    std::fs::write(path, shim).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

//! README.md, run as a new user would paste it: every ```sh block, in order, each in a
//! fresh `bash -e` (a new terminal: no variables carried over), all in one fresh working
//! directory.
//!
//! A block may be preceded by directives in HTML comments (invisible on GitHub):
//! - `<!-- readme-test: skip REASON -->`: not run (the test command itself, say).
//! - `<!-- readme-test: daemon NAME "TEXT" -->`: a long-running command (`keycard dev`);
//!   the next block starts once its output contains TEXT. It runs until a
//!   `<!-- readme-test: stop NAME -->` line (or the end of the README), then gets Ctrl-C
//!   (SIGINT) and must exit with status 0.
//! - `<!-- readme-test: expect "TEXT" -->` (repeatable): the block's output contains TEXT.
//! - `<!-- readme-test: exit N -->`: the block is meant to fail, with status N.
//!
//! Every other block must exit 0. Background jobs a block starts (`&`) are stopped at the
//! end of its section. `cargo run [--release] [--example NAME] -- ARGS` runs the binaries
//! this test was built with, through a `cargo` shim first in `PATH` (and `cargo build` is
//! a no-op). As root, everything runs in its own network and mount namespaces (a private
//! loopback, and a private `/tmp/keycard-agent` for the agent's default socket), so the
//! README's fixed ports and socket paths never meet a keycard running on the machine.

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::examples::example;
use crate::support::is_root;

/// How long one block may run.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a daemon may take to print its ready text, and to stop after Ctrl-C.
const DAEMON_PATIENCE: Duration = Duration::from_secs(60);

/// What the README asks of a block.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Run,
    Skip(String),
    /// A daemon's name and the text that says it is ready.
    Daemon(String, String),
}

/// What the README asks, in order.
#[derive(Debug, Clone)]
enum Step {
    Block(Block),
    /// Ctrl-C to the named daemon.
    Stop(String, usize),
}

/// One ```sh block and its directives.
#[derive(Debug, Clone)]
struct Block {
    /// Line number (1-based) of the opening fence.
    line: usize,
    /// The `##` section it belongs to.
    section: String,
    kind: Kind,
    expect: Vec<String>,
    /// The exit status the README means the block to end with.
    exit: i32,
    script: String,
}

fn quoted(rest: &str, line: usize) -> String {
    let rest = rest.trim();
    let inner = rest.strip_prefix('"').and_then(|r| r.strip_suffix('"'));
    inner.unwrap_or_else(|| panic!("README.md:{line}: expected a quoted text, got {rest:?}")).into()
}

fn parse(readme: &str) -> Vec<Step> {
    let mut blocks = Vec::new();
    let mut section = String::new();
    let (mut kind, mut expect, mut exit) = (Kind::Run, Vec::new(), 0);
    let mut lines = readme.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        if let Some(title) = line.strip_prefix("## ") {
            section = title.trim().to_owned();
        } else if let Some(d) = line.trim().strip_prefix("<!-- readme-test:") {
            let d = d.trim_end().strip_suffix("-->").unwrap_or(d).trim();
            if let Some(reason) = d.strip_prefix("skip") {
                kind = Kind::Skip(reason.trim().to_owned());
            } else if let Some(rest) = d.strip_prefix("daemon ") {
                let (name, text) = rest.trim().split_once(' ').unwrap_or((rest, ""));
                kind = Kind::Daemon(name.to_owned(), quoted(text, i + 1));
            } else if let Some(name) = d.strip_prefix("stop ") {
                blocks.push(Step::Stop(name.trim().to_owned(), i + 1));
            } else if let Some(code) = d.strip_prefix("exit ") {
                exit =
                    code.trim().parse().unwrap_or_else(|_| panic!("README.md:{}: exit N", i + 1));
            } else if let Some(text) = d.strip_prefix("expect") {
                expect.push(quoted(text, i + 1));
            } else {
                panic!("README.md:{}: unknown readme-test directive {d:?}", i + 1);
            }
        } else if line.trim_start().starts_with("```") {
            let is_sh = line.trim() == "```sh";
            let mut script = String::new();
            for (_, body) in lines.by_ref() {
                if body.trim_start().starts_with("```") {
                    break;
                }
                script.push_str(body);
                script.push('\n');
            }
            let (k, e) = (std::mem::replace(&mut kind, Kind::Run), std::mem::take(&mut expect));
            let x = std::mem::take(&mut exit);
            if is_sh {
                let (line, section) = (i + 1, section.clone());
                let block = Block { line, section, kind: k, expect: e, exit: x, script };
                blocks.push(Step::Block(block));
            } else {
                assert!(
                    k == Kind::Run && e.is_empty() && x == 0,
                    "README.md:{}: readme-test directives on a block that is not ```sh",
                    i + 1
                );
            }
        }
    }
    blocks
}

/// Output collected from a process's stdout and stderr.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn follow(&self, mut from: impl std::io::Read + Send + 'static) {
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

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A process group the test started; SIGKILLed on drop unless it already ended.
struct Group {
    child: Child,
    out: Captured,
    what: String,
}

impl Group {
    fn signal(&self, sig: i32) {
        // Safety: kill(2) on a process group this test created; no memory is touched.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(-(self.child.id() as i32), sig);
        }
    }

    /// Waits up to `limit` for the leader to exit.
    fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
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
struct Runner {
    work: PathBuf,
    path_env: String,
    home: PathBuf,
    /// The namespace holder (root only): blocks enter its network and mount namespaces.
    holder: Option<Group>,
}

impl Runner {
    fn new(base: &Path) -> Runner {
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
    fn start(&self, block: &Block) -> Group {
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

fn wait_for(group: &mut Group, text: &str) {
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

fn repo() -> PathBuf {
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

fn check_expectations(block: &Block, output: &str) {
    for text in &block.expect {
        assert!(
            output.contains(text.as_str()),
            "README.md:{}: the output lacks {text:?}; it was:\n{output}",
            block.line
        );
    }
}

/// Ctrl-C to a daemon, which must then exit with status 0.
fn stop(block: &Block, mut group: Group) {
    group.signal(libc::SIGINT);
    let status = group.wait(DAEMON_PATIENCE).unwrap_or_else(|| {
        panic!("README.md:{}: still running {DAEMON_PATIENCE:?} after Ctrl-C", block.line)
    });
    assert!(
        status.success(),
        "README.md:{}: exited with {status} after Ctrl-C:\n{}",
        block.line,
        group.out.text()
    );
}

fn run_block(runner: &Runner, block: &Block) -> Group {
    let mut group = runner.start(block);
    let status = group.wait(BLOCK_TIMEOUT);
    // Give the readers a moment to drain what the block printed last.
    std::thread::sleep(Duration::from_millis(100));
    let output = group.out.text();
    let status = status.unwrap_or_else(|| {
        panic!("README.md:{}: still running after {BLOCK_TIMEOUT:?}:\n{output}", block.line)
    });
    assert_eq!(
        status.code(),
        Some(block.exit),
        "README.md:{}: exited with {status}:\n{}\n--- output:\n{output}",
        block.line,
        block.script
    );
    check_expectations(block, &output);
    group
}

#[test]
fn every_readme_block_runs_as_pasted() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let steps = parse(&readme);
    assert!(steps.len() > 10, "README.md has only {} sh blocks?", steps.len());
    let base = tempfile::Builder::new().prefix("readme-").tempdir_in(env!("CARGO_TARGET_TMPDIR"));
    let base = base.unwrap();
    let runner = Runner::new(base.path());
    let mut daemons: Vec<(String, Block, Group)> = Vec::new();
    // Background jobs (`&`) of the current section's blocks.
    let mut jobs: Vec<Group> = Vec::new();
    let mut section = String::new();
    let mut ran = 0;
    for step in &steps {
        let block = match step {
            Step::Stop(name, line) => {
                let at = daemons.iter().position(|(n, _, _)| n == name);
                let at = at.unwrap_or_else(|| panic!("README.md:{line}: no daemon {name:?} runs"));
                let (_, block, group) = daemons.remove(at);
                stop(&block, group);
                continue;
            }
            Step::Block(block) => block,
        };
        if block.section != section {
            jobs.clear();
            section = block.section.clone();
        }
        match &block.kind {
            Kind::Skip(reason) => {
                assert!(!reason.is_empty(), "README.md:{}: say why it is skipped", block.line);
                println!("README.md:{}: skipped ({reason})", block.line);
            }
            Kind::Daemon(name, ready) => {
                let mut group = runner.start(block);
                wait_for(&mut group, ready);
                check_expectations(block, &group.out.text());
                daemons.push((name.clone(), block.clone(), group));
                println!("README.md:{}: {name} is up", block.line);
                ran += 1;
            }
            Kind::Run => {
                jobs.push(run_block(&runner, block));
                println!("README.md:{}: ok", block.line);
                ran += 1;
            }
        }
    }
    jobs.clear();
    for (_, block, group) in daemons.drain(..).rev() {
        stop(&block, group);
    }
    println!("{ran} README blocks ran");
}

#[test]
fn directives_parse() {
    let text = "## A\n<!-- readme-test: daemon dev \"up now\" -->\n```sh\nx\n```\n```\nart\n```\n\
                ## B\n<!-- readme-test: expect \"hi\" -->\n<!-- readme-test: expect \"yo\" -->\n\
                ```sh\necho hi yo\n```\n<!-- readme-test: stop dev -->\n\
                <!-- readme-test: skip recursion -->\n```sh\ncargo test\n```\n";
    let blocks: Vec<Block> = parse(text)
        .into_iter()
        .filter_map(|s| match s {
            Step::Block(b) => Some(b),
            Step::Stop(name, line) => {
                assert_eq!((name.as_str(), line), ("dev", 15));
                None
            }
        })
        .collect();
    assert_eq!(blocks.len(), 3);
    assert_eq!(blocks[0].kind, Kind::Daemon("dev".into(), "up now".into()));
    assert_eq!(blocks[0].section, "A");
    assert_eq!(blocks[1].expect, vec!["hi".to_owned(), "yo".to_owned()]);
    assert_eq!(blocks[1].section, "B");
    assert_eq!(blocks[2].kind, Kind::Skip("recursion".into()));
}

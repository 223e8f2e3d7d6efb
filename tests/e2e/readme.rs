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

use std::time::Duration;

mod shell;

use shell::{Group, Runner, repo, wait_for};

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

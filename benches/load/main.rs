//! keycard's load binary: every scenario of the performance targets, against real server
//! and agent processes (and in-process baselines), printed as one table.
//!
//! Run with `cargo bench --bench load` (add `-- --quick` for a short smoke run,
//! `-- --only <group>` for one group, `-- --markdown FILE` to write the table to a file).
//! The group `inproc` measures in this process (targets 1, 2, 5 and 8: CA signing, a
//! 500-CSR batch over the agent API, the renewal storm and its plot, mTLS handshakes);
//! the groups on real processes are `fetch` (target 3), `fleet` (targets 4 and 6 at 10,000
//! entries), `scale` (targets 4 and 7 at 100,000 entries) and `dev` (target 9).
//!
//! The daemons are the `keycard` binary Cargo builds for this bench in the same profile
//! (`CARGO_BIN_EXE_keycard`, set for benches as for integration tests): `cargo bench`
//! builds it in release mode first, so the figures are always of the code the bench was
//! built from.

mod cgroup_cpu;
mod cluster;
mod dev;
mod fetch;
mod fleet;
mod inproc;
mod meters;
mod raw_api;
mod scale;
mod table;

/// Real `keycard server run` / `keycard agent run` processes, shared with the integration
/// tests (started, waited for by their log, killed on drop).
#[path = "../../tests/integration/procs.rs"]
#[allow(dead_code)]
mod procs;

/// `keycard dev` as a process, shared with the end-to-end tests.
#[path = "../../tests/e2e/support.rs"]
#[allow(dead_code)]
mod support;

use std::time::Instant;

/// What the command line asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// Small counts, for a smoke run under a minute.
    pub quick: bool,
    /// Run only this group.
    pub only: Option<String>,
    /// Also write the table to this file.
    pub markdown: Option<std::path::PathBuf>,
}

impl Options {
    fn parse() -> Options {
        let mut options = Options { quick: false, only: None, markdown: None };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => options.quick = true,
                "--only" => options.only = Some(args.next().expect("--only needs a group name")),
                "--markdown" => {
                    options.markdown = Some(args.next().expect("--markdown needs a file").into());
                }
                // `cargo bench` passes `--bench`; anything else is a mistake worth reporting.
                "--bench" => {}
                other => panic!(
                    "unknown argument {other:?}: use --quick, --only <{}>, --markdown FILE",
                    GROUPS.join("|")
                ),
            }
        }
        if let Some(only) = &options.only {
            assert!(GROUPS.contains(&only.as_str()), "no group {only:?}: one of {GROUPS:?}");
        }
        options
    }

    /// Whether the group `name` runs.
    pub fn runs(&self, name: &str) -> bool {
        self.only.as_deref().is_none_or(|only| only == name)
    }

    /// `full` in a full run, `quick` with `--quick`.
    pub fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick { quick } else { full }
    }
}

/// The groups `--only` accepts.
const GROUPS: [&str; 5] = ["inproc", "fetch", "fleet", "scale", "dev"];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(raw_api::RAW_SERVER_ARG) {
        let (Some(socket), Some(dir)) = (args.get(2), args.get(3)) else {
            panic!("usage: {} SOCKET DIR", raw_api::RAW_SERVER_ARG);
        };
        return raw_api::serve_process(socket.as_ref(), dir.as_ref());
    }
    let options = Options::parse();
    let started = Instant::now();
    let mut rows: Vec<table::Row> = Vec::new();
    if options.runs("inproc") {
        rows.extend(inproc::rows(options.quick));
    }
    if options.runs("fetch") {
        rows.extend(fetch::run(&options));
    }
    if options.runs("fleet") {
        rows.extend(fleet::run(&options));
    }
    if options.runs("scale") {
        rows.extend(scale::run(&options));
    }
    if options.runs("dev") {
        rows.extend(dev::run(&options));
    }
    let text = table::render(&rows);
    print!("{text}");
    eprintln!("load: {} rows in {:.0?}", rows.len(), started.elapsed());
    if let Some(path) = &options.markdown
        && let Err(e) = std::fs::write(path, &text)
    {
        panic!("cannot write the table to {}: {e}", path.display());
    }
}

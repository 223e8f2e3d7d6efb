//! Targets 7 and 4 at 100,000 entries: how long a new agent takes to hold every entry,
//! its RSS with every SVID cached (before and after a fetch storm), and what an idle sync
//! round costs: bytes between agent and server (counted by a relay, [`WireMeter`]) and
//! CPU time on each side (each process in a cgroup of its own, or `/proc/PID/stat` ticks).

use std::time::{Duration, Instant};

use crate::Options;
use crate::cgroup_cpu::CpuMeter;
use crate::cluster::{Cluster, RunningAgent, entries};
use crate::fleet::{FILL_RATE, memory_rows};
use crate::meters;
use crate::meters::WireMeter;
use crate::table::{Goal, Row};

/// The agent's sync interval here: short, so that idle rounds come often.
const SYNC_INTERVAL_SECONDS: u64 = 1;

fn absolute(what: String, keycard: f64, unit: &str, at_most: f64) -> Row {
    Row {
        what,
        keycard,
        baseline: None,
        baseline_name: "-".to_owned(),
        unit: unit.to_owned(),
        goal: Goal::Absolute { at_most },
    }
}

/// Good sync rounds so far.
fn rounds(agent: &RunningAgent) -> f64 {
    agent.metric("sync_rounds_total{result=\"ok\"}").expect("scale: no sync round count")
}

/// How long the agent is held stopped to measure the server's own background: under the
/// server's HTTP/2 keepalive timeout, so the connection outlives the pause.
const BACKGROUND_WINDOW: Duration = Duration::from_secs(8);

/// CPU seconds of `pid` so far: from its cgroup when it has one, else `/proc` ticks.
fn cpu(meter: &Option<CpuMeter>, pid: u32) -> f64 {
    meter.as_ref().map_or_else(|| meters::cpu_seconds(pid), CpuMeter::seconds)
}

/// The idle-sync rows: the agent holds everything and nothing changes for `time`. CPU is
/// that of each whole process, to the microsecond when the bench may give each a cgroup
/// ([`CpuMeter`]). The server's is also given less its own background: its CPU in the
/// same run while the agent is held stopped (`SIGSTOP`), so no round reaches it.
fn idle_rows(
    cluster: &Cluster,
    agent: &RunningAgent,
    meter: &WireMeter,
    n: usize,
    time: Duration,
) -> Vec<Row> {
    let server = cluster.server_pid();
    let cpu_meters = [CpuMeter::attach(agent.pid, "agent"), CpuMeter::attach(server, "server")];
    let how = if cpu_meters.iter().all(Option::is_some) { "cgroup" } else { "/proc ticks" };
    let rounds_before = rounds(agent);
    let wire_before = meter.bytes();
    let cpu_before = [cpu(&cpu_meters[0], agent.pid), cpu(&cpu_meters[1], server)];
    std::thread::sleep(time);
    let wire_after = meter.bytes();
    let cpu_after = [cpu(&cpu_meters[0], agent.pid), cpu(&cpu_meters[1], server)];
    let count = rounds(agent) - rounds_before;
    assert!(count >= 1.0, "scale: no sync round in {time:?} of idling");
    let per_round = |before: f64, after: f64| (after - before).max(0.0) / count;
    eprintln!("idle: {count} rounds in {time:?}, CPU from {how}");
    let mut rows = vec![
        absolute(
            format!("idle sync, {n} entries: bytes on the wire per round"),
            per_round(wire_before as f64, wire_after as f64),
            "B",
            1024.0,
        ),
        absolute(
            format!("idle sync, {n} entries: agent CPU per round (whole process)"),
            per_round(cpu_before[0], cpu_after[0]) * 1e3,
            "ms",
            1.0,
        ),
        absolute(
            format!("idle sync, {n} entries: server CPU per round (whole process)"),
            per_round(cpu_before[1], cpu_after[1]) * 1e3,
            "ms",
            1.0,
        ),
    ];
    if cpu_meters[1].is_some() {
        // SAFETY: kill takes integers; the agent is our child and is resumed below.
        unsafe { libc::kill(agent.pid as i32, libc::SIGSTOP) };
        let start = cpu(&cpu_meters[1], server);
        std::thread::sleep(BACKGROUND_WINDOW);
        let background = cpu(&cpu_meters[1], server) - start;
        // SAFETY: as above.
        unsafe { libc::kill(agent.pid as i32, libc::SIGCONT) };
        let scale = time.as_secs_f64() / BACKGROUND_WINDOW.as_secs_f64();
        let total = cpu_after[1] - cpu_before[1];
        eprintln!(
            "idle: server background {:.2} ms/s with the agent stopped",
            background * 1e3 / BACKGROUND_WINDOW.as_secs_f64()
        );
        rows.push(absolute(
            format!(
                "idle sync, {n} entries: server CPU per round, less its background (same \
                 window with the agent stopped)"
            ),
            (total - background * scale).max(0.0) / count * 1e3,
            "ms",
            1.0,
        ));
    }
    rows
}

/// Targets 7 and 4 (100,000 SVIDs).
pub fn run(options: &Options) -> Vec<Row> {
    let n = options.pick(100_000, 1_000);
    let mine = options.pick(1_000, 100);
    // Fewer than at 10,000 entries (where the 10,000-fetch figure is held): a run
    // must fit in 10 minutes, and the first measurement of the leak took 2,000.
    let storm = options.pick(2_000, 200);
    let cluster = Cluster::start(FILL_RATE);
    let started = Instant::now();
    cluster.register(&entries(n, mine, cluster.uid, "scale"));
    eprintln!("scale: {n} entries registered in {:.1?}", started.elapsed());

    let meter = WireMeter::start(&cluster.server().address);
    let config = format!("sync_interval = \"{SYNC_INTERVAL_SECONDS}s\"\n");
    let agent = cluster.agent_via(&config, &meter.address);
    let limit = Duration::from_secs(options.pick(120, 30));
    let (synced, note) = match agent.wait_for("cache_entries", n, limit) {
        Ok(took) => (took.as_secs_f64(), String::new()),
        Err(last) => (limit.as_secs_f64(), format!(" (stopped waiting: {last} of {n})")),
    };
    let mut rows =
        vec![absolute(format!("{n} entries reach a new agent{note}"), synced, "s", 60.0)];
    let fill = Duration::from_secs(options.pick(600, 60));
    agent.must_reach("cache_svids", n, fill, "scale: filling the cache");
    eprintln!("scale: {n} SVIDs cached {:.1?} after the agent started", agent.spawned.elapsed());
    let budget = Duration::from_secs(options.pick(90, 20));
    rows.extend(memory_rows(&agent, n, mine, storm, budget, 400.0));
    // A minute: CPU time comes in 10 ms ticks, so 60 rounds resolve 0.17 ms per round.
    let idle = Duration::from_secs(options.pick(60, 3) * SYNC_INTERVAL_SECONDS);
    rows.extend(idle_rows(&cluster, &agent, &meter, n, idle));
    agent.agent.stop();
    rows
}

//! Targets 4 and 6 at 10,000 entries: the agent's RSS with every SVID cached, before and
//! after a fetch storm; then agent restarts, timed from spawn until the cache holds every
//! SVID again (`keycard_agent_cache_svids`): with an empty cache at the server's default
//! signing rate, and with `disk_cache = true`.

use std::time::{Duration, Instant};

use crate::Options;
use crate::cluster::{Cluster, RunningAgent, entries};
use crate::fetch;
use crate::table::{Goal, Row};

/// Signing rate while the bench fills a cache it is not timing (the server's maximum is
/// far higher than a run needs).
pub const FILL_RATE: u32 = 100_000;
/// The server's default signing rate, which the timed restarts run at.
const DEFAULT_RATE: u32 = 500;
/// An agent over this RSS stops a storm early: the machine is shared.
const STORM_RSS_CEILING_MIB: f64 = 3072.0;

/// The RSS rows of target 4 for an agent holding `n` SVIDs: before, after `storm` fetches
/// by one caller holding `mine` of them (fewer if `budget` runs out first: the rows say how
/// many), and after / before.
pub fn memory_rows(
    agent: &RunningAgent,
    n: usize,
    mine: usize,
    storm: usize,
    budget: Duration,
    bound: f64,
) -> Vec<Row> {
    // Let the last publish and its allocations settle.
    std::thread::sleep(Duration::from_secs(1));
    let before = agent.rss_mib();
    let socket = agent.agent.socket.clone();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let started = Instant::now();
    let done = runtime.block_on(async {
        let mut client = fetch::connect(&socket).await;
        for i in 0..storm {
            fetch::x509_first_message(&mut client).await;
            if started.elapsed() > budget {
                eprintln!("storm stopped after {} fetches: {budget:?} spent", i + 1);
                return i + 1;
            }
            if i % 250 == 249 && agent.rss_mib() > STORM_RSS_CEILING_MIB {
                eprintln!("storm stopped after {} fetches: agent RSS over the ceiling", i + 1);
                return i + 1;
            }
        }
        storm
    });
    drop(runtime);
    eprintln!("storm: {done} fetches of {mine} SVIDs in {:.1?}", started.elapsed());
    std::thread::sleep(Duration::from_secs(1));
    let after = agent.rss_mib();
    let mib = |what: String, keycard: f64, baseline: Option<f64>, goal: Goal| Row {
        what,
        keycard,
        baseline,
        baseline_name: if baseline.is_some() { "before the storm" } else { "-" }.to_owned(),
        unit: "MiB".to_owned(),
        goal,
    };
    let storm_text = format!("{done} fetches by a caller holding {mine}");
    vec![
        mib(
            format!("agent RSS, {n} cached SVIDs"),
            before,
            None,
            Goal::Absolute { at_most: bound },
        ),
        mib(
            format!("agent RSS, {n} cached SVIDs, after {storm_text}"),
            after,
            None,
            Goal::Absolute { at_most: bound },
        ),
        mib(format!("agent RSS growth over {storm_text}"), after, Some(before), Goal::AtMost(1.1)),
    ]
}

/// A restart row: `spawned` until the cache held `n` SVIDs, or `limit` if it never did.
fn restart_row(what: &str, agent: &RunningAgent, n: usize, limit: Duration, bound: f64) -> Row {
    let (figure, note) = match agent.wait_for("cache_svids", n, limit) {
        Ok(took) => (took.as_secs_f64(), String::new()),
        Err(last) => (limit.as_secs_f64(), format!(" (stopped waiting: {last} of {n} cached)")),
    };
    Row {
        what: format!("{what}, {n} entries: all SVIDs cached{note}"),
        keycard: figure,
        baseline: None,
        baseline_name: "-".to_owned(),
        unit: "s".to_owned(),
        goal: Goal::Absolute { at_most: bound },
    }
}

/// Targets 4 (10,000 SVIDs) and 6.
pub fn run(options: &Options) -> Vec<Row> {
    let n = options.pick(10_000, 1_000);
    let mine = options.pick(1_000, 100);
    let storm = options.pick(10_000, 200);
    let fill = Duration::from_secs(options.pick(180, 60));
    let mut cluster = Cluster::start(FILL_RATE);
    cluster.register(&entries(n, mine, cluster.uid, "fleet"));
    let agent = cluster.agent("");
    agent.must_reach("cache_svids", n, fill, "fleet: first fill");
    let budget = Duration::from_secs(options.pick(150, 20));
    let mut rows = memory_rows(&agent, n, mine, storm, budget, 40.0);
    agent.agent.stop();

    // An empty cache, the server at its default rate.
    cluster.restart_server(DEFAULT_RATE);
    let agent = cluster.agent("");
    let limit = Duration::from_secs(options.pick(60, 30));
    rows.push(restart_row("agent restart, empty cache", &agent, n, limit, 30.0));
    agent.agent.stop();

    // A disk cache, filled untimed, then a timed restart on it.
    cluster.restart_server(FILL_RATE);
    let agent = cluster.agent("disk_cache = true\n");
    agent.must_reach("cache_svids", n, fill, "fleet: filling the disk cache");
    cluster.wait_for_disk_cache("fleet: filling the disk cache");
    agent.agent.stop();
    cluster.restart_server(DEFAULT_RATE);
    let agent = cluster.agent("disk_cache = true\n");
    let limit = Duration::from_secs(options.pick(30, 15));
    rows.push(restart_row("agent restart, disk cache", &agent, n, limit, 2.0));
    agent.agent.stop();
    rows
}

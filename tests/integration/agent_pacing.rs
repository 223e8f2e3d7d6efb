//! Bulk issuance at the server's signing rate with real processes (issue 17, target 6): a
//! new agent (an empty cache) for many entries gets every SVID in one paced round instead
//! of failed rounds and backoff.
//!
//! The defaults (2,000 entries at `svids_per_second_per_agent = 200`) keep the test short;
//! `KEYCARD_PACING_ENTRIES` and `KEYCARD_PACING_RATE` set others, and the time until every
//! SVID is in the cache is printed (a figure, not an assertion). The measurement of target
//! 6 (10,000 entries at the default rate, release build):
//!
//! ```text
//! KEYCARD_PACING_ENTRIES=10000 KEYCARD_PACING_RATE=500 cargo test --release \
//!     --test integration agent_pacing -- --nocapture
//! ```

use std::os::unix::fs::MetadataExt as _;
use std::time::{Duration, Instant};

use crate::procs::{Agent, Server, metrics};

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The value of the sample `name` (with its labels), 0 when it was never set.
fn metric(text: &str, name: &str) -> u64 {
    crate::procs::metric(text, name).unwrap_or(0)
}

#[test]
fn a_new_agent_gets_every_svid_at_the_servers_rate_in_paced_rounds_that_do_not_fail() {
    let entries = setting("KEYCARD_PACING_ENTRIES", 2000);
    let rate = setting("KEYCARD_PACING_RATE", 200);
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "trust_domain = \"example.org\"\nca_ttl = \"24h\"\ndefault_x509_svid_ttl = \"1h\"\n\
         svids_per_second_per_agent = {rate}\n"
    );
    let server = Server::start_with(&dir.path().join("server"), "127.0.0.1:0", Some(&config));
    let uid = std::fs::metadata(dir.path()).unwrap().uid();
    let list: Vec<serde_json::Value> = (0..entries)
        .map(|i| {
            serde_json::json!({
                "spiffe_id": format!("spiffe://example.org/workload/{i}"),
                "parent_id": "spiffe://example.org/node/1",
                "selectors": [format!("unix:uid:{uid}")],
            })
        })
        .collect();
    let file = dir.path().join("entries.json");
    std::fs::write(&file, serde_json::to_vec(&list).unwrap()).unwrap();
    server.admin(&["entry", "create", "--file", file.to_str().unwrap()]);
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, server.admin_text(&["bundle", "show", "--format", "pem"])).unwrap();
    let token = server.token("node/1");
    let agent_config = dir.path().join("agent.toml");
    std::fs::write(&agent_config, "sync_interval = \"1s\"\nhealth_address = \"127.0.0.1:0\"\n")
        .unwrap();

    let started = Instant::now();
    let agent = Agent::start(
        dir.path(),
        &server.address,
        &[
            "--config",
            agent_config.to_str().unwrap(),
            "--trust-bundle",
            bundle.to_str().unwrap(),
            "--join-token",
            &token,
        ],
        true,
    );
    let address = agent.health.clone().unwrap();
    // A bound so that a broken agent fails the test instead of hanging it: ten times what
    // the rate allows, plus start-up.
    let give_up = Duration::from_secs(10 * entries / rate + 60);
    let text = loop {
        let text = metrics(&address);
        if metric(&text, "keycard_agent_cache_svids") == entries {
            break text;
        }
        assert!(started.elapsed() < give_up, "not every SVID after {give_up:?}:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "{entries} entries at {rate} SVIDs/s per agent: every SVID in the cache {:.1} s after \
         the agent started",
        started.elapsed().as_secs_f64()
    );

    // The server paced the agent, and no round failed for it: no item counted as failed,
    // no failed round, and the whole set came in a few rounds (the first ones may find the
    // server's entry cache not refreshed yet).
    let svids = |outcome: &str| {
        metric(&text, &format!("keycard_agent_svids_total{{outcome=\"{outcome}\"}}"))
    };
    let rounds = |result: &str| {
        metric(&text, &format!("keycard_agent_sync_rounds_total{{result=\"{result}\"}}"))
    };
    assert!(svids("rate_limited") > 0, "the server never paced the agent:\n{text}");
    assert_eq!((svids("issued"), svids("failed")), (entries, 0), "{text}");
    assert_eq!(rounds("error"), 0, "{text}");
    assert!(rounds("ok") <= 5, "{} rounds:\n{text}", rounds("ok"));
    agent.stop();
    server.stop();
}

//! The Workload API connection caps of a real `keycard agent run`, set in its config file
//! (issue 15, defect 4): connections over the per-uid cap are closed at once and counted,
//! and the places come back when the holder lets go.

use std::io::Read as _;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::agent::{PATIENCE, Setup};
use crate::procs::{keycard, metric, metrics};

const REFUSED: &str = "keycard_agent_workload_api_connections_refused_total{reason=\"uid_limit\"}";

#[test]
fn a_real_agent_closes_connections_over_its_per_uid_cap_and_frees_them_on_close() {
    let setup = Setup::start("127.0.0.1:0");
    setup.entry("a");
    let agent = setup.agent(
        "health_address = \"127.0.0.1:0\"\n[workload_api]\nmax_connections = 100\n\
         max_connections_per_uid = 20\nfirst_request_timeout = \"60s\"\n",
    );
    let address = agent.health.clone().unwrap();
    let held: Vec<UnixStream> =
        (0..25).map(|_| UnixStream::connect(&agent.socket).unwrap()).collect();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = metrics(&address);
        if metric(&text, REFUSED) == Some(5) {
            break;
        }
        assert!(Instant::now() < deadline, "no 5 refusals counted:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Accepted in the order they connected: the last five were closed unserved.
    for mut refused in &held[20..] {
        refused.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(refused.read(&mut buf).unwrap(), 0, "an over-cap connection got data");
    }

    // Once this uid lets go, its caller is served again.
    drop(held);
    let socket = format!("unix://{}", agent.socket.display());
    let deadline = Instant::now() + PATIENCE;
    loop {
        let out = keycard().args(["api", "fetch", "x509", "--socket", &socket]).output().unwrap();
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "never served again: {out:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

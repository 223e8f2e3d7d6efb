//! Target 9: `keycard dev` in a fresh directory, from spawn until this process (the user
//! dev registers an entry for) gets its first X.509-SVID over the Workload API socket,
//! asked for every 5 ms by a thread started before the spawn. The median of a few runs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keycard_workload_api::proto::{SECURITY_HEADER, SECURITY_HEADER_VALUE, X509svidRequest};

use crate::Options;
use crate::support::Dev;
use crate::table::{Goal, Row};

/// How long a run may take before the scenario gives up.
const PATIENCE: Duration = Duration::from_secs(30);

/// One FetchX509SVID attempt: whether it brought an SVID.
async fn got_svid(socket: &Path) -> bool {
    let Ok(channel) = keycard_workload_api::client::unix_channel(socket).await else {
        return false;
    };
    let mut client = keycard_workload_api::proto::SpiffeWorkloadApiClient::new(channel);
    let mut request = tonic::Request::new(X509svidRequest {});
    request.metadata_mut().insert(SECURITY_HEADER, SECURITY_HEADER_VALUE.parse().unwrap());
    let Ok(answer) = client.fetch_x509svid(request).await else { return false };
    matches!(answer.into_inner().message().await, Ok(Some(m)) if !m.svids.is_empty())
}

/// Asks `socket` until it serves an SVID; the instant it first did, `None` after [`PATIENCE`].
fn poll_first_svid(socket: PathBuf) -> Option<Instant> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
    let deadline = Instant::now() + PATIENCE;
    runtime.block_on(async {
        while Instant::now() < deadline {
            if socket.exists() && got_svid(&socket).await {
                return Some(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    })
}

/// Target 9's row.
pub fn run(options: &Options) -> Vec<Row> {
    let runs = options.pick(3, 1);
    let mut times = Vec::new();
    for _ in 0..runs {
        let dir = tempfile::tempdir().expect("a temp dir");
        let state = dir.path().join(".keycard-dev");
        let socket = state.join("agent.sock");
        let poller = std::thread::spawn(move || poll_first_svid(socket));
        let dev = Dev::start(&state);
        let first = poller.join().expect("the poller thread");
        let first = first.unwrap_or_else(|| {
            panic!("dev: no SVID within {PATIENCE:?} of `keycard dev`; log:\n{}", dev.log())
        });
        times.push(first.duration_since(dev.started).as_secs_f64());
        dev.stop();
    }
    times.sort_by(f64::total_cmp);
    eprintln!("dev: start to first SVID {times:?} s");
    vec![Row {
        what: format!("`keycard dev` start to first SVID (median of {runs})"),
        keycard: times[times.len() / 2],
        baseline: None,
        baseline_name: "-".to_owned(),
        unit: "s".to_owned(),
        goal: Goal::Absolute { at_most: 1.0 },
    }]
}

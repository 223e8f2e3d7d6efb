//! A stopping Workload API does not wait forever for a client that never answers the
//! HTTP/2 shutdown: after [`SHUTDOWN_GRACE`] it stops anyway, so one local user cannot
//! keep the agent from exiting (or restarting) by holding a connection open.

use std::io::Write as _;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::*;
use crate::clock::SystemClock;

#[tokio::test]
async fn a_client_that_never_answers_the_shutdown_does_not_hold_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let cache = Arc::new(SvidCache::new(Arc::new(SystemClock)));
    // No first-request deadline within the test: only the grace may end the connection.
    let limits =
        ConnectionLimits { first_request_timeout: Duration::from_secs(600), ..Default::default() };
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(serve_with_limits(
        listener,
        cache,
        UnixAttestorOptions::default(),
        limits,
        Arc::new(AgentMetrics::new()),
        None,
        async move {
            let _ = stopped.await;
        },
    ));

    // An HTTP/2 client that says hello, then never reads again: it never sees the GOAWAY
    // and never answers the PING of a graceful shutdown.
    let mut mute = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    mute.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let asked = Instant::now();
    stop.send(()).unwrap();
    let stopped = tokio::time::timeout(SHUTDOWN_GRACE * 3, serving).await;
    let took = asked.elapsed();
    assert!(stopped.expect("the Workload API never stopped").unwrap().is_ok());
    assert!(took >= SHUTDOWN_GRACE.saturating_sub(Duration::from_millis(100)), "{took:?}");
    drop(mute);
}

//! The response streams of FetchX509SVID, FetchX509Bundles and FetchJWTBundles: the first
//! message is rendered by the request's handler, right after its caller check, and goes
//! out as the stream's first item; the stream then follows the caller's subscription
//! itself, as tonic polls it: no task of its own and no channel between it and the
//! connection, so the first message costs no hand-off, and a stream the client drops
//! (hyper drops its body when the client resets or leaves) frees its subscription at once.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::StreamExt as _;
use tokio::sync::watch;
use tokio::time::{Interval, interval_at};
use tokio_stream::Stream;
use tonic::Status;

use super::connection::CallerState;
use super::{RECHECK_INTERVAL, attestation_status, attested_of, no_identity};
use crate::agent::attest::AttestError;
use crate::agent::cache::{Snapshot, Subscription};

/// A streaming response of the Workload API.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// What a stream follows after its first message.
struct Following<T, F> {
    state: Arc<CallerState>,
    updates: Subscription,
    /// The snapshot of the last message sent.
    last: Snapshot,
    same: fn(&Snapshot, &Snapshot) -> bool,
    render: F,
    recheck: Interval,
    stop: watch::Receiver<bool>,
    _message: std::marker::PhantomData<fn() -> T>,
}

impl<T, F> Following<T, F>
where
    F: Fn(&Snapshot) -> Result<T, Status>,
{
    /// Waits for the next message: a change that alters what the caller sees (sent after
    /// re-checking the caller), or the reason the stream ends (sent last).
    async fn next(&mut self) -> Result<T, Status> {
        let attested = attested_of(&self.state)?;
        loop {
            tokio::select! {
                changed = self.updates.changed() => if changed.is_err() {
                    return Err(Status::unavailable("the agent is shutting down"));
                },
                () = attested.caller.exited() => {
                    let pid = attested.caller.pid();
                    return Err(attestation_status(&AttestError::ProcessGone { pid }));
                }
                _ = self.recheck.tick() => {
                    self.state.recheck().await?;
                    continue;
                }
                // The guard `wait_for` returns must not be held across an await.
                _ = async { self.stop.wait_for(|s| *s).await.map(|_| ()) } => {
                    return Err(Status::unavailable("the agent is shutting down"));
                }
            }
            let snapshot = self.updates.borrow_and_update().clone();
            if snapshot.svids.is_empty() {
                return Err(no_identity(attested));
            }
            if (self.same)(&self.last, &snapshot) {
                continue;
            }
            let message = (self.render)(&snapshot)?;
            // Never send keys to a process that is no longer the attested one.
            self.state.recheck().await?;
            self.last = snapshot;
            return Ok(message);
        }
    }
}

/// The stream of `first` (rendered from `last`, on the handler's caller check), then of
/// `render(snapshot)` after every change that alters what it shows (`same` says when two
/// snapshots render alike), each after re-checking the caller. It ends after an error,
/// when the caller loses its last SVID, exits or changes (also checked every
/// [`RECHECK_INTERVAL`]), or when `stop` turns true. It holds its caller set's shared
/// snapshot, never a copy.
pub(super) fn follow<T, F>(
    first: T,
    state: Arc<CallerState>,
    updates: Subscription,
    last: Snapshot,
    same: fn(&Snapshot, &Snapshot) -> bool,
    render: F,
    stop: watch::Receiver<bool>,
) -> ResponseStream<T>
where
    T: Send + 'static,
    F: Fn(&Snapshot) -> Result<T, Status> + Send + 'static,
{
    let start = tokio::time::Instant::now() + RECHECK_INTERVAL;
    let following = Following {
        state,
        updates,
        last,
        same,
        render,
        recheck: interval_at(start, RECHECK_INTERVAL),
        stop,
        _message: std::marker::PhantomData,
    };
    let rest = futures_util::stream::unfold(Some(following), |following| async move {
        let mut following = following?;
        match following.next().await {
            Ok(message) => Some((Ok(message), Some(following))),
            // The last item: the stream ends after it (the subscription goes with it).
            Err(status) => Some((Err(status), None)),
        }
    });
    Box::pin(futures_util::stream::once(async move { Ok(first) }).chain(rest))
}

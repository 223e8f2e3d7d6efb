//! The graceful-shutdown signal shared by both daemons.
//!
//! One [`Shutdown`] is made at start-up (usually by [`on_signals`]) and a clone handed to
//! every task that must stop cleanly: listeners stop accepting, streams end, background
//! loops return. Any clone can [`Shutdown::trigger`] it (a fatal error in one task stops
//! them all); every [`Shutdown::wait`] then completes, including waits that start later.

use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// A cloneable "stop now" signal; once triggered it stays triggered.
#[derive(Debug, Clone)]
pub struct Shutdown {
    /// `true` once triggered. Holding the sender in every clone keeps the channel open, so
    /// waiters only ever wake because of a trigger.
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A signal that has not been triggered.
    pub fn new() -> Self {
        Self { tx: Arc::new(watch::Sender::new(false)) }
    }

    /// Asks every holder to stop. Calling it again does nothing.
    pub fn trigger(&self) {
        self.tx.send_if_modified(|stopped| !std::mem::replace(stopped, true));
    }

    /// Whether [`Shutdown::trigger`] has been called.
    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }

    /// Completes once the signal is triggered (at once if it already was). The future does
    /// not borrow `self`, so it can be handed to servers' graceful-shutdown hooks.
    pub fn wait(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.tx.subscribe();
        async move {
            // The sender lives as long as any clone of this handle; if every clone is gone
            // nobody can trigger any more, which we treat as a shutdown too.
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    }
}

/// A [`Shutdown`] that is triggered by SIGINT or SIGTERM. Must be called inside a tokio
/// runtime; fails only if the signal handlers cannot be installed.
pub fn on_signals() -> std::io::Result<Shutdown> {
    let shutdown = Shutdown::new();
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let handle = shutdown.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
            () = handle.wait() => return,
        };
        // Trigger first: nothing, not even a failing log write, may stand in the way.
        handle.trigger();
        tracing::info!(signal = name, "shutting down");
    });
    Ok(shutdown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn trigger_wakes_every_waiter() {
        let shutdown = Shutdown::new();
        assert!(!shutdown.is_triggered());
        let mut waiters = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let wait = shutdown.clone().wait();
            waiters.spawn(wait);
        }
        // None may finish before the trigger.
        tokio::task::yield_now().await;
        assert!(waiters.try_join_next().is_none());
        shutdown.clone().trigger();
        let mut woken = 0;
        while let Some(r) = waiters.join_next().await {
            r.unwrap();
            woken += 1;
        }
        assert_eq!(woken, 8);
        assert!(shutdown.is_triggered());
    }

    #[tokio::test]
    async fn late_waiters_and_repeated_triggers() {
        let shutdown = Shutdown::new();
        shutdown.trigger();
        shutdown.trigger();
        shutdown.wait().await;
        shutdown.clone().wait().await;
    }

    #[tokio::test]
    async fn pending_until_triggered() {
        let shutdown = Shutdown::new();
        let wait = shutdown.wait();
        tokio::pin!(wait);
        assert!(futures_poll_once(wait.as_mut()).await.is_none());
        shutdown.trigger();
        wait.await;
    }

    /// Polls a future once, returning its output if it was ready.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            out = f => Some(out),
            () = std::future::ready(()) => None,
        }
    }

    #[tokio::test]
    async fn sigterm_triggers_on_signals() {
        let shutdown = on_signals().unwrap();
        // The handler is installed before on_signals returns, so SIGTERM cannot kill us.
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        shutdown.wait().await;
        assert!(shutdown.is_triggered());
    }
}

//! The connections of the PostgreSQL store, and how a synchronous call runs on them.
//!
//! The store owns a small tokio runtime of its own (two threads) that holds every
//! connection. A call hands its async work to that runtime and waits for the answer on a
//! plain channel, which is fine on any thread: a server thread, a test, or a worker of the
//! server's own runtime (which must not `block_on` a runtime of its own, as the sync
//! `postgres` crate does). Every call is bounded: the connection attempt by
//! [`Limits::connect`], the whole call by [`Limits::call`] (PostgreSQL itself is told the
//! same through `statement_timeout` and `lock_timeout`), so a dead or stuck database gives
//! an error quickly, never a hang.
//!
//! Up to [`Limits::connections`] connections are kept. One that broke, or whose call was
//! cut off by the deadline, is dropped; the next call that needs one opens a new one.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::Runtime;
use tokio::sync::Semaphore;
use tokio_postgres::{Client, Config, IsolationLevel, NoTls, Transaction};

use super::{DataStoreError, pg_error};

/// A boxed future that may move between threads: what a call's work is.
pub(super) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How long things may take, and how many connections to keep.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Opening one connection (TCP connect and the start-up exchange).
    pub connect: Duration,
    /// One whole call, waiting for a free connection included.
    pub call: Duration,
    /// Connections kept open at most.
    pub connections: usize,
}

impl Default for Limits {
    /// Five seconds a call, like SQLite's busy timeout; four connections.
    fn default() -> Self {
        Self { connect: Duration::from_secs(5), call: Duration::from_secs(5), connections: 4 }
    }
}

/// The runtime and the connections; see the module documentation.
pub(super) struct Pool {
    /// `None` only while dropping (a runtime cannot be dropped inside another runtime's
    /// worker; [`Drop`] shuts it down in the background instead).
    runtime: Option<Runtime>,
    shared: Arc<Shared>,
}

/// What the calls running on the store's runtime share.
struct Shared {
    config: Config,
    /// The URL without its password, for error messages.
    shown: String,
    limits: Limits,
    /// Open connections not in use.
    idle: Mutex<Vec<Client>>,
    /// One permit per connection that may be in use: a call beyond that waits.
    permits: Semaphore,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("url", &self.shared.shown)
            .field("limits", &self.shared.limits)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool for `config` (no connection is opened yet); `shown` names the database in
    /// errors.
    pub(super) fn new(
        mut config: Config,
        shown: String,
        limits: Limits,
    ) -> Result<Self, DataStoreError> {
        let ms = limits.call.as_millis();
        // The server stops a statement (or a wait for a lock) that outlives the call, so
        // that an abandoned call does not keep holding locks.
        let options = format!(
            "{} -c statement_timeout={ms} -c lock_timeout={ms} \
             -c idle_in_transaction_session_timeout={ms}",
            config.get_options().unwrap_or_default()
        );
        config.options(options.trim_start()).connect_timeout(limits.connect);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("keycard-postgres")
            .enable_all()
            .build()
            .map_err(|e| {
                DataStoreError::Backend(format!("starting the PostgreSQL client threads: {e}"))
            })?;
        let shared = Shared {
            config,
            shown,
            limits,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(limits.connections.max(1)),
        };
        Ok(Self { runtime: Some(runtime), shared: Arc::new(shared) })
    }

    /// The URL without its password.
    pub(super) fn shown(&self) -> &str {
        &self.shared.shown
    }

    /// Runs `f` on a connection of the pool and waits for its result, at most the call
    /// limit.
    pub(super) fn call<T, F>(&self, f: F) -> Result<T, DataStoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut Client) -> BoxFuture<'c, Result<T, DataStoreError>>
            + Send
            + 'static,
    {
        self.call_noting_reuse(f).0
    }

    /// [`Self::call`], and whether it failed on a pooled connection that turned out to be
    /// closed.
    fn call_noting_reuse<T, F>(&self, f: F) -> (Result<T, DataStoreError>, bool)
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut Client) -> BoxFuture<'c, Result<T, DataStoreError>>
            + Send
            + 'static,
    {
        let Some(runtime) = &self.runtime else {
            return (Err(DataStoreError::Backend("the PostgreSQL store is closed".into())), false);
        };
        let shared = self.shared.clone();
        let limit = shared.limits.call;
        let (send, receive) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let result = match tokio::time::timeout(limit, shared.run(f)).await {
                Ok(result) => result,
                Err(_) => (Err(shared.too_slow()), false),
            };
            // The caller may have given up already; then nobody needs the answer.
            let _ = send.send(result);
        });
        // The task answers within `limit`; the margin covers a runtime that is slow to
        // schedule it, so that even then the caller is not held forever.
        receive
            .recv_timeout(limit + Duration::from_secs(1))
            .unwrap_or_else(|_| (Err(self.shared.too_slow()), false))
    }

    /// Runs `f` in one read-write transaction, committed only when `f` succeeds.
    pub(super) fn write<T, F>(&self, f: F) -> Result<T, DataStoreError>
    where
        T: Send + 'static,
        F: for<'t> FnOnce(&'t Transaction<'t>) -> BoxFuture<'t, Result<T, DataStoreError>>
            + Send
            + 'static,
    {
        self.call(move |client| {
            Box::pin(async move {
                let tx = client.transaction().await.map_err(pg_error)?;
                let value = f(&tx).await?;
                tx.commit().await.map_err(pg_error)?;
                Ok(value)
            })
        })
    }

    /// Runs `f` in one read-only transaction that sees a single snapshot. A read that
    /// fails because the connection it reused turned out to be closed (the server
    /// restarted, or ended it) is run once more on a new connection: it changed nothing.
    pub(super) fn read<T, F>(&self, f: F) -> Result<T, DataStoreError>
    where
        T: Send + 'static,
        F: for<'t> FnOnce(&'t Transaction<'t>) -> BoxFuture<'t, Result<T, DataStoreError>>
            + Clone
            + Send
            + 'static,
    {
        let again = f.clone();
        match self.call_noting_reuse(read_only(f)) {
            (Err(e), true) => {
                tracing::debug!(error = %e, "a pooled PostgreSQL connection was closed; reading again");
                self.call(read_only(again))
            }
            (result, _) => result,
        }
    }
}

/// `f` in a read-only, repeatable-read transaction.
fn read_only<T, F>(
    f: F,
) -> impl for<'c> FnOnce(&'c mut Client) -> BoxFuture<'c, Result<T, DataStoreError>> + Send + 'static
where
    T: Send + 'static,
    F: for<'t> FnOnce(&'t Transaction<'t>) -> BoxFuture<'t, Result<T, DataStoreError>>
        + Send
        + 'static,
{
    move |client| {
        Box::pin(async move {
            let tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(pg_error)?;
            let value = f(&tx).await?;
            tx.commit().await.map_err(pg_error)?;
            Ok(value)
        })
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// How [`pg_error`] begins the message of an error that ends the connection.
const FATAL: &str = "PostgreSQL: FATAL:";

impl Shared {
    fn too_slow(&self) -> DataStoreError {
        DataStoreError::Backend(format!(
            "PostgreSQL at {} did not answer within {:?}; check that it runs and is not \
             overloaded",
            self.shown, self.limits.call
        ))
    }

    /// Takes a connection (an idle one, or a new one), runs `f` on it, and keeps the
    /// connection for the next call if it still works. Also says whether `f` failed on an
    /// idle connection that turned out to be closed.
    async fn run<T, F>(&self, f: F) -> (Result<T, DataStoreError>, bool)
    where
        F: for<'c> FnOnce(&'c mut Client) -> BoxFuture<'c, Result<T, DataStoreError>>,
    {
        let Ok(_permit) = self.permits.acquire().await else {
            return (Err(DataStoreError::Backend("the PostgreSQL store is closed".into())), false);
        };
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let (mut client, reused) = match idle {
            Some(client) if !client.is_closed() => (client, true),
            _ => match self.connect().await {
                Ok(client) => (client, false),
                Err(e) => return (Err(e), false),
            },
        };
        let result = f(&mut client).await;
        // The server ended the connection: it is closed, or it is closing with a FATAL
        // error (an administrator's command, a shutdown) that arrives before the close.
        let ended = client.is_closed()
            || matches!(&result, Err(DataStoreError::Backend(m)) if m.starts_with(FATAL));
        let reused_closed = reused && result.is_err() && ended;
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if ended {
            // What closed this connection (a server restart, an operator ending backends)
            // has most likely closed the idle ones too: drop them all, so that the next
            // call connects afresh instead of failing on each of them in turn.
            idle.clear();
        } else {
            idle.push(client);
        }
        (result, reused_closed)
    }

    async fn connect(&self) -> Result<Client, DataStoreError> {
        let cannot = |detail: String| {
            DataStoreError::Backend(format!(
                "cannot connect to PostgreSQL at {}: {detail}; check that it runs, that the \
                 URL names the right host, port, user and database, and that the user may log in",
                self.shown
            ))
        };
        let connecting = self.config.connect(NoTls);
        let (client, connection) = match tokio::time::timeout(self.limits.connect, connecting).await
        {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Err(cannot(describe(&e))),
            Err(_) => return Err(cannot(format!("no answer within {:?}", self.limits.connect))),
        };
        let shown = self.shown.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(url = %shown, error = %describe(&e), "PostgreSQL connection lost");
            }
        });
        Ok(client)
    }
}

/// A PostgreSQL error in one line: the server's message when it sent one, with its detail.
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{}: {} ({detail})", db.severity(), db.message()),
            None => format!("{}: {}", db.severity(), db.message()),
        },
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
    }
}

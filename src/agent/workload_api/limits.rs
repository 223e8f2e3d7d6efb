//! How many Workload API connections the agent holds, per uid and in all, so that one
//! local user cannot take every file descriptor of the agent and starve the others.
//!
//! Each held connection costs the agent up to [`FDS_PER_CONNECTION`] descriptors (the
//! socket, the caller's pidfd and its `/proc/<pid>` directory). A connection is counted
//! against the uid the kernel recorded at `connect()` from accept until it closes; one over
//! either cap is closed at once and counted in `workload_api_connections_refused_total`.
//! The per-uid cap is far below the total (the defaults: 512 of 8192), so a uid at its cap
//! leaves room for every other caller, root and registered workloads included; and the
//! last eighth of the total is kept for registered uids ([`RegisteredUids`]: root, the
//! agent's own uid, uids an entry selects by `unix:uid:`), so that several uids at their
//! caps together still cannot shut a registered workload out. A
//! connection whose caller has not been attested by a request (one with the security
//! header, from a caller that is still running) within `first_request_timeout` is closed
//! too, and counted with reason `first_request_timeout`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::agent::cache::SvidCache;

/// Descriptors one held connection may cost the agent.
pub const FDS_PER_CONNECTION: u64 = 3;
/// Descriptors kept for everything else the agent opens (files, server connections).
const FDS_RESERVED: u64 = 256;
/// Default cap on connections from one uid.
pub const DEFAULT_MAX_CONNECTIONS_PER_UID: usize = 512;
/// Default cap on connections in all.
pub const DEFAULT_MAX_CONNECTIONS: usize = 8192;
/// Above `max_connections - max_connections / RESERVE_DIVISOR` held connections, only
/// registered uids get in.
const RESERVE_DIVISOR: usize = 8;
/// How long the set of uids named by entries is reused before it is read again.
const REGISTERED_REFRESH: Duration = Duration::from_secs(1);
/// Default time a connection may take to make its first request.
pub const DEFAULT_FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The caps on Workload API connections (keys of `[workload_api]` in the agent config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections held at once, from every uid together.
    pub max_connections: usize,
    /// Connections held at once from one uid.
    pub max_connections_per_uid: usize,
    /// A connection that has made no request after this long is closed.
    pub first_request_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_uid: DEFAULT_MAX_CONNECTIONS_PER_UID,
            first_request_timeout: DEFAULT_FIRST_REQUEST_TIMEOUT,
        }
    }
}

impl ConnectionLimits {
    /// The caps lowered to what `fd_limit` descriptors can hold (a warning when they were
    /// configured, an info line for the defaults); the
    /// per-uid cap is kept at most a quarter of the total.
    pub fn fitted_to(self, fd_limit: Option<u64>) -> Self {
        let Some(limit) = fd_limit else { return self };
        let fit = usize::try_from(limit.saturating_sub(FDS_RESERVED) / FDS_PER_CONNECTION)
            .unwrap_or(usize::MAX)
            .max(4);
        if fit >= self.max_connections {
            return self;
        }
        let per_uid = self.max_connections_per_uid.min(fit / 4).max(1);
        // Lowering the built-in defaults is routine on hosts with a modest hard limit;
        // lowering what an operator configured deserves a warning.
        if self.max_connections == DEFAULT_MAX_CONNECTIONS
            && self.max_connections_per_uid == DEFAULT_MAX_CONNECTIONS_PER_UID
        {
            tracing::info!(
                fd_limit = limit,
                max_connections = fit,
                max_connections_per_uid = per_uid,
                "Workload API connection caps fitted to RLIMIT_NOFILE"
            );
        } else {
            tracing::warn!(
                fd_limit = limit,
                max_connections = fit,
                max_connections_per_uid = per_uid,
                "RLIMIT_NOFILE is too low for the configured Workload API connection caps; lowered"
            );
        }
        Self { max_connections: fit, max_connections_per_uid: per_uid, ..self }
    }
}

/// Raises the soft `RLIMIT_NOFILE` of the agent to its hard limit (a process may always
/// do that) and returns the soft limit in force afterwards (`None`: unlimited).
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let old = getrlimit(Resource::Nofile);
    if old.current == old.maximum {
        return old.current;
    }
    let new = Rlimit { current: old.maximum, maximum: old.maximum };
    match setrlimit(Resource::Nofile, new) {
        Ok(()) => {
            tracing::info!(from = ?old.current, to = ?old.maximum, "raised RLIMIT_NOFILE");
            old.maximum
        }
        Err(e) => {
            tracing::warn!(error = %e, soft = ?old.current, "cannot raise RLIMIT_NOFILE");
            old.current
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its uid holds `max_connections_per_uid` connections already.
    UidLimit,
    /// The agent holds `max_connections` connections already.
    TotalLimit,
}

impl Refused {
    /// The `reason` label of the refusal metric.
    pub fn reason(self) -> &'static str {
        match self {
            Self::UidLimit => "uid_limit",
            Self::TotalLimit => "total_limit",
        }
    }
}

/// Whether a uid is registered: may use the reserved part of the total cap.
pub type Registered = Box<dyn Fn(u32) -> bool + Send + Sync>;

/// The uids that keep a reserved share of the connections: root, the agent's own uid,
/// and every uid an entry in the cache selects with `unix:uid:<n>` (read again at most
/// once a second, and only while the reserve is in use).
pub struct RegisteredUids {
    cache: Arc<SvidCache>,
    own: u32,
    named: Mutex<Option<(Instant, HashSet<u32>)>>,
}

impl RegisteredUids {
    /// The registered uids of `cache`, as a predicate for [`ConnectionLimiter::new`].
    pub fn of(cache: Arc<SvidCache>) -> Registered {
        let own = rustix::process::geteuid().as_raw();
        let this = Self { cache, own, named: Mutex::new(None) };
        Box::new(move |uid| this.contains(uid))
    }

    fn contains(&self, uid: u32) -> bool {
        if uid == 0 || uid == self.own {
            return true;
        }
        let mut named = self.named.lock().unwrap_or_else(|p| p.into_inner());
        match &*named {
            Some((read, set)) if read.elapsed() < REGISTERED_REFRESH => set.contains(&uid),
            _ => {
                let set: HashSet<u32> = self
                    .cache
                    .entry_views()
                    .iter()
                    .flat_map(|e| e.selectors.iter())
                    .filter(|s| s.kind() == "unix")
                    .filter_map(|s| s.value().strip_prefix("uid:")?.parse().ok())
                    .collect();
                let found = set.contains(&uid);
                *named = Some((Instant::now(), set));
                found
            }
        }
    }
}

/// Counts held connections, per uid and in all.
pub struct ConnectionLimiter {
    limits: ConnectionLimits,
    counts: Mutex<Counts>,
    registered: Registered,
}

impl std::fmt::Debug for ConnectionLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionLimiter").field("limits", &self.limits).finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_uid: HashMap<u32, usize>,
}

impl ConnectionLimiter {
    /// A limiter with these caps and nothing held; `registered` says which uids may use
    /// the reserved last eighth of `max_connections`.
    pub fn new(limits: ConnectionLimits, registered: Registered) -> Arc<Self> {
        Arc::new(Self { limits, counts: Mutex::new(Counts::default()), registered })
    }

    /// The caps.
    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    /// Counts one more connection from `uid`, or says which cap it would break. The
    /// permit gives the place back when dropped.
    pub fn try_acquire(self: &Arc<Self>, uid: u32) -> Result<ConnectionPermit, Refused> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let held = counts.per_uid.get(&uid).copied().unwrap_or(0);
        if held >= self.limits.max_connections_per_uid {
            return Err(Refused::UidLimit);
        }
        let total = self.limits.max_connections;
        if counts.total >= total {
            return Err(Refused::TotalLimit);
        }
        if counts.total >= total - total / RESERVE_DIVISOR && !(self.registered)(uid) {
            return Err(Refused::TotalLimit);
        }
        counts.total += 1;
        counts.per_uid.insert(uid, held + 1);
        Ok(ConnectionPermit { limiter: self.clone(), uid })
    }

    /// Connections held now: in all, and from `uid`.
    pub fn held(&self, uid: u32) -> (usize, usize) {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        (counts.total, counts.per_uid.get(&uid).copied().unwrap_or(0))
    }
}

/// One held connection; dropping it frees its place.
#[derive(Debug)]
pub struct ConnectionPermit {
    limiter: Arc<ConnectionLimiter>,
    uid: u32,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut counts = self.limiter.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                counts.per_uid.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_uid: usize) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: total,
            max_connections_per_uid: per_uid,
            ..Default::default()
        }
    }

    #[test]
    fn per_uid_and_total_caps_and_release_on_drop() {
        let l = ConnectionLimiter::new(limits(5, 3), Box::new(|_| true));
        let a: Vec<_> = (0..3).map(|_| l.try_acquire(7).unwrap()).collect();
        assert_eq!(l.try_acquire(7).unwrap_err(), Refused::UidLimit);
        let b: Vec<_> = (0..2).map(|_| l.try_acquire(8).unwrap()).collect();
        assert_eq!(l.try_acquire(9).unwrap_err(), Refused::TotalLimit);
        assert_eq!(l.held(7), (5, 3));
        drop(a);
        assert_eq!(l.held(7), (2, 0));
        let _c = l.try_acquire(9).unwrap();
        drop(b);
        assert_eq!(l.held(8), (1, 0));
    }

    #[test]
    fn the_last_eighth_is_kept_for_registered_uids() {
        let l = ConnectionLimiter::new(limits(16, 8), Box::new(|uid| uid == 1000));
        let _a: Vec<_> = (0..8).map(|_| l.try_acquire(1).unwrap()).collect();
        let _b: Vec<_> = (0..6).map(|_| l.try_acquire(2).unwrap()).collect();
        assert_eq!(l.try_acquire(3).unwrap_err(), Refused::TotalLimit, "14 of 16: reserve");
        let _c: Vec<_> = (0..2).map(|_| l.try_acquire(1000).unwrap()).collect();
        assert_eq!(l.try_acquire(1000).unwrap_err(), Refused::TotalLimit);
    }

    #[test]
    fn caps_fit_the_descriptor_limit() {
        let wanted = limits(8192, 512);
        assert_eq!(wanted.fitted_to(None), wanted);
        assert_eq!(wanted.fitted_to(Some(1 << 20)), wanted);
        let fitted = wanted.fitted_to(Some(1024));
        assert_eq!(fitted.max_connections, (1024 - 256) / 3);
        assert_eq!(fitted.max_connections_per_uid, 256 / 4);
    }
}

//! Where the time comes from.
//!
//! Everything in keycard that asks "what time is it?" asks a [`Clock`], never
//! [`SystemTime::now`] directly. Production code passes a [`SystemClock`]; tests pass a
//! [`ManualClock`] and move it forward by hand, so expiry, backdating and rotation can be
//! tested exactly and without sleeping.

use std::fmt::Debug;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// A source of the current wall-clock time.
pub trait Clock: Send + Sync + Debug {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The operating system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that only moves when told to, for tests.
///
/// Clones share one time: advancing any clone advances them all, so a test can keep one
/// handle and give another (or an `Arc<dyn Clock>`) to the code under test.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<SystemTime>>,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: SystemTime) -> Self {
        Self { now: Arc::new(Mutex::new(start)) }
    }

    /// A clock stopped at the current system time (whole seconds, so certificate times
    /// computed from it are exact).
    pub fn starting_now() -> Self {
        let secs = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        Self::new(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now += by;
    }

    /// Sets the clock to `to`, which may be earlier than the current time.
    pub fn set(&self, to: SystemTime) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told_and_clones_share_time() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let clock = ManualClock::new(start);
        let shared: Arc<dyn Clock> = Arc::new(clock.clone());
        assert_eq!(shared.now(), start);
        clock.advance(Duration::from_secs(90));
        assert_eq!(shared.now(), start + Duration::from_secs(90));
        clock.set(start - Duration::from_secs(5));
        assert_eq!(shared.now(), start - Duration::from_secs(5));
    }

    #[test]
    fn system_clock_is_close_to_the_os_clock() {
        let before = SystemTime::now();
        let now = SystemClock.now();
        assert!(now >= before);
    }

    #[test]
    fn starting_now_is_whole_seconds() {
        let clock = ManualClock::starting_now();
        let since = clock.now().duration_since(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(since.subsec_nanos(), 0);
    }
}

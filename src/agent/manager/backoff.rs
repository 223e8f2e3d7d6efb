//! The delay between failed rounds.
//!
//! Doubling alone would let an agent that has been failing for a while sleep for a long
//! time after the server came back, while the SVIDs it serves run out: after an outage of
//! 10 s the next try could be 15 s later. So a delay is also capped by the time the
//! soonest-expiring credential the agent holds has left ([`cap_by_expiry`]).

use std::time::{Duration, SystemTime};

use rand::Rng as _;

/// Exponential backoff with ±20 % jitter.
#[derive(Debug, Clone)]
pub(super) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(super) fn new(min: Duration, max: Duration) -> Self {
        Self { min, max, next: min }
    }

    pub(super) fn reset(&mut self) {
        self.next = self.min;
    }

    pub(super) fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base.mul_f64(rand::rng().random_range(0.8..=1.2))
    }
}

/// The share of a credential's remaining life the agent may sleep between failed rounds:
/// it tries at least this many times before the credential expires.
pub(super) const TRIES_BEFORE_EXPIRY: u32 = 4;

/// `delay`, but at most a [`TRIES_BEFORE_EXPIRY`]th of the time left (from `now`) to the
/// soonest of `expiries` that lies ahead, and never under `floor`. Expired credentials do
/// not count: with none left alive the delay is kept as it is.
pub(super) fn cap_by_expiry(
    delay: Duration,
    floor: Duration,
    now: SystemTime,
    expiries: impl IntoIterator<Item = SystemTime>,
) -> Duration {
    let soonest = expiries
        .into_iter()
        .filter_map(|e| e.duration_since(now).ok())
        .filter(|left| !left.is_zero())
        .min();
    match soonest {
        Some(left) => delay.min((left / TRIES_BEFORE_EXPIRY).max(floor)),
        None => delay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delay_is_capped_by_a_share_of_the_soonest_expiry_ahead() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let (min, secs) = (Duration::from_secs(1), Duration::from_secs);
        // 20 s left on the soonest: at most 5 s, whatever the backoff reached.
        let soon = [now + secs(60), now + secs(20), now + secs(3600)];
        assert_eq!(cap_by_expiry(secs(32), min, now, soon), secs(5));
        // A shorter backoff is kept.
        assert_eq!(cap_by_expiry(secs(2), min, now, soon), secs(2));
        // Never under the floor, even a second before expiry.
        assert_eq!(cap_by_expiry(secs(32), min, now, [now + secs(1)]), min);
        // Expired credentials and none at all leave the backoff alone.
        assert_eq!(cap_by_expiry(secs(32), min, now, [now - secs(5), now]), secs(32));
        assert_eq!(cap_by_expiry(secs(32), min, now, []), secs(32));
    }
}

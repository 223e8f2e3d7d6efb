//! Rate limits: token buckets keyed by source address (attestation) or agent ID (signing).
//!
//! Each key has a bucket that holds at most `burst` tokens and refills at `per_second`;
//! a request takes one token per item. [`KeyedLimiter::try_take`] takes all or nothing;
//! [`KeyedLimiter::take_up_to`] takes what the bucket holds and says when the tokens for
//! the rest will be there. Time is passed in (an [`Instant`], or the server clock's
//! [`SystemTime`]), so tests drive the buckets without sleeping.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Keys kept before idle (full) buckets are dropped, so a flood of addresses cannot grow
/// the map without bound.
const PRUNE_AT: usize = 10_000;

/// A rate: `per_second` sustained, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_second: f64,
    /// Bucket size: the most requests allowed at once.
    pub burst: f64,
}

/// A point in time a bucket can be refilled from: only the time elapsed since an earlier
/// point matters, and a clock that steps back refills nothing.
pub trait Moment: Copy + Ord + std::fmt::Debug {
    /// Time from `earlier` to `self`; zero if `earlier` is later.
    fn since(self, earlier: Self) -> Duration;
}

impl Moment for Instant {
    fn since(self, earlier: Self) -> Duration {
        self.saturating_duration_since(earlier)
    }
}

impl Moment for SystemTime {
    fn since(self, earlier: Self) -> Duration {
        self.duration_since(earlier).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket<T> {
    tokens: f64,
    at: T,
}

/// What [`KeyedLimiter::take_up_to`] granted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grant {
    /// Items that got a token (the first ones asked for).
    pub granted: usize,
    /// Tokens left in the bucket after the grant (less than one when items were refused).
    tokens_left: f64,
    per_second: f64,
    burst: f64,
}

impl Grant {
    /// When the `k`-th refused item (0 for the first one not granted) will find its token,
    /// counting from the grant: the refused items retried in order get theirs at once
    /// then. Items past a full bucket are told when the bucket is full (a call can take no
    /// more at once). Never zero, so that a caller that waits it does wait.
    pub fn retry_after(&self, k: usize) -> Duration {
        let wanted = (k as f64 + 1.0).min(self.burst.max(1.0));
        let missing = (wanted - self.tokens_left).max(0.0);
        let millis = (missing * 1000.0 / self.per_second).ceil();
        // `as` saturates: a rate so low that this overflows waits "forever".
        Duration::from_millis(millis as u64).max(Duration::from_millis(1))
    }
}

/// Token buckets per key; `T` is the time they are driven by.
#[derive(Debug)]
pub struct KeyedLimiter<K, T = Instant> {
    rate: Rate,
    buckets: Mutex<HashMap<K, Bucket<T>>>,
}

impl<K: Hash + Eq + Clone, T: Moment> KeyedLimiter<K, T> {
    /// Buckets that refill at `rate`.
    pub fn new(rate: Rate) -> Self {
        Self { rate, buckets: Mutex::new(HashMap::new()) }
    }

    /// Runs `take` on `key`'s bucket, refilled up to `now`.
    fn with_bucket<R>(&self, key: &K, now: T, take: impl FnOnce(&mut f64) -> R) -> R {
        let Rate { per_second, burst } = self.rate;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= PRUNE_AT {
            buckets.retain(|_, b| b.tokens + now.since(b.at).as_secs_f64() * per_second < burst);
        }
        let bucket = buckets.entry(key.clone()).or_insert(Bucket { tokens: burst, at: now });
        let elapsed = now.since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(burst);
        bucket.at = bucket.at.max(now);
        take(&mut bucket.tokens)
    }

    /// Takes `n` tokens from `key`'s bucket at time `now`; false (taking none) when the
    /// bucket holds fewer.
    pub fn try_take(&self, key: &K, n: usize, now: T) -> bool {
        let wanted = n as f64;
        self.with_bucket(key, now, |tokens| {
            if *tokens >= wanted {
                *tokens -= wanted;
                true
            } else {
                false
            }
        })
    }

    /// Takes one token for each of the first items of `n` that the bucket has one for,
    /// at time `now`; the [`Grant`] says how many, and when the refused ones may retry.
    pub fn take_up_to(&self, key: &K, n: usize, now: T) -> Grant {
        let Rate { per_second, burst } = self.rate;
        self.with_bucket(key, now, |tokens| {
            // The epsilon keeps a refill computed in floating point from falling a hair
            // short of the token a retry-after promised.
            let granted = ((*tokens + 1e-9).max(0.0).floor() as usize).min(n);
            *tokens = (*tokens - granted as f64).max(0.0);
            Grant { granted, tokens_left: *tokens, per_second, burst }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill_per_key() {
        let limiter = KeyedLimiter::new(Rate { per_second: 1.0, burst: 3.0 });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.try_take(&"a", 1, t0));
        }
        assert!(!limiter.try_take(&"a", 1, t0));
        assert!(limiter.try_take(&"b", 1, t0), "keys have their own buckets");
        assert!(limiter.try_take(&"a", 1, t0 + Duration::from_secs(1)));
        assert!(!limiter.try_take(&"a", 1, t0 + Duration::from_secs(1)));
        // Refill is capped at the burst.
        assert!(limiter.try_take(&"a", 3, t0 + Duration::from_secs(100)));
        assert!(!limiter.try_take(&"a", 1, t0 + Duration::from_secs(100)));
    }

    #[test]
    fn a_batch_takes_one_token_per_item_or_none() {
        let limiter = KeyedLimiter::new(Rate { per_second: 500.0, burst: 1000.0 });
        let t0 = Instant::now();
        assert!(limiter.try_take(&1u8, 600, t0));
        assert!(!limiter.try_take(&1u8, 500, t0));
        assert!(limiter.try_take(&1u8, 400, t0));
    }

    #[test]
    fn take_up_to_grants_what_the_bucket_holds_and_times_the_rest() {
        let limiter = KeyedLimiter::new(Rate { per_second: 500.0, burst: 1000.0 });
        let t0 = Instant::now();
        assert_eq!(limiter.take_up_to(&1u8, 500, t0).granted, 500);
        let grant = limiter.take_up_to(&1u8, 600, t0);
        assert_eq!(grant.granted, 500);
        // The first refused item waits for one token (2 ms at 500/s), the last for 100.
        assert_eq!(grant.retry_after(0), Duration::from_millis(2));
        assert_eq!(grant.retry_after(99), Duration::from_millis(200));
        let none = limiter.take_up_to(&1u8, 10, t0);
        assert_eq!(none.granted, 0);
        assert_eq!(none.retry_after(9), Duration::from_millis(20));
        // After the time it named, the tokens are there.
        let later = t0 + grant.retry_after(99);
        assert_eq!(limiter.take_up_to(&1u8, 100, later).granted, 100);
        // Items past a full bucket are told when it is full (2 s at 500/s).
        let empty = limiter.take_up_to(&1u8, 1, later);
        assert_eq!(empty.retry_after(1500), Duration::from_secs(2));
    }

    #[test]
    fn a_system_time_bucket_ignores_a_clock_stepping_back() {
        let limiter = KeyedLimiter::new(Rate { per_second: 1.0, burst: 2.0 });
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert!(limiter.try_take(&"a", 2, t0));
        assert!(!limiter.try_take(&"a", 1, t0 - Duration::from_secs(50)));
        assert!(limiter.try_take(&"a", 1, t0 + Duration::from_secs(1)));
    }

    #[test]
    fn idle_buckets_are_pruned() {
        let limiter = KeyedLimiter::new(Rate { per_second: 1.0, burst: 1.0 });
        let t0 = Instant::now();
        for i in 0..PRUNE_AT {
            assert!(limiter.try_take(&i, 1, t0));
        }
        assert!(limiter.try_take(&usize::MAX, 1, t0 + Duration::from_secs(5)));
        assert!(limiter.buckets.lock().unwrap().len() <= 2);
    }
}

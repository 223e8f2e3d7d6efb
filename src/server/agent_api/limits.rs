//! Rate limits: token buckets keyed by source address (attestation) or agent ID (signing).
//!
//! Each key has a bucket that holds at most `burst` tokens and refills at `per_second`;
//! a request takes one token per item and is refused when the bucket has too few. Time is
//! passed in, so tests drive the buckets without sleeping.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Instant;

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

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets per key.
#[derive(Debug)]
pub struct KeyedLimiter<K> {
    rate: Rate,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// Buckets that refill at `rate`.
    pub fn new(rate: Rate) -> Self {
        Self { rate, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes `n` tokens from `key`'s bucket at time `now`; false (taking none) when the
    /// bucket holds fewer.
    pub fn try_take(&self, key: &K, n: usize, now: Instant) -> bool {
        let Rate { per_second, burst } = self.rate;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= PRUNE_AT {
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_second < burst
            });
        }
        let bucket = buckets.entry(key.clone()).or_insert(Bucket { tokens: burst, at: now });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(burst);
        bucket.at = bucket.at.max(now);
        let wanted = n as f64;
        if bucket.tokens >= wanted {
            bucket.tokens -= wanted;
            true
        } else {
            false
        }
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

//! Target 5: the renewal storm. 10,000 SVIDs issued at one instant (lifetimes 300 s and
//! 3,600 s), four renewals each, on the manual clock, under two policies ticked alike:
//!
//! - keycard: the agent's scheduler, `keycard::agent::renewal`'s functions called as
//!   `Manager::sign_batch` calls them (a batch's first renewals from
//!   `batch_first_renewal`, every later one from `steady_renewal` of the previous due
//!   point, the new SVID counted from when the server's answer arrived);
//! - SPIRE: SPIRE's agent rule (`pkg/common/rotationutil`, `shouldRotateByHalf`): at
//!   every check, renew when the time left is at most half the lifetime ± 10 % of that
//!   half, the jitter drawn afresh at each check.
//!
//! Both are checked on the same ticks, a quarter of a bucket apart (1 % of the
//! half-life), and a renewal happens at the tick that finds it due. The figure is the
//! fullest bucket over the whole run divided by the steady mean (n renewals per
//! half-life, so n / 100 per bucket).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keycard::agent::renewal::{Validity, batch_first_renewal, steady_renewal};
use keycard::clock::{Clock, ManualClock};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::plot::{COLORS, Series, write_png};
use crate::table::{Goal, Row};

/// Renewals per SVID after its first issuance.
pub const WAVES: usize = 4;
/// Buckets per half-life.
pub const BUCKETS_PER_HALF_LIFE: u32 = 100;
/// The longest the server takes to answer a renewal (uniformly from zero).
const MAX_LATENCY_MS: u64 = 200;

/// When the fleet was issued.
fn start() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// A renewal policy under comparison.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Policy {
    /// keycard's scheduler.
    Keycard,
    /// SPIRE's agent rule.
    Spire,
}

/// One simulated storm: every renewal's instant, as an offset from issuance.
pub struct Storm {
    /// Offsets of every renewal of every wave.
    pub renewals: Vec<Duration>,
    /// The bucket width (1 % of the half-life).
    pub bucket: Duration,
}

impl Storm {
    /// Renewals per bucket, from issuance to the last renewal.
    pub fn histogram(&self) -> Vec<usize> {
        let width = self.bucket.as_nanos();
        let last = self.renewals.iter().max().map_or(0, |d| d.as_nanos() / width) as usize;
        let mut counts = vec![0usize; last + 1];
        for r in &self.renewals {
            counts[(r.as_nanos() / width) as usize] += 1;
        }
        counts
    }

    /// The fullest bucket divided by the steady mean of `n` per half-life.
    pub fn peak_over_mean(&self, n: usize) -> f64 {
        let fullest = self.histogram().into_iter().max().unwrap_or(0);
        fullest as f64 / (n as f64 / f64::from(BUCKETS_PER_HALF_LIFE))
    }
}

/// An SVID in flight: its validity and (keycard) the renewal point planned for it.
#[derive(Clone, Copy)]
struct Held {
    validity: Validity,
    due: SystemTime,
    wave: usize,
}

/// Simulates `n` SVIDs of `lifetime` issued at one instant under `policy`.
pub fn simulate(policy: Policy, n: usize, lifetime: Duration, seed: u64) -> Storm {
    let mut rng = StdRng::seed_from_u64(seed);
    let clock = ManualClock::new(start());
    let bucket = lifetime / 2 / BUCKETS_PER_HALF_LIFE;
    let tick = bucket / 4;
    let first = Validity { issued_at: clock.now(), not_after: clock.now() + lifetime };
    // The manager draws one phase per batch.
    let phase: f64 = rng.random_range(0.0..1.0);
    // Ordered by the first instant a renewal could be due: keycard's planned point, or
    // for SPIRE the start of its jitter window (55 % of the lifetime left).
    let mut queue: BinaryHeap<Reverse<(SystemTime, usize)>> = BinaryHeap::new();
    let mut held: Vec<Held> = Vec::with_capacity(n);
    for i in 0..n {
        let due = match policy {
            Policy::Keycard => batch_first_renewal(first, i, n, phase),
            Policy::Spire => spire_window_start(first),
        };
        held.push(Held { validity: first, due, wave: 0 });
        queue.push(Reverse((due, i)));
    }
    let mut renewals = Vec::with_capacity(n * WAVES);
    // Candidates whose window has opened (SPIRE checks each of them at every tick).
    let mut open: Vec<usize> = Vec::new();
    while !queue.is_empty() || !open.is_empty() {
        clock.advance(tick);
        let now = clock.now();
        while let Some(Reverse((at, i))) = queue.peek().copied() {
            if at > now {
                break;
            }
            queue.pop();
            open.push(i);
        }
        let mut still_open = Vec::with_capacity(open.len());
        for i in open.drain(..) {
            let h = held[i];
            let renew = match policy {
                Policy::Keycard => true,
                Policy::Spire => spire_should_rotate(now, h.validity, &mut rng),
            };
            if !renew {
                still_open.push(i);
                continue;
            }
            renewals.push(now.duration_since(start()).unwrap_or_default());
            if h.wave + 1 == WAVES {
                continue;
            }
            let latency = Duration::from_millis(rng.random_range(0..=MAX_LATENCY_MS));
            let issued_at = now + latency;
            let validity = Validity { issued_at, not_after: issued_at + lifetime };
            let due = match policy {
                Policy::Keycard => steady_renewal(h.due, validity),
                Policy::Spire => spire_window_start(validity),
            };
            held[i] = Held { validity, due, wave: h.wave + 1 };
            queue.push(Reverse((due, i)));
        }
        open = still_open;
    }
    Storm { renewals, bucket }
}

/// SPIRE's half-life threshold: half the lifetime, ± a tenth of that half.
fn spire_half(validity: Validity) -> (Duration, Duration) {
    let half = validity.lifetime() / 2;
    (half, half / 10)
}

/// The first instant SPIRE's rule can fire: when `half + delta` of the lifetime is left.
fn spire_window_start(validity: Validity) -> SystemTime {
    let (half, delta) = spire_half(validity);
    validity.not_after - (half + delta)
}

/// SPIRE's check: the time left is at most a threshold drawn uniformly from
/// `[half - delta, half + delta)` at this check.
fn spire_should_rotate(now: SystemTime, validity: Validity, rng: &mut StdRng) -> bool {
    let left = validity.not_after.duration_since(now).unwrap_or_default();
    if left.is_zero() {
        return true;
    }
    let (half, delta) = spire_half(validity);
    let threshold = half - delta + delta.mul_f64(2.0 * rng.random_range(0.0..1.0));
    left <= threshold
}

/// The rows of target 5 (keycard and SPIRE for each lifetime), and the plot.
pub fn rows(quick: bool) -> Vec<Row> {
    let n = if quick { 2_000 } else { 10_000 };
    // The agent's Manager against a real server signs n SVIDs five times over, a round
    // per tick with a renewal due: a full run only, for the short lifetime.
    let manager_n = 10_000;
    let mut rows = Vec::new();
    let mut panels = Vec::new();
    for (lifetime, seed) in [(Duration::from_secs(300), 7), (Duration::from_secs(3600), 11)] {
        let ours = simulate(Policy::Keycard, n, lifetime, seed);
        let spire = simulate(Policy::Spire, n, lifetime, seed);
        let agent = (!quick && lifetime.as_secs() == 300)
            .then(|| super::manager_storm::storm(manager_n, lifetime));
        assert_eq!(ours.renewals.len(), n * WAVES, "every keycard renewal happened");
        assert_eq!(spire.renewals.len(), n * WAVES, "every SPIRE renewal happened");
        let secs = lifetime.as_secs();
        rows.push(Row {
            what: format!("Renewal storm, {n} SVIDs of {secs} s, {WAVES} waves: keycard"),
            keycard: ours.peak_over_mean(n),
            baseline: None,
            baseline_name: format!("fullest 1%-of-half-life bucket / steady mean ({})", n / 100),
            unit: "x mean".into(),
            goal: Goal::Absolute { at_most: 1.5 },
        });
        if let Some(agent) = &agent {
            rows.push(Row {
                what: format!(
                    "Renewal storm, {manager_n} SVIDs of {secs} s, {WAVES} waves: keycard agent \
                     (Manager ticked on the manual clock, in-process server)"
                ),
                keycard: agent.peak_over_mean(manager_n),
                baseline: None,
                baseline_name: format!("fullest bucket / steady mean ({})", manager_n / 100),
                unit: "x mean".into(),
                goal: Goal::Absolute { at_most: 1.5 },
            });
        }
        rows.push(Row {
            what: format!("Renewal storm, {n} SVIDs of {secs} s, {WAVES} waves: SPIRE's rule"),
            keycard: spire.peak_over_mean(n),
            baseline: None,
            baseline_name: "SPIRE rotationutil: half-life ± 10% of it, redrawn per check".into(),
            unit: "x mean".into(),
            goal: Goal::Absolute { at_most: 1.5 },
        });
        let mut series =
            vec![Series { name: "keycard scheduler".into(), storm: ours, n, color: COLORS[0] }];
        if let Some(storm) = agent {
            let name = "keycard agent (Manager + server)".into();
            series.push(Series { name, storm, n: manager_n, color: COLORS[1] });
        }
        series.push(Series { name: "SPIRE's rule".into(), storm: spire, n, color: COLORS[2] });
        panels.push((lifetime, n, series));
    }
    // The plot shows the full fleet only: a quick run leaves the committed one alone.
    if !quick {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        let path = docs.join("renewal-histogram.png");
        match write_png(&path, &panels) {
            Ok(()) => eprintln!("renewal plot written to {}", path.display()),
            Err(e) => eprintln!("renewal plot not written: {e}"),
        }
    }
    rows
}

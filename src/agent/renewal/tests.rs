//! Tests of the renewal plan, including fleet simulations on the manual clock.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::clock::{Clock, ManualClock};

const LIFETIME: Duration = Duration::from_secs(300);

fn start() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn validity(issued_at: SystemTime) -> Validity {
    Validity { issued_at, not_after: issued_at + LIFETIME }
}

/// Renewal plans under comparison.
#[derive(Clone, Copy, Debug)]
enum Plan {
    /// keycard: evenly spread first renewal, then keep the phase.
    Keycard,
    /// Every renewal at half the lifetime plus a fresh random ±10 % (SPIRE's rule).
    Naive,
}

/// Simulates `n` SVIDs issued at one instant through `waves` renewals each, on a manual
/// clock, with a random server latency per renewal; returns each wave's renewal times.
fn simulate(plan: Plan, n: usize, waves: usize, seed: u64) -> Vec<Vec<SystemTime>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let clock = ManualClock::new(start());
    let batch_phase: f64 = rng.random();
    // (renewal due, svid index, wave) in time order.
    let mut queue = BinaryHeap::new();
    for i in 0..n {
        let v = validity(clock.now());
        let due = match plan {
            Plan::Keycard => batch_first_renewal(v, i, n, batch_phase),
            Plan::Naive => single_first_renewal(v, rng.random_range(-1.0..=1.0)),
        };
        queue.push(Reverse((due, i, 0usize)));
    }
    let mut by_wave = vec![Vec::with_capacity(n); waves];
    while let Some(Reverse((due, i, wave))) = queue.pop() {
        if due > clock.now() {
            clock.set(due);
        }
        by_wave[wave].push(due);
        if wave + 1 == waves {
            continue;
        }
        // The server answers after up to 200 ms; the new SVID counts from then.
        let latency = Duration::from_millis(rng.random_range(0..200));
        let v = validity(clock.now() + latency);
        let next = match plan {
            Plan::Keycard => steady_renewal(due, v),
            Plan::Naive => single_first_renewal(v, rng.random_range(-1.0..=1.0)),
        };
        queue.push(Reverse((next, i, wave + 1)));
    }
    by_wave
}

/// The fullest bucket of `width` among `times`.
fn fullest_bucket(times: &[SystemTime], width: Duration) -> usize {
    let mut counts = std::collections::HashMap::new();
    for t in times {
        let offset = t.duration_since(start()).unwrap();
        *counts.entry(offset.as_nanos() / width.as_nanos()).or_insert(0usize) += 1;
    }
    counts.into_values().max().unwrap_or(0)
}

#[test]
fn a_thousand_svids_issued_at_once_spread_their_first_renewals() {
    let n = 1000;
    let v = validity(start());
    let times: Vec<SystemTime> = (0..n).map(|i| batch_first_renewal(v, i, n, 0.37)).collect();
    let first = *times.iter().min().unwrap();
    let last = *times.iter().max().unwrap();
    let spread = last.duration_since(first).unwrap();
    assert!(spread >= LIFETIME.mul_f64(0.4), "spread over only {spread:?}");
    let fullest = fullest_bucket(&times, LIFETIME / 100);
    assert!(fullest * 100 <= 4 * n, "a 1% bucket holds {fullest} of {n}");
    for t in &times {
        assert!(*t >= v.at(0.25) && *t < v.at(0.75), "{t:?} outside 25%..75%");
    }
}

#[test]
fn ten_thousand_svids_renew_flat_in_every_wave_and_the_naive_rule_does_not() {
    let n = 10_000;
    let half_life_bucket = LIFETIME / 2 / 100;
    let steady_mean = n / 100;
    for (wave, times) in simulate(Plan::Keycard, n, 4, 7).iter().enumerate() {
        assert_eq!(times.len(), n);
        let fullest = fullest_bucket(times, half_life_bucket);
        assert!(
            fullest * 2 <= steady_mean * 3,
            "wave {wave}: fullest bucket {fullest} > 1.5 x {steady_mean}"
        );
    }
    // The same fleet under the naive rule: at least one wave peaks at twice the mean or more.
    let naive_peak = simulate(Plan::Naive, n, 4, 7)
        .iter()
        .map(|times| fullest_bucket(times, half_life_bucket))
        .max()
        .unwrap();
    assert!(naive_peak >= 2 * steady_mean, "naive peak {naive_peak} unexpectedly flat");
}

#[test]
fn steady_renewals_keep_their_phase_despite_latency() {
    let due = start() + LIFETIME / 2;
    // Obtained 150 ms after it was due: the next renewal is still due + L/2.
    let v = validity(due + Duration::from_millis(150));
    assert_eq!(steady_renewal(due, v), due + LIFETIME / 2);
    // A renewal that came two lifetimes late keeps the phase: due + 5 half-lifetimes is the
    // first point after the new SVID was obtained.
    let late = validity(due + LIFETIME * 2);
    assert_eq!(steady_renewal(due, late), due + LIFETIME / 2 * 5);
    assert!(steady_renewal(due, late) > late.issued_at);
    // It is never planned past 90 % of the new lifetime.
    let short = Validity { issued_at: due, not_after: due + Duration::from_secs(10) };
    assert_eq!(steady_renewal(due, short), due + Duration::from_secs(5));
    let skewed = Validity { issued_at: due, not_after: due + Duration::from_secs(10) };
    assert!(steady_renewal(due + Duration::from_secs(60), skewed) <= latest_renewal(skewed));
}

#[test]
fn single_svids_renew_within_ten_percent_of_half_life() {
    let v = validity(start());
    assert_eq!(single_first_renewal(v, 0.0), start() + LIFETIME / 2);
    assert_eq!(single_first_renewal(v, 1.0), start() + LIFETIME.mul_f64(0.6));
    assert_eq!(single_first_renewal(v, -5.0), start() + LIFETIME.mul_f64(0.4));
    assert_eq!(latest_renewal(v), start() + LIFETIME.mul_f64(0.9));
}

#[test]
fn tainted_svids_are_due_at_once() {
    let now = start();
    assert!(renewal_due(now, now + LIFETIME, true));
    assert!(!renewal_due(now, now + LIFETIME, false));
    assert!(renewal_due(now + LIFETIME, now + LIFETIME, false));
}

#[test]
fn steady_renewals_step_by_the_servers_whole_second_lifetime() {
    // The server's notAfter is whole seconds; the agent obtained the SVID 0.1 s to 0.9 s
    // into a second. The step is still exactly half the 300 s lifetime, whatever the
    // fraction, so renewals issued together at different moments of a round keep their
    // distance instead of drifting by up to half a second a wave.
    let due = start() + Duration::from_millis(400);
    for late_ms in [100u64, 500, 900] {
        let issued_at = start() + Duration::from_millis(late_ms);
        let v = Validity { issued_at, not_after: start() + LIFETIME };
        assert_eq!(steady_renewal(due, v), due + LIFETIME / 2, "{late_ms} ms into the second");
    }
    // A lifetime of whole seconds is taken as it is.
    assert_eq!(steady_renewal(start(), validity(start())), start() + LIFETIME / 2);
}

//! When the agent renews each SVID: pure functions of time, tested on their own.
//!
//! The naive rule (renew at half the lifetime, plus a random offset of up to ±10 % of the
//! lifetime, as SPIRE does) spreads a *single* SVID's renewals, but SVIDs issued together
//! (agent start with many entries, re-issuance after a tainted authority, a batch of new
//! entries) keep renewing in one wave every half-life: 10,000 SVIDs issued at one instant
//! still peak at several times the steady-state rate on every wave.
//!
//! So keycard plans renewals in two steps:
//! 1. **First renewal after a batch issuance**: the SVIDs of a batch get *evenly spaced*
//!    renewal points over 25 % to 75 % of their lifetime ([`batch_first_renewal`]), with a
//!    random phase for the whole batch so that two agents do not line up either. A batch of
//!    one falls back to the naive rule ([`single_first_renewal`]).
//! 2. **Every later renewal keeps its phase**: it is due exactly half a lifetime after the
//!    previous renewal was due ([`steady_renewal`]), so the fleet stays spread as it was
//!    and the renewal rate is flat from the first wave on.
//!
//! A renewal point is never later than the point where only a tenth of the lifetime is left
//! ([`latest_renewal`]), so a renewal that fails has time to be retried.

use std::time::{Duration, SystemTime};

/// Fraction of the lifetime where a batch's first renewals start.
pub const BATCH_SPREAD_START: f64 = 0.25;
/// Fraction of the lifetime over which a batch's first renewals are spread.
pub const BATCH_SPREAD_WIDTH: f64 = 0.5;
/// The naive rule's random offset, as a fraction of the lifetime (either way).
pub const SINGLE_JITTER: f64 = 0.1;
/// Fraction of the lifetime that must remain when a renewal is due at the latest.
pub const MIN_REMAINING: f64 = 0.1;

/// An SVID's validity as the agent counts it: from when it received it to `not_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// When the agent obtained the SVID.
    pub issued_at: SystemTime,
    /// When the SVID expires.
    pub not_after: SystemTime,
}

impl Validity {
    /// The lifetime (zero if `not_after` is not after `issued_at`).
    pub fn lifetime(&self) -> Duration {
        self.not_after.duration_since(self.issued_at).unwrap_or_default()
    }

    /// The instant at `fraction` of the lifetime.
    fn at(&self, fraction: f64) -> SystemTime {
        self.issued_at + self.lifetime().mul_f64(fraction.clamp(0.0, 1.0))
    }
}

/// The latest acceptable renewal point: when only [`MIN_REMAINING`] of the lifetime is left.
pub fn latest_renewal(validity: Validity) -> SystemTime {
    validity.at(1.0 - MIN_REMAINING)
}

/// First renewal of SVID number `index` of a batch of `batch_len` issued together:
/// evenly spaced over 25 % to 75 % of the lifetime, shifted by `batch_phase` (in [0, 1),
/// drawn once per batch) of one spacing step.
pub fn batch_first_renewal(
    validity: Validity,
    index: usize,
    batch_len: usize,
    batch_phase: f64,
) -> SystemTime {
    let n = batch_len.max(1) as f64;
    let slot = (index as f64 + batch_phase.clamp(0.0, 0.999_999)) / n;
    validity.at(BATCH_SPREAD_START + BATCH_SPREAD_WIDTH * slot)
}

/// First renewal of an SVID issued on its own: half the lifetime plus `jitter` (in
/// [-1, 1]) times a tenth of the lifetime.
pub fn single_first_renewal(validity: Validity, jitter: f64) -> SystemTime {
    validity.at(0.5 + SINGLE_JITTER * jitter.clamp(-1.0, 1.0))
}

/// A later renewal: half the new SVID's lifetime after the previous renewal was *due*
/// (not after it happened, so that server latency does not shift the fleet). When the
/// renewal came so late that this point has passed (the server was down), whole
/// half-lifetimes are added until it lies after the new SVID was obtained: the phase is
/// kept. Never after [`latest_renewal`].
pub fn steady_renewal(previous_due: SystemTime, validity: Validity) -> SystemTime {
    let step = nominal_lifetime(validity) / 2;
    if step.is_zero() {
        return validity.issued_at;
    }
    let mut due = previous_due + step;
    if let Ok(behind) = validity.issued_at.duration_since(due) {
        let steps = (behind.as_nanos() / step.as_nanos()) as u32 + 1;
        due += step * steps;
    }
    due.min(latest_renewal(validity))
}

/// The lifetime the server gave, as whole seconds: `not_after` is whole seconds while the
/// agent obtains the SVID part of a second (and however long it was busy) after the server
/// read its clock, so `not_after - issued_at` falls short of the TTL by that much. Left
/// as it is, each wave would step a little earlier than the last by an amount that
/// depends on how late its round ran, and renewals spread evenly would drift into bunches.
fn nominal_lifetime(validity: Validity) -> Duration {
    let lifetime = validity.lifetime();
    let whole = Duration::from_secs(lifetime.as_secs());
    if whole == lifetime { whole } else { whole + Duration::from_secs(1) }
}

/// Whether an SVID must be renewed now: its renewal point has passed, or the authority that
/// signed it was tainted (renew at once), or it is about to expire.
pub fn renewal_due(now: SystemTime, renew_at: SystemTime, tainted: bool) -> bool {
    tainted || now >= renew_at
}

#[cfg(test)]
mod tests;

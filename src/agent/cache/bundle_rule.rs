//! Which bundle from the server the agent adopts in place of the one it holds.
//!
//! The bundle decides what the agent trusts (every SVID it serves is checked against it)
//! and what workloads trust, so a replacement must be a step forward: it holds at least one
//! X.509 authority (an empty bundle would make every SVID unverifiable and would be handed
//! to every workload), and when it differs from the current one its `spiffe_sequence` is
//! higher (the CA raises it on every change). A bundle with a lower or equal sequence is an
//! old one played back (a restored server backup, a lagging replica, or someone in the
//! path): the agent keeps what it has and says why. An operator who really rolled the CA
//! back removes the agent's `bundle.json` (and, with the disk cache, its workload cache).

use keycard_workload_api::SpiffeBundle;

use super::CacheError;

/// Whether `offered` may replace `current` (`None`: the agent holds no bundle yet).
pub fn check_bundle_update(
    current: Option<&SpiffeBundle>,
    offered: &SpiffeBundle,
) -> Result<(), CacheError> {
    if offered.x509_authorities.is_empty() {
        return Err(CacheError::EmptyBundle);
    }
    let Some(current) = current else { return Ok(()) };
    if current == offered {
        return Ok(());
    }
    match (current.sequence, offered.sequence) {
        (None, _) => Ok(()),
        (Some(held), Some(new)) if new > held => Ok(()),
        (Some(held), new) => Err(CacheError::StaleBundle { held, offered: new }),
    }
}

#[cfg(test)]
mod tests {
    use keycard_workload_api::TrustDomain;

    use super::*;

    #[test]
    fn only_a_non_empty_bundle_with_a_higher_sequence_replaces_the_current_one() {
        let ca = crate::ca::manager::test_ca(TrustDomain::new("example.org").unwrap());
        let held = ca.bundle().unwrap();
        let seq = held.sequence.unwrap();
        assert!(check_bundle_update(None, &held).is_ok());
        assert!(check_bundle_update(Some(&held), &held).is_ok(), "the same bundle again");

        let mut empty = held.clone();
        empty.x509_authorities.clear();
        empty.sequence = Some(seq + 1);
        assert!(matches!(check_bundle_update(Some(&held), &empty), Err(CacheError::EmptyBundle)));
        assert!(matches!(check_bundle_update(None, &empty), Err(CacheError::EmptyBundle)));

        let mut changed = held.clone();
        changed.jwt_authorities.clear();
        for (sequence, ok) in
            [(Some(seq + 1), true), (Some(seq), false), (seq.checked_sub(1), false), (None, false)]
        {
            changed.sequence = sequence;
            assert_eq!(check_bundle_update(Some(&held), &changed).is_ok(), ok, "{sequence:?}");
        }
        let e = {
            changed.sequence = Some(seq);
            check_bundle_update(Some(&held), &changed).unwrap_err().to_string()
        };
        assert!(e.contains("spiffe_sequence") && e.contains("bundle.json"), "{e}");
    }
}

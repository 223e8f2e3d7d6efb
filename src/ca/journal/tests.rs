//! Tests of the journal's transitions and persistence.

use super::*;

const K: AuthorityKind = AuthorityKind::X509;

fn record(id: &str, issued_at_ms: u64, not_after_ms: u64) -> AuthorityRecord {
    AuthorityRecord {
        id: id.into(),
        key_id: format!("x509-{id}"),
        state: SlotState::Prepared,
        tainted: false,
        issued_at_ms,
        not_after_ms,
        public_der: vec![1, 2, 3],
        upstream_chain: vec![vec![4, 5]],
    }
}

#[test]
fn schedule_points_are_half_life_and_one_sixth_remaining() {
    let r = record("a", 0, 60_000);
    assert_eq!(unix_ms(r.prepare_at()), 30_000);
    assert_eq!(unix_ms(r.activate_at()), 50_000);
}

#[test]
fn first_authority_is_active_then_next_is_prepared() {
    let mut set = AuthoritySet::default();
    assert_eq!(set.add(record("a", 0, 10)).unwrap(), SlotState::Active);
    assert_eq!(set.add(record("b", 5, 15)).unwrap(), SlotState::Prepared);
    assert!(
        matches!(set.add(record("c", 6, 16)), Err(JournalError::AlreadyPrepared(id)) if id == "b")
    );
    set.activate(K, "b").unwrap();
    assert_eq!(set.active().unwrap().id, "b");
    assert_eq!(set.get("a").unwrap().state, SlotState::Old);
    assert!(set.prepared().is_none());
}

#[test]
fn illegal_transitions_are_refused() {
    let mut set = AuthoritySet::default();
    set.add(record("a", 0, 10)).unwrap();
    set.add(record("b", 5, 15)).unwrap();
    assert!(matches!(set.activate(K, "a"), Err(JournalError::NotPrepared(_))));
    assert!(matches!(set.activate(K, "zz"), Err(JournalError::Unknown { .. })));
    assert!(matches!(set.taint(K, "a"), Err(JournalError::ActiveAuthority(_))));
    assert!(matches!(set.taint(K, "b"), Err(JournalError::TaintPrepared(_))));
    assert!(matches!(set.revoke(K, "a"), Err(JournalError::ActiveAuthority(_))));
    set.activate(K, "b").unwrap();
    assert!(matches!(set.revoke(K, "a"), Err(JournalError::NotTainted(_))));
    set.taint(K, "a").unwrap();
    assert!(matches!(set.taint(K, "a"), Err(JournalError::AlreadyTainted(_))));
    let revoked = set.revoke(K, "a").unwrap();
    assert_eq!(revoked.id, "a");
    assert!(set.get("a").is_none());
}

#[test]
fn expired_old_authorities_are_pruned_but_not_the_active_one() {
    let mut set = AuthoritySet::default();
    set.add(record("a", 0, 10)).unwrap();
    set.add(record("b", 5, 15)).unwrap();
    set.activate(K, "b").unwrap();
    let at = |ms| UNIX_EPOCH + Duration::from_millis(ms);
    assert!(set.prune_expired(at(9)).is_empty());
    assert_eq!(set.prune_expired(at(10)).len(), 1);
    assert!(set.prune_expired(at(100)).is_empty(), "the active one stays");
    assert_eq!(set.records.len(), 1);
}

#[test]
fn journal_round_trips_through_disk_privately() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.json");
    assert_eq!(Journal::load(&path).unwrap(), Journal::default());
    let mut journal = Journal { bundle_sequence: 7, ..Default::default() };
    journal.x509.add(record("a", 0, 10)).unwrap();
    journal.jwt.add(record("k1", 0, 10)).unwrap();
    journal.save(&path).unwrap();
    assert_eq!(Journal::load(&path).unwrap(), journal);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    std::fs::write(&path, b"{\"x509\":").unwrap();
    assert!(matches!(Journal::load(&path), Err(JournalError::Corrupt { .. })));
}

//! Two CAs as two HA servers: each publishes the other's authorities, and marks set
//! through one apply to the other's.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keycard_workload_api::{SpiffeId, TrustDomain, X509BundleSet, verify_chain};
use rustls_pki_types::{SubjectPublicKeyInfoDer, UnixTime};

use super::{CaManager, Peers, test_ca};
use crate::ca::journal::{AuthorityKind, AuthorityMark, JournalError, SlotState};
use crate::ca::{CaError, KeyType, SigningKey, SvidRequest};

fn request() -> SvidRequest {
    let key = SigningKey::generate(KeyType::EcP256).unwrap();
    SvidRequest {
        public_key: SubjectPublicKeyInfoDer::from(key.public_key_der()),
        spiffe_id: SpiffeId::parse("spiffe://example.org/web").unwrap(),
        dns_names: vec![],
        ttl: Duration::from_secs(60),
    }
}

fn now() -> UnixTime {
    UnixTime::since_unix_epoch(SystemTime::now().duration_since(UNIX_EPOCH).unwrap())
}

/// `ca`'s peers are exactly `others`, with `marks`.
fn see(ca: &CaManager, others: &[(&str, &CaManager)], marks: &[(String, AuthorityMark)]) {
    let journals: BTreeMap<String, _> =
        others.iter().map(|(id, other)| ((*id).to_owned(), other.journal())).collect();
    ca.set_peers(Peers::new(journals, marks));
}

fn ids(ca: &CaManager, kind: AuthorityKind) -> Vec<String> {
    ca.authorities(kind).into_iter().map(|a| a.id).collect()
}

/// Rotates `ca` by hand so that its first authority of `kind` is old; returns that ID.
fn retire_first(ca: &CaManager, kind: AuthorityKind) -> String {
    let first = ids(ca, kind)[0].clone();
    let next = ca.prepare(kind).unwrap();
    ca.activate(kind, &next).unwrap();
    assert_eq!(ca.authorities(kind)[0].state, SlotState::Old);
    first
}

#[test]
fn each_server_publishes_and_trusts_the_others_authorities() {
    let td = TrustDomain::new("example.org").unwrap();
    let (a, b) = (test_ca(td.clone()), test_ca(td));
    let before = b.bundle().unwrap();
    let svid = a.sign_x509_svid(&request()).unwrap().svid;
    let chain = svid.chain_without_root.clone();
    let b_roots: X509BundleSet = [b.x509_bundle()].into_iter().collect();
    assert!(verify_chain(&chain, &b_roots, now()).is_err(), "not yet a peer");

    see(&b, &[("a", &a)], &[]);
    let b_roots: X509BundleSet = [b.x509_bundle()].into_iter().collect();
    verify_chain(&chain, &b_roots, now()).expect("B accepts an SVID signed by A");
    let bundle = b.bundle().unwrap();
    assert_eq!(bundle.x509_authorities.len(), 2);
    let kids: Vec<_> = bundle.jwt_authorities.keys().cloned().collect();
    for kid in ids(&a, AuthorityKind::Jwt).into_iter().chain(ids(&b, AuthorityKind::Jwt)) {
        assert!(kids.contains(&kid), "{kid} missing from {kids:?}");
    }
    assert!(bundle.sequence > before.sequence);
}

#[test]
fn a_mark_set_through_one_server_applies_to_the_owners_authority_everywhere() {
    let td = TrustDomain::new("example.org").unwrap();
    let (a, b) = (test_ca(td.clone()), test_ca(td));
    let old = retire_first(&a, AuthorityKind::X509);
    let active = ids(&a, AuthorityKind::X509)[1].clone();
    see(&b, &[("a", &a)], &[]);

    // B checks a mark on A's authority by A's journal rules.
    let peers = b.peers();
    let refused = peers.check_mark(AuthorityKind::X509, &active, AuthorityMark::Tainted);
    assert!(matches!(refused, Err(CaError::Journal(JournalError::ActiveAuthority(_)))));
    let refused = peers.check_mark(AuthorityKind::X509, &old, AuthorityMark::Revoked);
    assert!(matches!(refused, Err(CaError::Journal(JournalError::NotTainted(_)))));
    let owner = peers.check_mark(AuthorityKind::X509, &old, AuthorityMark::Tainted).unwrap();
    assert_eq!(owner.as_deref(), Some("a"));
    assert_eq!(
        peers.check_mark(AuthorityKind::X509, "nope", AuthorityMark::Tainted).unwrap(),
        None
    );

    // Marked tainted: B lists it at once; A applies it to its own journal.
    let marks = vec![(old.clone(), AuthorityMark::Tainted)];
    see(&b, &[("a", &a)], &marks);
    assert_eq!(b.tainted_x509_authorities(), vec![old.clone()]);
    assert_eq!(a.apply_marks(&marks), 1);
    assert_eq!(a.apply_marks(&marks), 0, "applied once");
    assert!(a.authorities(AuthorityKind::X509)[0].tainted);

    // Revoked: gone from B's bundle at once, and from A's journal once A applies it.
    let marks = vec![(old.clone(), AuthorityMark::Revoked)];
    see(&b, &[("a", &a)], &marks);
    assert_eq!(b.bundle().unwrap().x509_authorities.len(), 2, "B's own and A's active");
    assert!(b.tainted_x509_authorities().is_empty());
    assert_eq!(a.apply_marks(&marks), 1);
    assert_eq!(ids(&a, AuthorityKind::X509), vec![active]);
}

#[test]
fn a_revoked_mark_on_an_untainted_own_authority_taints_then_revokes() {
    let td = TrustDomain::new("example.org").unwrap();
    let a = test_ca(td);
    let old = retire_first(&a, AuthorityKind::Jwt);
    assert_eq!(a.apply_marks(&[(old.clone(), AuthorityMark::Revoked)]), 2);
    assert!(!ids(&a, AuthorityKind::Jwt).contains(&old));
    let active = ids(&a, AuthorityKind::Jwt)[0].clone();
    assert_eq!(a.apply_marks(&[(active.clone(), AuthorityMark::Tainted)]), 0, "refused, logged");
    assert_eq!(ids(&a, AuthorityKind::Jwt), vec![active]);
}

//! Agents, join tokens and bundles, damaged rows, and persistence across reopening.

use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keycard_workload_api::{SpiffeId, TrustDomain};

use super::Backend;
use crate::selector::Selector;
use crate::server::datastore::{
    AgentRecord, DataStore, DataStoreError, JoinTokenRecord, PageRequest, TokenUse,
};
use crate::server::entry::EntrySpec;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn agent_id(n: u32) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://example.org/keycard/agent/x509pop/{n:04}")).unwrap()
}

fn agent(n: u32) -> AgentRecord {
    AgentRecord {
        id: agent_id(n),
        attestation_type: "x509pop".into(),
        selectors: [Selector::parse("x509pop:subject:cn:node").unwrap()].into_iter().collect(),
        svid_serial: format!("{n:x}"),
        previous_svid_serial: None,
        svid_expires_at: at(5000),
        banned: false,
        can_reattest: true,
        created_at: at(100),
        updated_at: at(200),
    }
}

fn token(n: u8, agent: Option<SpiffeId>, expires_at: SystemTime) -> JoinTokenRecord {
    JoinTokenRecord {
        hash: [n; 32],
        token_id: format!("{n:016x}"),
        agent_id: agent,
        expires_at,
        used_at: None,
    }
}

pub(super) fn agents_are_stored_replaced_listed_banned_and_deleted(backend: &dyn Backend) {
    let store = backend.open();
    assert_eq!(store.get_agent(&agent_id(1)).unwrap(), None);
    for n in 0..25 {
        store.upsert_agent(&agent(n)).unwrap();
    }
    assert_eq!(store.count_agents().unwrap(), 25);
    assert_eq!(store.get_agent(&agent_id(3)).unwrap(), Some(agent(3)));

    let renewed = AgentRecord { svid_serial: "ff".into(), updated_at: at(300), ..agent(3) };
    store.upsert_agent(&renewed).unwrap();
    assert_eq!(store.get_agent(&agent_id(3)).unwrap(), Some(renewed));
    assert_eq!(store.count_agents().unwrap(), 25);

    let mut page = PageRequest { token: None, size: 10 };
    let mut seen = Vec::new();
    loop {
        let got = store.list_agents(&page).unwrap();
        seen.extend(got.items.into_iter().map(|a| a.id));
        match got.next_token {
            Some(t) => page.token = Some(t),
            None => break,
        }
    }
    assert_eq!(seen, (0..25).map(agent_id).collect::<Vec<_>>());
    let bad = PageRequest { token: Some("!".into()), size: 10 };
    assert!(matches!(store.list_agents(&bad), Err(DataStoreError::BadPageToken(_))));

    store.set_agent_banned(&agent_id(4), true).unwrap();
    assert!(store.get_agent(&agent_id(4)).unwrap().unwrap().banned);
    store.set_agent_banned(&agent_id(4), false).unwrap();
    assert!(!store.get_agent(&agent_id(4)).unwrap().unwrap().banned);
    let err = store.set_agent_banned(&agent_id(99), true).unwrap_err();
    assert!(matches!(err, DataStoreError::NotFound { kind: "agent", .. }), "{err:?}");

    assert!(store.delete_agent(&agent_id(4)).unwrap());
    assert!(!store.delete_agent(&agent_id(4)).unwrap());
    assert_eq!(store.get_agent(&agent_id(4)).unwrap(), None);
    assert_eq!(store.count_agents().unwrap(), 24);
}

pub(super) fn a_renewal_keeps_the_previous_serial_until_the_new_one_is_confirmed(
    backend: &dyn Backend,
) {
    let store = backend.open();
    store.upsert_agent(&agent(1)).unwrap();
    let id = agent_id(1);
    let renew = |presented: &str, new: &str| {
        store.renew_agent_svid(&id, presented, new, at(6000), at(300)).unwrap()
    };
    assert!(renew("1", "a1"));
    let got = store.get_agent(&id).unwrap().unwrap();
    assert_eq!((got.svid_serial.as_str(), got.previous_svid_serial.as_deref()), ("a1", Some("1")));
    assert_eq!((got.svid_expires_at, got.updated_at), (at(6000), at(300)));
    // The reply was lost: the agent renews again from its old SVID; the lost one is gone.
    assert!(renew("1", "a2"));
    let got = store.get_agent(&id).unwrap().unwrap();
    assert_eq!((got.svid_serial.as_str(), got.previous_svid_serial.as_deref()), ("a2", Some("1")));
    assert!(!renew("a1", "a3"), "a superseded serial cannot renew");
    // Confirming anything but the newest serial changes nothing.
    assert!(!store.confirm_agent_svid(&id, "1").unwrap());
    assert!(store.confirm_agent_svid(&id, "a2").unwrap());
    assert!(!store.confirm_agent_svid(&id, "a2").unwrap(), "already confirmed");
    assert_eq!(store.get_agent(&id).unwrap().unwrap().previous_svid_serial, None);
    assert!(!renew("1", "a4"), "the previous serial is refused once the new one was used");
    let err = store.renew_agent_svid(&agent_id(99), "1", "2", at(1), at(1)).unwrap_err();
    assert!(matches!(err, DataStoreError::NotFound { kind: "agent", .. }), "{err:?}");
}

pub(super) fn join_tokens_are_single_use_and_expire(backend: &dyn Backend) {
    let store = backend.open();
    let reserved = agent_id(7);
    store.create_join_token(&token(1, Some(reserved.clone()), at(1000))).unwrap();
    store.create_join_token(&token(2, None, at(1000))).unwrap();
    let err = store.create_join_token(&token(1, None, at(2000))).unwrap_err();
    assert!(matches!(err, DataStoreError::AlreadyExists { kind: "join token", .. }), "{err:?}");

    assert_eq!(store.use_join_token(&[9; 32], at(10)).unwrap(), TokenUse::Unknown);
    assert_eq!(store.use_join_token(&[2; 32], at(1000)).unwrap(), TokenUse::Expired);
    assert!(store.join_token_reserves(&reserved, at(999)).unwrap());
    assert!(!store.join_token_reserves(&reserved, at(1000)).unwrap(), "expired");
    assert!(!store.join_token_reserves(&agent_id(8), at(10)).unwrap());

    let used = TokenUse::Accepted(JoinTokenRecord {
        used_at: Some(at(10)),
        ..token(1, Some(reserved.clone()), at(1000))
    });
    assert_eq!(store.use_join_token(&[1; 32], at(10)).unwrap(), used);
    assert_eq!(store.use_join_token(&[1; 32], at(11)).unwrap(), TokenUse::AlreadyUsed);
    // Used, but not expired: node attestation uses the token before it writes the agent
    // record, and the ID must not look free in between.
    assert!(store.join_token_reserves(&reserved, at(12)).unwrap(), "used, still reserved");

    store.create_join_token(&token(3, None, at(5000))).unwrap();
    assert_eq!(store.prune_join_tokens(at(1001)).unwrap(), 2);
    assert_eq!(store.use_join_token(&[1; 32], at(12)).unwrap(), TokenUse::Unknown);
    assert!(matches!(store.use_join_token(&[3; 32], at(12)).unwrap(), TokenUse::Accepted(_)));
}

pub(super) fn racing_stores_accept_a_token_exactly_once(backend: &dyn Backend) {
    backend.open().create_join_token(&token(5, None, at(1000))).unwrap();
    // Eight stores on one database, as eight server processes would have.
    let stores: Vec<Arc<dyn DataStore>> = (0..8).map(|_| backend.open()).collect();
    let barrier = Arc::new(Barrier::new(stores.len()));
    let results: Vec<TokenUse> = std::thread::scope(|s| {
        let handles: Vec<_> = stores
            .iter()
            .map(|store| {
                let barrier = barrier.clone();
                s.spawn(move || {
                    barrier.wait();
                    store.use_join_token(&[5; 32], at(10)).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let accepted = results.iter().filter(|r| matches!(r, TokenUse::Accepted(_))).count();
    let refused = results.iter().filter(|r| **r == TokenUse::AlreadyUsed).count();
    assert_eq!((accepted, refused), (1, 7), "{results:?}");
}

pub(super) fn bundles_are_stored_and_replaced_per_trust_domain(backend: &dyn Backend) {
    let store = backend.open();
    let a = TrustDomain::new("a.org").unwrap();
    let b = TrustDomain::new("b.org").unwrap();
    assert_eq!(store.get_bundle(&a).unwrap(), None);
    store.set_bundle(&a, br#"{"keys":[]}"#).unwrap();
    store.set_bundle(&b, b"{}").unwrap();
    store.set_bundle(&a, br#"{"keys":[1]}"#).unwrap();
    assert_eq!(store.get_bundle(&a).unwrap().as_deref(), Some(&br#"{"keys":[1]}"#[..]));
    assert_eq!(store.get_bundle(&b).unwrap().as_deref(), Some(&b"{}"[..]));
}

pub(super) fn an_agent_row_that_does_not_decode_is_corrupt(backend: &dyn Backend) {
    let store = backend.open();
    store.upsert_agent(&agent(1)).unwrap();
    backend.execute("UPDATE agents SET selectors = 'nonsense'");
    let err = store.get_agent(&agent_id(1)).unwrap_err();
    assert!(matches!(err, DataStoreError::Corrupt(_)), "{err:?}");
    backend.execute("UPDATE agents SET selectors = '[]', created_at = -5");
    assert!(matches!(store.get_agent(&agent_id(1)), Err(DataStoreError::Corrupt(_))));
    assert!(matches!(store.list_agents(&PageRequest::default()), Err(DataStoreError::Corrupt(_))));
}

pub(super) fn everything_survives_closing_and_reopening(backend: &dyn Backend) {
    let td = TrustDomain::new("other.org").unwrap();
    let agent = AgentRecord {
        id: SpiffeId::parse("spiffe://example.org/keycard/agent/join_token/ab").unwrap(),
        attestation_type: "join_token".into(),
        selectors: [Selector::parse("join_token:ab").unwrap()].into_iter().collect(),
        svid_serial: "01".into(),
        previous_svid_serial: Some("00".into()),
        svid_expires_at: at(900),
        banned: true,
        can_reattest: false,
        created_at: at(1),
        updated_at: at(2),
    };
    let spec = |path: &str, selector: &str| EntrySpec {
        spiffe_id: SpiffeId::parse(&format!("spiffe://example.org{path}")).unwrap(),
        parent_id: SpiffeId::parse("spiffe://example.org/keycard/server").unwrap(),
        selectors: [Selector::parse(selector).unwrap()].into_iter().collect(),
        x509_ttl: None,
        jwt_ttl: Some(Duration::from_secs(300)),
        dns_names: vec![],
        hint: String::new(),
        admin: true,
        jwt_svid_binding: crate::server::entry::JwtSvidBinding::None,
        federates_with: Vec::new(),
    };
    let (kept, deleted, before) = {
        let store = backend.open();
        let kept = store.create_entry(&spec("/kept", "unix:uid:1"), at(5)).unwrap();
        let deleted = store.create_entry(&spec("/gone", "unix:uid:2"), at(6)).unwrap();
        store.delete_entry(&deleted.id).unwrap();
        store.upsert_agent(&agent).unwrap();
        store.create_join_token(&token(3, None, at(1000))).unwrap();
        store.set_bundle(&td, b"{\"keys\":[]}").unwrap();
        store.save_journal("s1", b"{\"x509\":{}}").unwrap();
        let before = store.entry_changes_since(0, 0).unwrap();
        (kept, deleted, before)
    };
    let store = backend.open();
    assert_eq!(store.get_entry(&kept.id).unwrap(), Some(kept.clone()));
    assert_eq!(store.entry_changes_since(0, 0).unwrap(), before);
    assert_eq!(store.entry_changes_since(kept.revision, 0).unwrap().deleted, vec![deleted.id]);
    assert_eq!(store.get_agent(&agent.id).unwrap(), Some(agent));
    assert_eq!(store.get_bundle(&td).unwrap().as_deref(), Some(&b"{\"keys\":[]}"[..]));
    assert_eq!(store.load_journal("s1").unwrap().as_deref(), Some(&b"{\"x509\":{}}"[..]));
    assert!(matches!(store.use_join_token(&[3; 32], at(10)).unwrap(), TokenUse::Accepted(_)));
    // The revision counter carries on where it was.
    assert_eq!(store.create_entry(&spec("/new", "unix:uid:3"), at(7)).unwrap().revision, 4);
}

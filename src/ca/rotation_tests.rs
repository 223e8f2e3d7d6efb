//! Whole rotation cycles of the CA manager on a manual clock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keycard_workload_api::jws::CompactJws;
use keycard_workload_api::{
    SpiffeBundle, SpiffeId, TrustDomain, X509BundleSet, validate_jwt_svid, verify_chain,
};
use rustls_pki_types::{CertificateDer, SubjectPublicKeyInfoDer, UnixTime};
use x509_parser::prelude::{FromDer, ParsedExtension, X509Certificate};

use super::journal::{FileJournal, JournalError};
use super::{
    AuthorityKind, CaConfig, CaError, CaManager, DiskKeyManager, KeyManager, KeyType,
    MemoryKeyManager, SigningKey, SlotState, SvidRequest,
};
use crate::clock::{Clock, ManualClock};

const CA_TTL: Duration = Duration::from_secs(60);
const STEP: Duration = Duration::from_millis(250);

fn config() -> CaConfig {
    CaConfig {
        trust_domain: TrustDomain::new("example.org").unwrap(),
        x509_key_type: KeyType::EcP256,
        jwt_key_type: KeyType::EcP256,
        ca_ttl: CA_TTL,
        backdate: Duration::from_secs(1),
        upstream: None,
        refresh_hint: Duration::from_secs(5),
    }
}

fn open(clock: &ManualClock, keys: Arc<dyn KeyManager>, dir: &std::path::Path) -> CaManager {
    let journal = Arc::new(FileJournal(dir.join("journal.json")));
    CaManager::open(config(), keys, Arc::new(clock.clone()), journal).unwrap()
}

fn svid_request(ttl: Duration) -> SvidRequest {
    let key = SigningKey::generate(KeyType::EcP256).unwrap();
    SvidRequest {
        public_key: SubjectPublicKeyInfoDer::from(key.public_key_der()),
        spiffe_id: SpiffeId::parse("spiffe://example.org/web").unwrap(),
        dns_names: vec![],
        ttl,
    }
}

fn unix(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(t.duration_since(UNIX_EPOCH).unwrap())
}

/// The hex subject key ID of a CA certificate: the X.509 authority's ID.
fn ski(cert: &CertificateDer<'_>) -> String {
    let (_, cert) = X509Certificate::from_der(cert).unwrap();
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(hex::encode(k.0)),
            _ => None,
        })
        .unwrap()
}

/// Published IDs of both kinds in a bundle.
fn published(bundle: &SpiffeBundle) -> Vec<(AuthorityKind, String)> {
    let x509 = bundle.x509_authorities.iter().map(|c| (AuthorityKind::X509, ski(c)));
    let jwt = bundle.jwt_authorities.keys().map(|k| (AuthorityKind::Jwt, k.clone()));
    x509.chain(jwt).collect()
}

#[test]
fn every_authority_is_published_for_a_third_of_its_predecessors_life_before_it_signs() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let ca = open(&clock, Arc::new(MemoryKeyManager::new()), dir.path());
    let start = clock.now();
    let mut first_published: BTreeMap<(AuthorityKind, String), SystemTime> = BTreeMap::new();
    let mut first_signed: BTreeMap<(AuthorityKind, String), SystemTime> = BTreeMap::new();
    let mut life: BTreeMap<(AuthorityKind, String), (SystemTime, SystemTime)> = BTreeMap::new();
    let mut last_sequence = 0;
    let mut last_published = Vec::new();
    let aud = vec!["db".to_string()];
    while clock.now() < start + CA_TTL * 5 {
        ca.rotate().unwrap();
        let now = clock.now();
        let bundle = ca.bundle().unwrap();
        let ids = published(&bundle);
        for id in &ids {
            first_published.entry(id.clone()).or_insert(now);
        }
        let sequence = bundle.sequence.unwrap();
        assert!(sequence >= last_sequence, "spiffe_sequence went down");
        if ids != last_published {
            assert!(sequence > last_sequence, "bundle changed without a new sequence");
        }
        (last_sequence, last_published) = (sequence, ids);
        for kind in [AuthorityKind::X509, AuthorityKind::Jwt] {
            for a in ca.authorities(kind) {
                life.insert((kind, a.id), (a.issued_at, a.not_after));
            }
        }

        // Sign with the longest TTL allowed; the SVID verifies against today's bundle and
        // never outlives its authority.
        let issued = ca.sign_x509_svid(&svid_request(CA_TTL)).unwrap();
        let x509_key = (AuthorityKind::X509, issued.authority_id.clone());
        first_signed.entry(x509_key.clone()).or_insert(now);
        assert!(issued.svid.not_after <= life[&x509_key].1, "SVID outlives its CA");
        let x509_bundles: X509BundleSet = [bundle.x509_bundle().unwrap()].into_iter().collect();
        verify_chain(&issued.svid.chain_without_root, &x509_bundles, unix(now)).unwrap();

        let web = SpiffeId::parse("spiffe://example.org/web").unwrap();
        let minted = ca.sign_jwt_svid(&web, &aud, CA_TTL).unwrap();
        let header = CompactJws::decode(&minted.token).unwrap().header;
        let kid = header["kid"].as_str().unwrap().to_string();
        let jwt_key = (AuthorityKind::Jwt, kid);
        first_signed.entry(jwt_key.clone()).or_insert(now);
        assert!(minted.expiry <= life[&jwt_key].1, "JWT-SVID outlives its authority");
        let jwt_bundles = [bundle.jwt_bundle().unwrap()].into_iter().collect();
        validate_jwt_svid(&minted.token, &jwt_bundles, &["db"], now).unwrap();
        clock.advance(STEP);
    }
    for kind in [AuthorityKind::X509, AuthorityKind::Jwt] {
        let mut ordered: Vec<_> = life.iter().filter(|(k, _)| k.0 == kind).collect();
        ordered.sort_by_key(|(_, (issued, _))| *issued);
        assert!(ordered.len() >= 5, "{kind:?}: only {} authorities in 5 lifetimes", ordered.len());
        for pair in ordered.windows(2) {
            let (_, (pred_issued, pred_after)) = pair[0];
            let (id, _) = pair[1];
            let lead = first_signed[id].duration_since(first_published[id]).unwrap();
            let third = pred_after.duration_since(*pred_issued).unwrap() / 3;
            assert!(lead + STEP >= third, "{id:?} signed {lead:?} after publication (< {third:?})");
        }
    }
}

#[test]
fn manual_prepare_activate_taint_revoke_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    for kind in [AuthorityKind::X509, AuthorityKind::Jwt] {
        let ca = open(&clock, Arc::new(MemoryKeyManager::new()), dir.path());
        let first = ca.authorities(kind)[0].id.clone();
        let sequence = |ca: &CaManager| ca.bundle().unwrap().sequence.unwrap();
        let seq0 = sequence(&ca);
        let revoke_active = ca.revoke(kind, &first).unwrap_err();
        assert!(matches!(revoke_active, CaError::Journal(JournalError::ActiveAuthority(_))));

        let second = ca.prepare(kind).unwrap();
        assert!(sequence(&ca) > seq0);
        assert_eq!(published(&ca.bundle().unwrap()).iter().filter(|p| p.0 == kind).count(), 2);
        let again = ca.prepare(kind).unwrap_err();
        assert!(matches!(again, CaError::Journal(JournalError::AlreadyPrepared(_))));

        ca.activate(kind, &second).unwrap();
        let states: Vec<_> = ca.authorities(kind).into_iter().map(|a| (a.id, a.state)).collect();
        assert_eq!(
            states,
            vec![(first.clone(), SlotState::Old), (second.clone(), SlotState::Active)]
        );

        let err = ca.revoke(kind, &first).unwrap_err();
        assert!(matches!(err, CaError::Journal(JournalError::NotTainted(_))));
        ca.taint(kind, &first).unwrap();
        if kind == AuthorityKind::X509 {
            assert_eq!(ca.tainted_x509_authorities(), vec![first.clone()]);
        }
        assert!(ca.tainted_authorities().contains(&first), "agents are told of the taint");
        let seq1 = sequence(&ca);
        ca.revoke(kind, &first).unwrap();
        assert!(sequence(&ca) > seq1);
        let left: Vec<_> = published(&ca.bundle().unwrap());
        assert_eq!(left.iter().filter(|p| p.0 == kind).count(), 1);
        assert!(!left.iter().any(|p| p.1 == first), "revoked authority still published");
        std::fs::remove_file(dir.path().join("journal.json")).unwrap();
    }
}

#[test]
fn authorities_survive_a_restart_and_an_expired_one_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let keys_dir = dir.path().join("keys");
    let keys = || -> Arc<dyn KeyManager> { Arc::new(DiskKeyManager::open(&keys_dir).unwrap()) };
    let ca = open(&clock, keys(), dir.path());
    let before = ca.bundle().unwrap();
    let active = ca.authorities(AuthorityKind::X509)[0].clone();
    drop(ca);

    let ca = open(&clock, keys(), dir.path());
    assert_eq!(ca.bundle().unwrap(), before);
    assert_eq!(ca.authorities(AuthorityKind::X509)[0], active);
    ca.sign_x509_svid(&svid_request(Duration::from_secs(5))).unwrap();
    drop(ca);

    // The server was down for longer than the authority's life.
    clock.advance(CA_TTL * 3);
    let ca = open(&clock, keys(), dir.path());
    let now_active = ca.authorities(AuthorityKind::X509);
    assert_eq!(now_active.len(), 1, "the expired authority left the bundle");
    assert_ne!(now_active[0].id, active.id);
    assert_eq!(now_active[0].state, SlotState::Active);
    let issued = ca.sign_x509_svid(&svid_request(Duration::from_secs(5))).unwrap();
    assert_eq!(issued.authority_id, now_active[0].id);
}

use std::os::unix::fs::PermissionsExt as _;

use rustls::pki_types::SubjectPublicKeyInfoDer;

use super::*;
use crate::ca::{CaManager, KeyType, SvidRequest};

struct Fixture {
    _dir: tempfile::TempDir,
    storage: AgentStorage,
    ca: Arc<CaManager>,
    bundle: SpiffeBundle,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let storage = AgentStorage::open(&dir.path().join("agent")).unwrap();
    let ca = crate::ca::manager::test_ca(TrustDomain::new("example.org").unwrap());
    let bundle = ca.bundle().unwrap();
    Fixture { _dir: dir, storage, ca, bundle }
}

fn identity(ca: &CaManager, ttl: Duration) -> AgentIdentity {
    svid_for(ca, "spiffe://example.org/keycard/agent/join_token/t1", ttl)
}

fn svid_for(ca: &CaManager, id: &str, ttl: Duration) -> AgentIdentity {
    let key = Arc::new(SigningKey::generate(KeyType::EcP256).unwrap());
    let spiffe_id = SpiffeId::parse(id).unwrap();
    let issued = ca
        .sign_x509_svid(&SvidRequest {
            public_key: SubjectPublicKeyInfoDer::from(key.public_key_der()),
            spiffe_id: spiffe_id.clone(),
            dns_names: Vec::new(),
            ttl,
        })
        .unwrap();
    AgentIdentity {
        spiffe_id,
        chain: issued.svid.chain_without_root,
        key,
        serial: hex::encode(&issued.svid.serial),
        expires_at: issued.svid.not_after,
    }
}

#[test]
fn identity_and_bundle_round_trip_as_private_files() {
    let f = fixture();
    assert!(f.storage.load_bundle(&f.bundle.trust_domain).unwrap().is_none());
    assert!(f.storage.load_identity(&f.bundle, SystemTime::now()).unwrap().is_none());
    let id = identity(&f.ca, Duration::from_secs(600));
    f.storage.save_identity(&id).unwrap();
    f.storage.save_bundle(&f.bundle).unwrap();
    let bundle = f.storage.load_bundle(&f.bundle.trust_domain).unwrap().unwrap();
    assert_eq!(bundle, f.bundle);
    let Some(StoredIdentity::Valid(loaded)) =
        f.storage.load_identity(&bundle, SystemTime::now()).unwrap()
    else {
        panic!("expected a valid identity");
    };
    assert_eq!(loaded.spiffe_id, id.spiffe_id);
    assert_eq!(loaded.chain, id.chain);
    assert_eq!(loaded.serial, id.serial);
    assert_eq!(loaded.key.public_key_der(), id.key.public_key_der());
    assert_eq!(loaded.expires_at, id.expires_at);
    for name in [AGENT_SVID_FILE, BUNDLE_FILE] {
        let mode = std::fs::metadata(f.storage.dir().join(name)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    let mode = std::fs::metadata(f.storage.dir()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[test]
fn an_expired_identity_is_reported_as_such() {
    let f = fixture();
    let id = identity(&f.ca, Duration::from_secs(60));
    f.storage.save_identity(&id).unwrap();
    let later = id.expires_at + Duration::from_secs(1);
    match f.storage.load_identity(&f.bundle, later).unwrap() {
        Some(StoredIdentity::Expired { spiffe_id, expired_at }) => {
            assert_eq!(spiffe_id, id.spiffe_id);
            assert_eq!(expired_at, id.expires_at);
        }
        other => panic!("expected Expired, got {other:?}"),
    }
}

#[test]
fn damaged_or_foreign_state_is_refused_with_the_file_named() {
    let f = fixture();
    let id = identity(&f.ca, Duration::from_secs(600));
    f.storage.save_identity(&id).unwrap();
    // Another CA's bundle: the chain does not verify.
    let other = crate::ca::manager::test_ca(TrustDomain::new("example.org").unwrap());
    let e = f.storage.load_identity(&other.bundle().unwrap(), SystemTime::now()).unwrap_err();
    assert!(e.to_string().contains("agent_svid.pem") && e.to_string().contains("verify"), "{e}");
    // Another trust domain's bundle.
    let foreign = crate::ca::manager::test_ca(TrustDomain::new("example.com").unwrap());
    let e = f.storage.load_identity(&foreign.bundle().unwrap(), SystemTime::now()).unwrap_err();
    assert!(e.to_string().contains("not in trust domain"), "{e}");
    // A key that is not the certificate's.
    let path = f.storage.dir().join(AGENT_SVID_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    let cert_part = &text[..text.find("-----BEGIN PRIVATE KEY").unwrap()];
    let other_key = SigningKey::generate(KeyType::EcP256).unwrap();
    let swapped = format!(
        "{cert_part}{}",
        pem::encode(&pem::Pem::new("PRIVATE KEY", other_key.key_pair().serialize_der()))
    );
    std::fs::write(&path, swapped).unwrap();
    let e = f.storage.load_identity(&f.bundle, SystemTime::now()).unwrap_err();
    assert!(e.to_string().contains("does not match the key"), "{e}");
    // Garbage.
    std::fs::write(&path, "not pem").unwrap();
    let e = f.storage.load_identity(&f.bundle, SystemTime::now()).unwrap_err();
    assert!(e.to_string().contains("attest the agent again"), "{e}");
    std::fs::write(f.storage.dir().join(BUNDLE_FILE), "{").unwrap();
    let e = f.storage.load_bundle(&f.bundle.trust_domain).unwrap_err();
    assert!(e.to_string().contains("bundle.json"), "{e}");
}

/// Puts `svid` in `agent_svid.pem` by hand, as someone copying files would.
fn plant(storage: &AgentStorage, svid: &AgentIdentity) {
    let mut text: String =
        svid.chain.iter().map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.to_vec()))).collect();
    let key = svid.key.key_pair().serialize_der();
    text.push_str(&pem::encode(&pem::Pem::new("PRIVATE KEY", key)));
    std::fs::write(storage.dir().join(AGENT_SVID_FILE), text).unwrap();
}

#[test]
fn a_workload_svid_in_agent_svid_pem_is_refused_as_the_agents_identity() {
    let f = fixture();
    f.storage.save_bundle(&f.bundle).unwrap();
    // A valid SVID of the trust domain, signed by the agent's own CA, key matching: but a
    // workload's (what `keycard api fetch --write` leaves in svid.0.pem and svid.0.key).
    let workload = svid_for(&f.ca, "spiffe://example.org/web", Duration::from_secs(600));
    plant(&f.storage, &workload);
    let e = f.storage.load_identity(&f.bundle, SystemTime::now()).unwrap_err();
    assert!(matches!(e, StorageError::NotAnAgent { .. }), "{e:?}");
    let e = e.to_string();
    assert!(
        e.contains("agent_svid.pem")
            && e.contains("spiffe://example.org/web is not an agent ID")
            && e.contains("/keycard/agent/"),
        "{e}"
    );

    // An agent ID an operator chose for a join token (outside /keycard/agent/) is the
    // agent's once recorded at attestation, which storing the SVID does.
    let chosen = svid_for(&f.ca, "spiffe://example.org/nodes/n1", Duration::from_secs(600));
    f.storage.save_identity(&chosen).unwrap();
    let loaded = f.storage.load_identity(&f.bundle, SystemTime::now()).unwrap();
    assert!(
        matches!(loaded, Some(StoredIdentity::Valid(ref id)) if id.spiffe_id == chosen.spiffe_id)
    );
    // A workload SVID still is not; the message names the recorded ID.
    plant(&f.storage, &workload);
    let e = f.storage.load_identity(&f.bundle, SystemTime::now()).unwrap_err().to_string();
    assert!(e.contains("recorded agent ID spiffe://example.org/nodes/n1"), "{e}");
}

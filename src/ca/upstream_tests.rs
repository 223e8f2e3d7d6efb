//! Tests of upstream (intermediate) authorities, of reloading an authority from disk, and
//! of minted chains with `openssl verify`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keycard_workload_api::TrustDomain;
use rustls_pki_types::CertificateDer;

use super::svid_tests::{aki, clock, new_ca, parse, request, secs, td, webpki_verify};
use super::*;
use crate::clock::Clock;
use crate::fsutil;

const HOUR: Duration = Duration::from_secs(3600);

/// Writes `certs` (PEM, in order) and `key` (PKCS#8 PEM) to `dir`, returning the paths.
fn write_upstream(
    dir: &Path,
    certs: &[&CertificateDer<'_>],
    key: &SigningKey,
) -> (PathBuf, PathBuf) {
    let pem_text: String =
        certs.iter().map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.to_vec()))).collect();
    let (cert_path, key_path) = (dir.join("upstream.pem"), dir.join("upstream.key"));
    fsutil::write_atomic(&cert_path, pem_text.as_bytes(), 0o644).unwrap();
    fsutil::write_private_atomic(&key_path, key.key_pair().serialize_pem().as_bytes()).unwrap();
    (cert_path, key_path)
}

#[test]
fn upstream_mode_chains_to_the_upstream_root() {
    let clock = clock();
    let dir = tempfile::tempdir().unwrap();
    // An operator PKI: root -> upstream intermediate, both made by us for the test.
    let root = new_ca(48 * HOUR, &clock);
    let up_opts = AuthorityOptions::new(TrustDomain::new("corp.example").unwrap(), 10 * HOUR);
    let up_key = SigningKey::generate(KeyType::EcP384).unwrap();
    let up_key_copy = SigningKey::from_pkcs8_pem(&up_key.key_pair().serialize_pem()).unwrap();
    let root_upstream = UpstreamAuthority::new(
        vec![root.certificate().clone()],
        SigningKey::from_pkcs8_pem(&root.key().key_pair().serialize_pem()).unwrap(),
    )
    .unwrap();
    let mid = X509Authority::signed_by_upstream(&up_opts, Arc::new(up_key), &root_upstream, &clock)
        .unwrap();
    let (cert_path, key_path) =
        write_upstream(dir.path(), &[mid.certificate(), root.certificate()], &up_key_copy);
    let upstream = UpstreamAuthority::load(&cert_path, &key_path).unwrap();
    assert_eq!(upstream.root(), root.certificate());

    let key = Arc::new(SigningKey::generate(KeyType::EcP256).unwrap());
    let ca = X509Authority::signed_by_upstream(
        &AuthorityOptions::new(td(), 24 * HOUR),
        key,
        &upstream,
        &clock,
    )
    .unwrap();
    assert_eq!(ca.root(), root.certificate());
    assert_eq!(ca.chain_without_root(), [ca.certificate().clone(), mid.certificate().clone()]);
    assert_eq!(ca.trust_domain(), &td());
    // The intermediate cannot outlive its upstream (10 h), though 24 h were asked for.
    assert_eq!(ca.not_after(), mid.not_after());
    let ca_cert = parse(ca.certificate());
    assert_eq!(aki(&ca_cert).as_deref(), mid.subject_key_id());
    assert_eq!(ca_cert.issuer().as_raw(), parse(mid.certificate()).subject().as_raw());

    let (req, _k) = request("spiffe://example.org/db", &["db.internal"], HOUR);
    let svid = ca.sign_x509_svid(&req, &clock).unwrap();
    assert_eq!(svid.chain_without_root.len(), 3);
    assert_eq!(&svid.chain_without_root[1..], ca.chain_without_root());
    webpki_verify(&svid, ca.root(), clock.now());
    openssl_verify(dir.path(), ca.root(), &svid.chain_without_root, clock.now());

    // Reload in upstream mode.
    let again = X509Authority::load(
        ca.certificate().clone(),
        ca.upstream_chain().to_vec(),
        ca.key().clone(),
        DEFAULT_BACKDATE,
    )
    .unwrap();
    assert_eq!(again.chain_without_root(), ca.chain_without_root());
    assert_eq!(again.root(), ca.root());
}

#[test]
fn upstream_files_that_break_a_rule_are_refused() {
    let clock = clock();
    let dir = tempfile::tempdir().unwrap();
    let root = new_ca(HOUR, &clock);
    let other = SigningKey::generate(KeyType::EcP256).unwrap();
    let (c, k) = write_upstream(dir.path(), &[root.certificate()], &other);
    assert!(matches!(UpstreamAuthority::load(&c, &k), Err(CaError::KeyMismatch)));

    // An intermediate alone, without its root, is not a complete chain.
    let root_up = UpstreamAuthority::new(
        vec![root.certificate().clone()],
        SigningKey::from_pkcs8_pem(&root.key().key_pair().serialize_pem()).unwrap(),
    )
    .unwrap();
    let mid_key = SigningKey::generate(KeyType::EcP256).unwrap();
    let mid_pem = mid_key.key_pair().serialize_pem();
    let mid = X509Authority::signed_by_upstream(
        &AuthorityOptions::new(td(), HOUR),
        Arc::new(mid_key),
        &root_up,
        &clock,
    )
    .unwrap();
    let (c, k) = write_upstream(
        dir.path(),
        &[mid.certificate()],
        &SigningKey::from_pkcs8_pem(&mid_pem).unwrap(),
    );
    assert!(matches!(UpstreamAuthority::load(&c, &k), Err(CaError::UpstreamChainWithoutRoot)));

    // A leaf is not a CA.
    let (req, leaf_key) = request("spiffe://example.org/a", &[], Duration::from_secs(60));
    let svid = root.sign_x509_svid(&req, &clock).unwrap();
    let (c, k) = write_upstream(dir.path(), &[&svid.leaf, root.certificate()], &leaf_key);
    assert!(matches!(UpstreamAuthority::load(&c, &k), Err(CaError::InvalidCaCertificate(_))));
}

#[test]
fn reload_from_disk_keeps_the_same_certificate_and_key() {
    let clock = clock();
    let dir = tempfile::tempdir().unwrap();
    let id = KeyId::new("x509-ca-a").unwrap();
    let cert_path = dir.path().join("ca.der");
    let original = {
        let keys = DiskKeyManager::open(dir.path().join("keys")).unwrap();
        let key = keys.generate(&id, KeyType::EcP256).unwrap();
        let ca =
            X509Authority::self_signed(&AuthorityOptions::new(td(), HOUR), key, &clock).unwrap();
        fsutil::write_atomic(&cert_path, ca.certificate(), 0o644).unwrap();
        ca
    };

    let keys = DiskKeyManager::open(dir.path().join("keys")).unwrap();
    let key = keys.get(&id).unwrap().unwrap();
    let cert = CertificateDer::from(std::fs::read(&cert_path).unwrap());
    let reloaded = X509Authority::load(cert, Vec::new(), key, DEFAULT_BACKDATE).unwrap();
    assert_eq!(reloaded.certificate(), original.certificate());
    assert_eq!(reloaded.key().public_key_der(), original.key().public_key_der());
    assert_eq!(reloaded.subject_key_id(), original.subject_key_id());
    assert_eq!(reloaded.not_after(), original.not_after());
    assert_eq!(reloaded.trust_domain(), &td());

    let (req, _k) = request("spiffe://example.org/after-restart", &[], Duration::from_secs(300));
    let svid = reloaded.sign_x509_svid(&req, &clock).unwrap();
    webpki_verify(&svid, original.root(), clock.now());

    let wrong = Arc::new(SigningKey::generate(KeyType::EcP256).unwrap());
    let err =
        X509Authority::load(original.certificate().clone(), Vec::new(), wrong, DEFAULT_BACKDATE);
    assert!(matches!(err, Err(CaError::KeyMismatch)));
}

/// Runs `openssl verify -x509_strict` on a chain (leaf first) against `root`, at time `at`.
pub(super) fn openssl_verify(
    dir: &Path,
    root: &CertificateDer<'_>,
    chain: &[CertificateDer<'_>],
    at: SystemTime,
) {
    let to_pem = |c: &CertificateDer<'_>| pem::encode(&pem::Pem::new("CERTIFICATE", c.to_vec()));
    std::fs::write(dir.join("ca.pem"), to_pem(root)).unwrap();
    std::fs::write(dir.join("leaf.pem"), to_pem(&chain[0])).unwrap();
    let untrusted: String = chain[1..].iter().map(to_pem).collect();
    std::fs::write(dir.join("untrusted.pem"), &untrusted).unwrap();
    let mut cmd = Command::new("openssl");
    cmd.current_dir(dir).args(["verify", "-x509_strict", "-CAfile", "ca.pem"]);
    cmd.args(["-attime", &secs(at).to_string()]);
    if !untrusted.is_empty() {
        cmd.args(["-untrusted", "untrusted.pem"]);
    }
    let out = cmd.arg("leaf.pem").output().expect("the openssl binary must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("leaf.pem: OK"),
        "openssl verify failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn openssl_x509_strict_accepts_a_minted_svid() {
    let clock = clock();
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(HOUR, &clock);
    let (req, _k) =
        request("spiffe://example.org/ns/a", &["a.example.org"], Duration::from_secs(600));
    let svid = ca.sign_x509_svid(&req, &clock).unwrap();
    openssl_verify(dir.path(), ca.root(), &svid.chain_without_root, clock.now());
}

#[test]
fn csr_from_openssl_with_an_rsa_key_becomes_an_svid_with_that_key() {
    let clock = clock();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("openssl")
        .current_dir(dir.path())
        .args(["req", "-new", "-nodes", "-newkey", "rsa:2048", "-keyout", "k.pem"])
        .args(["-subj", "/CN=ignored", "-outform", "DER", "-out", "csr.der"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let csr = verify_csr(&std::fs::read(dir.path().join("csr.der")).unwrap(), DEFAULT_MAX_CSR_LEN)
        .unwrap();
    let ca = new_ca(HOUR, &clock);
    let (mut req, _k) = request("spiffe://example.org/rsa", &[], Duration::from_secs(60));
    req.public_key = csr.into_public_key();
    let svid = ca.sign_x509_svid(&req, &clock).unwrap();
    assert_eq!(parse(&svid.leaf).public_key().raw, req.public_key.as_ref());
    webpki_verify(&svid, ca.root(), clock.now());
    openssl_verify(dir.path(), ca.root(), &svid.chain_without_root, clock.now());
}

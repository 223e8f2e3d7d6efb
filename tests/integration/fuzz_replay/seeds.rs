//! The seed corpora of the fuzz targets, made from certs-dev, real tokens, real CSRs and
//! real HPACK-encoded frames, and a test that the good seeds are accepted by keycard (so
//! the invariants of every target are exercised by the replay, not only its refusals).
//!
//! `cargo test --test integration fuzz_replay::seeds::write_seeds -- --ignored` rewrites
//! tests/fuzz/corpus/<target>/ seed files (named by the SHA-1 of their content, as
//! libFuzzer names its own); files the fuzzer added are left alone.

use keycard::wire::proto as pb;
use serde_json::json;

use super::{common, disk_cache, file_seeds, fuzz_dir, jwt_svid};

/// ring's ECDSA P-256 key pair from certs-dev PKCS#8 PEM, for fixed-length signatures.
fn ecdsa_fixed(pem: &str) -> ring::signature::EcdsaKeyPair {
    let rng = ring::rand::SystemRandom::new();
    let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    ring::signature::EcdsaKeyPair::from_pkcs8(alg, &common::pem_first(pem), &rng).unwrap()
}

/// A PKCS#10 request made by rcgen with `key`, asking for these URI SANs and CA flag.
fn csr(alg: &'static rcgen::SignatureAlgorithm, uris: &[&str], ca: bool) -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["web.example.org".to_owned()]).unwrap();
    for uri in uris {
        params.subject_alt_names.push(rcgen::SanType::URI((*uri).try_into().unwrap()));
    }
    if ca {
        // rcgen will not ask for a CA in a CSR; write the extension (cA TRUE) by hand.
        let content = vec![0x30, 0x03, 0x01, 0x01, 0xff];
        let bc = rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 19], content);
        params.custom_extensions.push(bc);
    }
    params.serialize_request(&key).unwrap().der().to_vec()
}

/// An RSA CSR made by the openssl binary (ring cannot make RSA keys), if openssl runs.
fn openssl_csr(bits: u32, digest: &str) -> Option<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("csr.der");
    let status = std::process::Command::new("openssl")
        .args(["req", "-new", "-nodes", "-subj", "/CN=x", digest, "-newkey"])
        .arg(format!("rsa:{bits}"))
        .arg("-keyout")
        .arg(dir.path().join("k.pem"))
        .args(["-outform", "DER", "-out"])
        .arg(&out)
        .output()
        .ok()?;
    status.status.success().then(|| std::fs::read(out).unwrap())
}

/// The TBSCertificate of the first certificate of a PEM text.
fn tbs_of(pem: &str) -> Vec<u8> {
    let cert = common::pem_first(pem);
    let content = common::der_split(&cert).unwrap().content;
    common::der_split(content).unwrap().whole.to_vec()
}

fn spiffe_id_seeds() -> Vec<Vec<u8>> {
    let long_td = format!("spiffe://{}/a", "d".repeat(255));
    let long_path = format!("spiffe://example.org/{}", "p".repeat(2048 - 21));
    [
        "spiffe://example.org/workload/web",
        "spiffe://example.org",
        "example.org",
        "spiffe://192.168.1.1/ns/prod/sa-1_x.y",
        "spiffe://Example.org/a",
        "SPIFFE://example.org/a",
        "spiffe://example.org:8080/a",
        "spiffe://user@example.org/a",
        "spiffe://example.org/a?q=1",
        "spiffe://example.org/a#f",
        "spiffe://example.org/a%20b",
        "spiffe://example.org//a",
        "spiffe://example.org/./a",
        "spiffe://example.org/a/..",
        "spiffe://example.org/a/",
        "spiffe:///a",
        "https://example.org/a",
        "spiffe://[::1]/a",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .chain([long_td.into_bytes(), long_path.into_bytes()])
    .collect()
}

fn csr_seeds() -> Vec<Vec<u8>> {
    let web = "spiffe://example.org/workload/web";
    let mut seeds = vec![
        csr(&rcgen::PKCS_ECDSA_P256_SHA256, &[], false),
        csr(&rcgen::PKCS_ECDSA_P256_SHA256, &[web], false),
        csr(&rcgen::PKCS_ECDSA_P384_SHA384, &[], false),
        csr(&rcgen::PKCS_ED25519, &[], false),
        csr(&rcgen::PKCS_ECDSA_P256_SHA256, &[web], true),
        csr(&rcgen::PKCS_ECDSA_P256_SHA256, &[web, "spiffe://example.org/other"], false),
        csr(&rcgen::PKCS_ECDSA_P256_SHA256, &["spiffe://example.com/web"], false),
    ];
    seeds.extend(
        [(2048, "-sha256"), (1024, "-sha256"), (2048, "-sha1")]
            .iter()
            .filter_map(|&(bits, digest)| openssl_csr(bits, digest)),
    );
    seeds
}

fn x509_svid_seeds() -> Vec<Vec<u8>> {
    let mut seeds = vec![tbs_of(common::SVID_PEM)];
    let bad = fuzz_dir().join("../../certs-dev/bad");
    let mut names: Vec<_> = std::fs::read_dir(&bad).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    for path in names {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".pem") || name.ends_with(".key.pem") {
            continue;
        }
        let Ok(blocks) = pem::parse_many(std::fs::read_to_string(&path).unwrap()) else {
            continue;
        };
        let cert = blocks.first().and_then(|b| common::der_split(b.contents()));
        if let Some(tbs) = cert.and_then(|c| common::der_split(c.content)) {
            seeds.push(tbs.whole.to_vec());
        }
    }
    seeds
}

/// The good X.509 bundle document (the disk cache's stored bundle).
pub(super) fn good_bundle_json() -> String {
    disk_cache::stored_bundle().to_json().unwrap()
}

fn bundle_json_seeds() -> Vec<Vec<u8>> {
    let mut with_jwt = disk_cache::stored_bundle();
    let signer =
        keycard_workload_api::Es256Signer::from_pkcs8(&common::pem_first(common::SVID_KEY_PEM))
            .unwrap();
    with_jwt.jwt_authorities.insert("k1".into(), signer.public_jwk().clone());
    vec![
        good_bundle_json().into_bytes(),
        with_jwt.to_json().unwrap().into_bytes(),
        br#"{"keys":[]}"#.to_vec(),
        br#"{"keys":[{"use":"jwt-svid","kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}"#.to_vec(),
        br#"{"keys":[{"use":"other"}],"spiffe_sequence":3,"spiffe_refresh_hint":60}"#.to_vec(),
    ]
}

/// Claims of a JWT-SVID with `iat` now.
pub(super) fn claims(sub: &str, aud: serde_json::Value, exp: i64) -> Vec<u8> {
    let now = common::NOW_SECS as i64;
    json!({"sub": sub, "aud": aud, "exp": exp, "iat": now}).to_string().into_bytes()
}

fn jwt_svid_seeds() -> Vec<Vec<u8>> {
    let now = common::NOW_SECS as i64;
    let web = "spiffe://example.org/workload/web";
    let header = br#"{"alg":"ES256","kid":"fuzz-kid","typ":"JWT"}"#.to_vec();
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (header.clone(), claims(web, json!(["fuzz-audience"]), now + 300)),
        (header.clone(), claims(web, json!("fuzz-audience"), now + 300)),
        (header.clone(), claims(web, json!(["other"]), now + 300)),
        (header.clone(), claims(web, json!(["fuzz-audience"]), now - 31)),
        (header.clone(), claims("spiffe://example.org", json!(["fuzz-audience"]), now + 300)),
        (br#"{"alg":"none","kid":"fuzz-kid"}"#.to_vec(), claims(web, json!("x"), now + 9)),
        (br#"{"alg":"HS256","kid":"fuzz-kid"}"#.to_vec(), claims(web, json!("x"), now + 9)),
        (br#"{"alg":"ES256","kid":"fuzz-kid","crit":["b"]}"#.to_vec(), claims(web, json!("x"), 0)),
        (br#"{"alg":"ES256","kid":"fuzz-kid","typ":"at+jwt"}"#.to_vec(), claims(web, json!(1), 0)),
    ];
    let mut seeds = Vec::new();
    for (h, p) in pairs {
        let mut signed = vec![0u8];
        signed.extend_from_slice(jwt_svid::sign(&h, &p).as_bytes());
        seeds.push(signed);
        let mut raw = vec![1u8];
        raw.extend_from_slice(&h);
        raw.push(b'\n');
        raw.extend_from_slice(&p);
        seeds.push(raw);
    }
    seeds
}

fn tagged(kind: u8, message: &impl prost::Message) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&message.encode_to_vec());
    out
}

fn workload_request_seeds() -> Vec<Vec<u8>> {
    use keycard_workload_api::proto::{JwtsvidRequest, ValidateJwtsvidRequest};
    let token = jwt_svid::sign(
        br#"{"alg":"ES256","kid":"fuzz-kid"}"#,
        &claims("spiffe://example.org/w", json!("fuzz-audience"), 1 << 40),
    );
    let jwt = |audience: Vec<String>| JwtsvidRequest { audience, spiffe_id: String::new() };
    vec![
        vec![0],
        vec![1],
        vec![2],
        tagged(3, &jwt(vec!["fuzz-audience".into(), "b".into(), "b".into()])),
        tagged(
            3,
            &JwtsvidRequest {
                audience: vec!["a".into()],
                spiffe_id: "spiffe://example.org/w".into(),
            },
        ),
        tagged(3, &jwt((0..33).map(|i| format!("aud{i}")).collect())),
        tagged(3, &jwt(vec![String::new()])),
        tagged(3, &jwt(vec!["x".repeat(257)])),
        tagged(4, &ValidateJwtsvidRequest { audience: "fuzz-audience".into(), svid: token }),
    ]
}

fn agent_api_seeds() -> Vec<Vec<u8>> {
    use pb::attest_agent_request::Step;
    use pb::attestation_params::Data;
    let p256 = csr(&rcgen::PKCS_ECDSA_P256_SHA256, &[], false);
    let attest = |data: Data| pb::AttestAgentRequest {
        step: Some(Step::Params(pb::AttestationParams { data: Some(data), csr: p256.clone() })),
    };
    let node1 = common::pem_first(common::NODE1_PEM);
    let node2 = common::pem_first(common::NODE2_PEM);
    let rng = ring::rand::SystemRandom::new();
    let message = keycard::wire::challenge_message(&super::agent_api::NONCE);
    let signature = ecdsa_fixed(common::NODE1_KEY_PEM).sign(&rng, &message).unwrap();
    let challenge = pb::AttestAgentRequest {
        step: Some(Step::ChallengeResponse(pb::ChallengeResponse {
            signature: signature.as_ref().to_vec(),
        })),
    };
    let web = super::agent_api::ENTRY_ID;
    let batch = pb::BatchNewX509SvidRequest {
        params: vec![
            pb::NewX509SvidParams {
                entry_id: "e1".into(),
                csr: csr(&rcgen::PKCS_ECDSA_P256_SHA256, &[web], false),
            },
            pb::NewX509SvidParams {
                entry_id: "e2".into(),
                csr: csr(&rcgen::PKCS_ECDSA_P256_SHA256, &["spiffe://example.org/other"], false),
            },
        ],
    };
    vec![
        tagged(0, &attest(Data::JoinToken(pb::JoinTokenAttestation { token: "3f1c9a".into() }))),
        tagged(0, &attest(Data::X509pop(pb::X509PopAttestation { cert_chain: vec![node1] }))),
        tagged(0, &attest(Data::X509pop(pb::X509PopAttestation { cert_chain: vec![node2] }))),
        tagged(0, &challenge),
        tagged(1, &pb::RenewAgentRequest { csr: p256.clone() }),
        tagged(2, &batch),
        tagged(
            3,
            &pb::NewJwtSvidRequest {
                entry_id: "e1".into(),
                audiences: vec!["a".into()],
                x509_svid: vec![],
            },
        ),
        tagged(
            4,
            &pb::SyncEntriesRequest { since_revision: 3, by_cursor: true, ..Default::default() },
        ),
    ]
}

/// Every target's seeds.
fn all_seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    vec![
        ("spiffe_id", spiffe_id_seeds()),
        ("csr", csr_seeds()),
        ("x509_svid", x509_svid_seeds()),
        ("bundle_json", bundle_json_seeds()),
        ("jwt_svid", jwt_svid_seeds()),
        ("workload_request", workload_request_seeds()),
        ("agent_api", agent_api_seeds()),
        ("h2_authority", file_seeds::h2_authority_seeds()),
        ("disk_cache", file_seeds::disk_cache_seeds()),
        ("config", file_seeds::config_seeds()),
    ]
}

#[test]
#[ignore = "writes the seed files into the source tree; run by hand"]
fn write_seeds() {
    for (target, seeds) in all_seeds() {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for seed in seeds {
            let name =
                hex::encode(ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &seed));
            std::fs::write(dir.join(name), &seed).unwrap();
        }
    }
}

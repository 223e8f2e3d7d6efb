//! The bad-input matrix of issue 4: every case gets its own status and no certificate.

use std::process::Command;
use std::time::{Duration, SystemTime};

use rcgen::{CustomExtension, SanType};
use tonic::Code;

use super::*;
use crate::agent::ClientError;

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

fn openssl_rsa1024_csr() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("csr.der");
    let run = Command::new("openssl")
        .args(["req", "-new", "-nodes", "-subj", "/CN=x", "-sha256", "-newkey", "rsa:1024"])
        .args(["-keyout", dir.path().join("k.pem").to_str().unwrap()])
        .args(["-outform", "DER", "-out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    std::fs::read(out).unwrap()
}

fn extensions(n: u64, content_len: usize) -> Vec<CustomExtension> {
    (0..n)
        .map(|i| {
            CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 99999, i], vec![0; content_len])
        })
        .collect()
}

fn status_code(err: ClientError) -> Code {
    match err {
        ClientError::Rpc(status) => status.code(),
        other => panic!("expected a gRPC status, got {other}"),
    }
}

#[tokio::test]
async fn bad_inputs_get_the_right_status_and_no_certificate() {
    let h = Harness::start().await;
    let mut agent = h.agent().await;
    let me = agent.identity().unwrap().spiffe_id.clone();
    let other = h.agent().await.identity().unwrap().spiffe_id.clone();
    let web = h.entry("spiffe://example.org/web", &me, &["unix:uid:1"]);
    let theirs = h.entry("spiffe://example.org/theirs", &other, &["unix:uid:1"]);
    let agent_svids_before = h.metrics.issued_total("x509", "agent");

    let good = csr();
    let mut trailing = good.clone();
    trailing.push(0);
    let mut bad_signature = good.clone();
    let last = bad_signature.len() - 1;
    bad_signature[last] ^= 0x01;
    let pem = {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap()
            .into_bytes()
    };
    let cases: Vec<(&str, String, Vec<u8>, Code)> = vec![
        ("empty", web.id.clone(), Vec::new(), Code::InvalidArgument),
        ("truncated", web.id.clone(), good[..good.len() / 2].to_vec(), Code::InvalidArgument),
        ("trailing bytes", web.id.clone(), trailing, Code::InvalidArgument),
        ("bad signature", web.id.clone(), bad_signature, Code::InvalidArgument),
        ("RSA-1024", web.id.clone(), openssl_rsa1024_csr(), Code::InvalidArgument),
        ("PEM for DER", web.id.clone(), pem, Code::InvalidArgument),
        (
            "over the size cap",
            web.id.clone(),
            csr_with(|p| p.custom_extensions = extensions(1, 9000)),
            Code::InvalidArgument,
        ),
        (
            "thousands of extensions",
            web.id.clone(),
            csr_with(|p| p.custom_extensions = extensions(2000, 0)),
            Code::InvalidArgument,
        ),
        (
            "dozens of extensions under the cap",
            web.id.clone(),
            csr_with(|p| p.custom_extensions = extensions(100, 0)),
            Code::InvalidArgument,
        ),
        (
            "asks for CA",
            web.id.clone(),
            csr_with(|p| {
                p.custom_extensions = vec![crate::server::agent_api::csr_check::tests::ca_true()]
            }),
            Code::InvalidArgument,
        ),
        (
            "asks for another ID",
            web.id.clone(),
            csr_with(|p| p.subject_alt_names = vec![uri("spiffe://example.org/admin")]),
            Code::InvalidArgument,
        ),
        (
            "two URI SANs",
            web.id.clone(),
            csr_with(|p| {
                p.subject_alt_names =
                    vec![uri("spiffe://example.org/web"), uri("spiffe://example.org/db")]
            }),
            Code::InvalidArgument,
        ),
        (
            "foreign trust domain",
            web.id.clone(),
            csr_with(|p| p.subject_alt_names = vec![uri("spiffe://example.com/web")]),
            Code::InvalidArgument,
        ),
        ("entry not authorized for this agent", theirs.id.clone(), csr(), Code::PermissionDenied),
        ("unknown entry", "00000000-0000-4000-8000-000000000000".into(), csr(), Code::NotFound),
    ];
    let mut count = 0;
    for (name, entry_id, csr, want) in &cases {
        let results = agent.batch_new_x509_svid(&[(entry_id.clone(), csr.clone())]).await.unwrap();
        let status = results[0].as_ref().expect_err(name);
        assert_eq!(status.code(), *want, "{name}: {}", status.message());
        count += 1;
    }

    // A batch over the limit is refused as a whole.
    let too_many: Vec<(String, Vec<u8>)> =
        (0..=MAX_BATCH).map(|_| (web.id.clone(), good.clone())).collect();
    let err = agent.batch_new_x509_svid(&too_many).await.unwrap_err();
    assert_eq!(status_code(err), Code::InvalidArgument, "batch over the limit");
    count += 1;
    // A request over the message size limit is refused before it is decoded.
    let huge = vec![(web.id.clone(), vec![0u8; MAX_MESSAGE_SIZE + 1])];
    assert!(agent.batch_new_x509_svid(&huge).await.is_err(), "huge request");
    count += 1;
    // Renewal with a bad CSR.
    let err = agent
        .grpc()
        .renew_agent(pb::RenewAgentRequest { csr: b"junk".to_vec() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "renewal with a bad CSR");
    count += 1;

    // Join tokens: reused, expired, unknown.
    let token = h.token();
    h.client().await.attest_join_token(&token).await.unwrap();
    let agent_svids_before = agent_svids_before + 1;
    let reused = h.client().await.attest_join_token(&token).await.unwrap_err();
    let ClientError::Rpc(reused) = reused else { panic!("reused token: {reused}") };
    assert_eq!(reused.code(), Code::PermissionDenied);
    assert!(reused.message().contains("already used"), "{}", reused.message());
    let (expired, _) = h.token_expiring_at(SystemTime::now() - Duration::from_secs(1));
    let expired = h.client().await.attest_join_token(&expired).await.unwrap_err();
    let ClientError::Rpc(expired) = expired else { panic!("expired token: {expired}") };
    assert_eq!(expired.code(), Code::PermissionDenied);
    assert!(expired.message().contains("expired"), "{}", expired.message());
    let unknown = h.client().await.attest_join_token("no-such-token").await.unwrap_err();
    assert_eq!(status_code(unknown), Code::PermissionDenied, "unknown token");
    // A bad agent CSR is refused before the token is spent.
    let fresh = h.token();
    let mut raw = h.client().await;
    let first = pb::AttestAgentRequest {
        step: Some(pb::attest_agent_request::Step::Params(pb::AttestationParams {
            data: Some(pb::attestation_params::Data::JoinToken(pb::JoinTokenAttestation {
                token: fresh.clone(),
            })),
            csr: b"junk".to_vec(),
        })),
    };
    let err = async {
        let mut s = raw.grpc().attest_agent(tokio_stream::iter(vec![first])).await?.into_inner();
        s.message().await.map(|_| ())
    }
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "bad agent CSR");
    h.client().await.attest_join_token(&fresh).await.expect("the token was not spent");
    count += 4;

    assert!(count >= 16, "{count} cases");
    assert_eq!(h.metrics.issued_total("x509", "workload"), 0);
    assert_eq!(h.metrics.issued_total("x509", "agent"), agent_svids_before + 1);
}

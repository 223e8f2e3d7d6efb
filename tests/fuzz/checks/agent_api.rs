//! The agent API (keycard's own protos) as the server receives it: byte 0 picks the
//! message, the rest is its protobuf encoding, which must round-trip. Then each message
//! goes through the server-side checks it meets before any datastore work:
//! - AttestAgentRequest params: the CSR (`check_csr`: accepted means sound, see
//!   csr.rs); a join token's hash and ID match SHA-256 computed here; an x509pop chain
//!   (`verify_node_chain` against certs-dev's node CA) yields an agent ID in the trust
//!   domain named by the SHA-1 of the leaf, and selectors that include the leaf's CN.
//! - AttestAgentRequest challenge response: `verify_challenge` over a fixed nonce with
//!   node1's certificate accepts only what `ring` verifies with node1's key.
//! - RenewAgentRequest, BatchNewX509SvidRequest: `check_csr`, with the entry's ID given.
//! - NewJwtSvidRequest: the audience rule (see common.rs).

use keycard::ca::DEFAULT_MAX_CSR_LEN;
use keycard::server::agent_api::attest::{verify_challenge, verify_node_chain};
use keycard::server::agent_api::csr_check::check_csr;
use keycard::server::join_token::{hash_token, token_id};
use keycard::wire::proto::{
    AttestAgentRequest, BatchNewX509SvidRequest, NewJwtSvidRequest, RenewAgentRequest,
    SyncEntriesRequest, attest_agent_request::Step, attestation_params::Data,
};
use keycard_workload_api::SpiffeId;
use prost::Message as _;
use rustls_pki_types::{CertificateDer, UnixTime};

use super::common;

/// The nonce of every challenge the check answers.
pub const NONCE: [u8; 32] = [7; 32];
/// The entry ID whose SPIFFE ID BatchNewX509Svid CSRs are checked against.
pub const ENTRY_ID: &str = "spiffe://example.org/workload/web";

/// Runs `check_csr` and, on acceptance, the independent CSR assertions; returns whether
/// it accepted.
fn csr(der: &[u8], expected: Option<&SpiffeId>) -> bool {
    let td = common::trust_domain();
    let Ok(v) = check_csr(der, DEFAULT_MAX_CSR_LEN, &td, expected) else { return false };
    common::assert_csr_sound(der, DEFAULT_MAX_CSR_LEN, v.public_key().as_ref());
    let expected_text = expected.map(SpiffeId::to_string);
    common::assert_csr_request_rules(der, expected_text.as_deref());
    true
}

fn x509pop(chain: &[Vec<u8>]) -> bool {
    let ca = CertificateDer::from(common::pem_first(common::NODE_CA_PEM));
    let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(common::NOW_SECS));
    let Ok(node) = verify_node_chain(&[ca], chain, now, &common::trust_domain()) else {
        return false;
    };
    let leaf = &chain[0];
    let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, leaf);
    let expected = format!("spiffe://example.org/keycard/agent/x509pop/{}", hex::encode(sha1));
    assert_eq!(node.agent_id.as_str(), expected, "agent ID not derived from the leaf");
    assert_eq!(node.attestor, "x509pop");
    use x509_cert::der::Decode as _;
    let cert = x509_cert::Certificate::from_der(leaf).expect("accepted a node leaf not DER");
    let cn_oid = common::oid("2.5.4.3");
    for rdn in cert.tbs_certificate.subject.0.iter() {
        for atv in rdn.0.iter().filter(|a| a.oid == cn_oid) {
            if let Ok(cn) = atv.value.decode_as::<x509_cert::der::asn1::Utf8StringRef<'_>>() {
                let selector = format!("x509pop:subject:cn:{}", cn.as_str());
                let found = node.selectors.iter().any(|s| s.to_string() == selector);
                let plain = (1..=64).contains(&cn.as_str().len())
                    && cn
                        .as_str()
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b));
                assert!(found || !plain, "no selector {selector}");
            }
        }
    }
    true
}

fn challenge(signature: &[u8]) -> bool {
    let node1 = common::pem_first(common::NODE1_PEM);
    if verify_challenge(&node1, &NONCE, signature).is_err() {
        return false;
    }
    use x509_cert::der::Decode as _;
    let cert = x509_cert::Certificate::from_der(&node1).expect("node1");
    let key = cert.tbs_certificate.subject_public_key_info.subject_public_key;
    let mut message = keycard::wire::CHALLENGE_CONTEXT.to_vec();
    message.extend_from_slice(&NONCE);
    assert_eq!(keycard::wire::challenge_message(&NONCE), message, "challenge layout");
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_FIXED,
        key.raw_bytes(),
    )
    .verify(&message, signature)
    .expect("accepted a challenge signature ring does not verify");
    true
}

/// Decodes `data` as the message byte 0 names and runs the server's checks on it; returns
/// whether the deepest check reached accepted it.
pub fn check(data: &[u8]) -> bool {
    let Some((&kind, body)) = data.split_first() else { return false };
    match kind % 5 {
        0 => {
            let Ok(m) = AttestAgentRequest::decode(body) else { return false };
            common::round_trip(&m);
            match m.step {
                Some(Step::Params(p)) => {
                    let csr_ok = csr(&p.csr, None);
                    csr_ok
                        && match p.data {
                            Some(Data::JoinToken(t)) => {
                                let hash = hash_token(&t.token);
                                let expected =
                                    ring::digest::digest(&ring::digest::SHA256, t.token.as_bytes());
                                assert_eq!(&hash[..], expected.as_ref(), "token hash");
                                let id = token_id(&hash);
                                assert_eq!(id, hex::encode(&expected.as_ref()[..8]), "token ID");
                                true
                            }
                            Some(Data::X509pop(x)) => x509pop(&x.cert_chain),
                            None => false,
                        }
                }
                Some(Step::ChallengeResponse(r)) => challenge(&r.signature),
                None => false,
            }
        }
        1 => {
            let Ok(m) = RenewAgentRequest::decode(body) else { return false };
            common::round_trip(&m);
            csr(&m.csr, None)
        }
        2 => {
            let Ok(m) = BatchNewX509SvidRequest::decode(body) else { return false };
            common::round_trip(&m);
            let expected = SpiffeId::parse(ENTRY_ID).expect("valid ID");
            let accepted = m.params.iter().take(4).filter(|p| csr(&p.csr, Some(&expected)));
            accepted.count() > 0
        }
        3 => {
            let Ok(m) = NewJwtSvidRequest::decode(body) else { return false };
            common::round_trip(&m);
            common::assert_audience_rule(&m.audiences)
        }
        _ => SyncEntriesRequest::decode(body).map(|m| common::round_trip(&m)).is_ok(),
    }
}

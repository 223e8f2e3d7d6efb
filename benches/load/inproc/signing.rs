//! Target 1: X.509-SVIDs signed per second on one core through the CA module (the path
//! the server takes for a workload CSR: the CSR's checked public key, the entry's SPIFFE
//! ID and TTL, `CaManager::sign_x509_svid`) against raw ring ECDSA P-256 signatures of a
//! message as long as the certificate.

use std::time::{Duration, Instant};

use keycard::ca::{DEFAULT_MAX_CSR_LEN, SvidRequest, verify_csr};

use super::common::{alternate, csrs, raw_sign_rate, system_ca, workload_id};
use crate::table::{Goal, Row};

/// The row of target 1.
pub fn row(quick: bool) -> Row {
    let (per_round, rounds) = if quick { (300, 3) } else { (3000, 5) };
    let ca = system_ca();
    // Keys and CSRs are the agent's work: made and checked before timing.
    let requests: Vec<SvidRequest> = csrs(per_round)
        .iter()
        .enumerate()
        .map(|(i, der)| SvidRequest {
            public_key: verify_csr(der, DEFAULT_MAX_CSR_LEN).expect("a good CSR").into_public_key(),
            spiffe_id: workload_id(i),
            dns_names: Vec::new(),
            ttl: Duration::from_secs(3600),
        })
        .collect();
    let sample = ca.sign_x509_svid(&requests[0]).expect("the CA signs");
    let message_len = sample.svid.leaf.len();

    let (keycard, raw) = alternate(
        rounds,
        || {
            let started = Instant::now();
            for request in &requests {
                let issued = ca.sign_x509_svid(request).expect("the CA signs");
                std::hint::black_box(issued);
            }
            requests.len() as f64 / started.elapsed().as_secs_f64()
        },
        || raw_sign_rate(per_round, message_len),
    );
    Row {
        what: "CA signing, X.509-SVIDs/s on one core (CaManager::sign_x509_svid)".into(),
        keycard,
        baseline: Some(raw),
        baseline_name: format!("raw ring ECDSA P-256 sign of {message_len} B"),
        unit: "SVIDs/s".into(),
        goal: Goal::AtLeast(0.6),
    }
}

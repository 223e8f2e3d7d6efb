//! The server's CSR checks (`verify_csr`, and the agent API's `check_csr` on top of it):
//! whatever they accept must be strict DER, under the size cap, carry an allowed key, and
//! have a self-signature that `ring` verifies on its own; `check_csr` must never accept
//! what `verify_csr` refuses, nor a CSR asking to be a CA or for several URI SANs.

use keycard::ca::{DEFAULT_MAX_CSR_LEN, check_public_key, verify_csr};
use keycard::server::agent_api::csr_check::check_csr;

use super::common;

/// Runs both CSR checks on `data` and asserts the invariants of an accepted CSR.
pub fn check(data: &[u8]) -> bool {
    let verified = verify_csr(data, DEFAULT_MAX_CSR_LEN);
    let td = common::trust_domain();
    let api = check_csr(data, DEFAULT_MAX_CSR_LEN, &td, None);
    if let Ok(v) = &api {
        assert_eq!(verified.as_ref().ok(), Some(v), "check_csr accepted what verify_csr refused");
    }
    let Ok(verified) = verified else { return false };
    common::assert_csr_sound(data, DEFAULT_MAX_CSR_LEN, verified.public_key().as_ref());
    check_public_key(verified.public_key().as_ref()).expect("its own key check");
    // A smaller cap than the CSR refuses it.
    assert!(verify_csr(data, data.len() - 1).is_err(), "size cap not applied");
    if api.is_ok() {
        common::assert_csr_request_rules(data, None);
    }
    true
}

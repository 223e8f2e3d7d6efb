//! When the agent's own SVID must be renewed: at half its life, or at once when its
//! authority is tainted or has left the bundle.

use std::time::{Duration, SystemTime};

use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::super::client::{AgentIdentity, SyncedEntries};

/// When half the agent SVID's life (from its `notBefore`) has passed.
pub(super) fn agent_half_life(chain_leaf: &[u8], expires_at: SystemTime) -> Option<SystemTime> {
    let (_, cert) = X509Certificate::from_der(chain_leaf).ok()?;
    let secs = u64::try_from(cert.validity().not_before.timestamp()).ok()?;
    let not_before = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    Some(not_before + expires_at.duration_since(not_before).unwrap_or_default() / 2)
}

/// The key ID of the authority that signed `leaf` (its AKI, lowercase hex).
fn authority_key_id(leaf: &[u8]) -> Option<String> {
    use x509_parser::prelude::ParsedExtension;
    let (_, cert) = X509Certificate::from_der(leaf).ok()?;
    cert.extensions().iter().find_map(|ext| match ext.parsed_extension() {
        ParsedExtension::AuthorityKeyIdentifier(aki) => {
            aki.key_identifier.as_ref().map(|k| hex::encode(k.0))
        }
        _ => None,
    })
}

/// Whether the agent SVID must be renewed now because of `synced`: its authority is
/// tainted, or it no longer chains to the bundle (the server would soon refuse it).
pub(super) fn agent_svid_outdated(
    identity: &AgentIdentity,
    synced: &SyncedEntries,
    now: SystemTime,
) -> bool {
    let Some(leaf) = identity.chain.first() else { return false };
    if authority_key_id(leaf).is_some_and(|aki| synced.tainted_authority_ids.contains(&aki)) {
        return true;
    }
    let Some(Ok(x509)) = synced.bundle.as_ref().map(|b| b.x509_bundle()) else { return false };
    let set: keycard_workload_api::X509BundleSet = [x509].into_iter().collect();
    let unix = rustls_pki_types::UnixTime::since_unix_epoch(
        now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default(),
    );
    keycard_workload_api::verify_chain(&identity.chain, &set, unix).is_err()
}

//! The set-up `keycard dev` does over the admin socket before its agent starts: the
//! bundle file, the caller's entry, and the agent's plan (reuse its SVID, attest, or evict
//! and attest again).

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use tonic::transport::Channel;

use keycard_workload_api::TrustDomain;

use super::{AGENT_ID, DevError, DevPaths, STARTUP, TRUST_DOMAIN, io_err};
use crate::agent::storage::{AgentStorage, StoredIdentity};
use crate::server::admin::pb::{self, admin_client::AdminClient};

/// Over the admin socket: writes the bundle, makes sure an entry exists for the calling
/// user, and returns a join token when the agent has no valid SVID.
pub(super) async fn set_up(paths: &DevPaths) -> Result<Option<String>, DevError> {
    let fail = |reason: String| DevError::Setup {
        socket: paths.admin_socket.display().to_string(),
        reason,
    };
    let mut admin = connect_admin(&paths.admin_socket).await.map_err(fail)?;
    let bundle = admin
        .get_bundle(pb::GetBundleRequest { format: pb::BundleFormat::Pem.into() })
        .await
        .map_err(|s| fail(s.message().to_owned()))?
        .into_inner();
    crate::fsutil::write_atomic(&paths.bundle, bundle.text.as_bytes(), 0o644)
        .map_err(io_err(&paths.bundle))?;

    // The token comes first: its agent ID may be an entry's parent before it attests.
    let svid_valid = agent_has_valid_svid(&paths.dir.join("agent"));
    let known = if svid_valid {
        true
    } else {
        match admin.get_agent(pb::AgentRequest { id: AGENT_ID.into() }).await {
            Ok(_) => true,
            Err(s) if s.code() == tonic::Code::NotFound => false,
            Err(s) => return Err(fail(s.message().to_owned())),
        }
    };
    let token = match plan_agent(svid_valid, known) {
        AgentPlan::Reuse => None,
        plan => {
            if plan == AgentPlan::EvictThenAttest {
                // A join-token agent cannot attest twice under one ID. In dev mode the agent
                // is ours: forget it (entries and the CA stay) and let it join again.
                tracing::info!(
                    agent_id = AGENT_ID,
                    "the dev agent's SVID expired (or is gone) while dev was stopped; evicting \
                     it so that it attests again with a fresh join token"
                );
                admin
                    .evict_agent(pb::AgentRequest { id: AGENT_ID.into() })
                    .await
                    .map_err(|s| fail(s.message().to_owned()))?;
            }
            let reply = admin
                .generate_join_token(pb::GenerateJoinTokenRequest {
                    ttl_seconds: 0,
                    agent_id: AGENT_ID.into(),
                })
                .await
                .map_err(|s| fail(s.message().to_owned()))?
                .into_inner();
            Some(reply.token)
        }
    };
    let uid = std::fs::metadata(&paths.dir).map_err(io_err(&paths.dir))?.uid();
    let user = std::env::var("USER").ok().filter(|u| {
        !u.is_empty()
            && u.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    });
    let spiffe_id = format!(
        "spiffe://{TRUST_DOMAIN}/user/{}",
        user.unwrap_or_else(|| format!("uid-{uid}")).to_ascii_lowercase()
    );
    let selector = format!("unix:uid:{uid}");
    let existing = admin
        .list_entries(pb::ListEntriesRequest {
            by_spiffe_id: spiffe_id.clone(),
            by_parent_id: AGENT_ID.into(),
            by_selectors: vec![selector.clone()],
            ..Default::default()
        })
        .await
        .map_err(|s| fail(s.message().to_owned()))?
        .into_inner();
    if existing.entries.is_empty() {
        let spec = pb::EntrySpec {
            spiffe_id: spiffe_id.clone(),
            parent_id: AGENT_ID.into(),
            selectors: vec![selector],
            dns_names: vec!["localhost".into()],
            ..Default::default()
        };
        admin
            .create_entry(pb::CreateEntryRequest { spec: Some(spec) })
            .await
            .map_err(|s| fail(s.message().to_owned()))?;
        tracing::info!(%spiffe_id, uid, "registered an entry for the calling user");
    }

    Ok(token)
}

/// What dev mode does about its agent's identity at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentPlan {
    /// The stored agent SVID is still valid: use it, no token.
    Reuse,
    /// First run (the server has never seen the agent): attest with a new join token.
    Attest,
    /// The stored SVID expired (or was removed) but the server still has the agent, which
    /// a join token cannot attest again: evict it, then attest with a new token.
    EvictThenAttest,
}

/// Decides [`AgentPlan`] from whether the stored SVID is valid and whether the server
/// has an agent record under [`AGENT_ID`].
pub fn plan_agent(stored_svid_valid: bool, server_knows_agent: bool) -> AgentPlan {
    match (stored_svid_valid, server_knows_agent) {
        (true, _) => AgentPlan::Reuse,
        (false, false) => AgentPlan::Attest,
        (false, true) => AgentPlan::EvictThenAttest,
    }
}

/// Whether an earlier run left the agent a valid SVID (then it needs no join token).
fn agent_has_valid_svid(agent_dir: &Path) -> bool {
    let Ok(td) = TrustDomain::new(TRUST_DOMAIN) else { return false };
    let Ok(storage) = AgentStorage::open(agent_dir) else { return false };
    let Ok(Some(bundle)) = storage.load_bundle(&td) else { return false };
    matches!(storage.load_identity(&bundle, SystemTime::now()), Ok(Some(StoredIdentity::Valid(_))))
}

/// Connects to the admin socket, waiting for the server to create it.
async fn connect_admin(socket: &Path) -> Result<AdminClient<Channel>, String> {
    let deadline = Instant::now() + STARTUP;
    loop {
        match keycard_workload_api::client::unix_channel(socket).await {
            Ok(channel) => return Ok(AdminClient::new(channel)),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("the server did not open it within {STARTUP:?}: {e}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After an hour off, the stored agent SVID has expired while the server still holds
    /// the agent: dev mode must evict and re-attest rather than fail with "already attested".
    #[test]
    fn an_expired_agent_is_evicted_and_attests_again() {
        assert_eq!(plan_agent(true, true), AgentPlan::Reuse);
        assert_eq!(plan_agent(false, false), AgentPlan::Attest);
        assert_eq!(plan_agent(false, true), AgentPlan::EvictThenAttest);
    }

    /// The stored SVID is judged on the clock: one that expired is not reused.
    #[test]
    fn an_agent_dir_without_a_valid_svid_needs_a_token() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(!agent_has_valid_svid(tmp.path()));
    }
}

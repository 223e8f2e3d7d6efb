//! Node calls: join tokens for new agents, and listing, evicting and banning agents.
//! The reply that carries a new join token prints it as `<redacted>` in `Debug` (prost's
//! derived `Debug` is off for it, see build.rs).

use std::time::Duration;

use keycard_workload_api::SpiffeId;

use super::convert::{agent_to_pb, unix_secs};
use super::pb;
use super::service::{AdminService, Caller};
use super::status::AdminError;
use crate::server::datastore::{DataStoreError, PageRequest};
use crate::server::join_token::{DEFAULT_TOKEN_TTL, agent_id_of, new_token};
use crate::telemetry::AUDIT_TARGET;

fn agent_not_found(id: &SpiffeId) -> impl FnOnce(DataStoreError) -> AdminError {
    let id = id.to_string();
    move |e| match e {
        DataStoreError::NotFound { .. } => AdminError::AgentNotFound(id),
        other => other.into(),
    }
}

impl std::fmt::Debug for pb::GenerateJoinTokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerateJoinTokenResponse")
            .field("token", &"<redacted>")
            .field("token_id", &self.token_id)
            .field("agent_id", &self.agent_id)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl AdminService {
    pub(super) fn generate_join_token(
        &self,
        ttl_seconds: u64,
        agent_id: Option<SpiffeId>,
        caller: Caller,
    ) -> Result<pb::GenerateJoinTokenResponse, AdminError> {
        let ttl = match ttl_seconds {
            0 => DEFAULT_TOKEN_TTL,
            s => Duration::from_secs(s),
        };
        let (token, record) = new_token(&self.trust_domain, ttl, agent_id, self.clock.now())?;
        self.store.create_join_token(&record)?;
        let agent_id = agent_id_of(&self.trust_domain, &record);
        tracing::info!(
            target: AUDIT_TARGET,
            event = "join_token_generated",
            token_id = %record.token_id,
            agent_id = %agent_id,
            expires_at = unix_secs(record.expires_at),
            caller_uid = caller,
        );
        Ok(pb::GenerateJoinTokenResponse {
            token: token.secret().to_owned(),
            token_id: record.token_id,
            agent_id: agent_id.to_string(),
            expires_at: unix_secs(record.expires_at),
        })
    }

    pub(super) fn list_agents(
        &self,
        page: &PageRequest,
    ) -> Result<pb::ListAgentsResponse, AdminError> {
        let page = self.store.list_agents(page)?;
        Ok(pb::ListAgentsResponse {
            agents: page.items.iter().map(agent_to_pb).collect(),
            next_page_token: page.next_token.unwrap_or_default(),
        })
    }

    pub(super) fn get_agent(&self, id: &SpiffeId) -> Result<pb::Agent, AdminError> {
        let agent =
            self.store.get_agent(id)?.ok_or_else(|| AdminError::AgentNotFound(id.to_string()))?;
        Ok(agent_to_pb(&agent))
    }

    pub(super) fn evict_agent(
        &self,
        id: &SpiffeId,
        caller: Caller,
    ) -> Result<pb::EvictAgentResponse, AdminError> {
        let agent = self.get_agent(id)?;
        if !self.store.delete_agent(id)? {
            return Err(AdminError::AgentNotFound(id.to_string()));
        }
        tracing::info!(
            target: AUDIT_TARGET,
            event = "agent_change",
            action = "evict",
            agent_id = %id,
            caller_uid = caller,
        );
        match self.store.count_agents() {
            Ok(n) => {
                self.metrics.agents.set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            Err(e) => tracing::warn!(error = %e, "could not count agents for the gauge"),
        }
        Ok(pb::EvictAgentResponse { agent: Some(agent) })
    }

    pub(super) fn ban_agent(&self, id: &SpiffeId, caller: Caller) -> Result<pb::Agent, AdminError> {
        self.store.set_agent_banned(id, true).map_err(agent_not_found(id))?;
        tracing::info!(
            target: AUDIT_TARGET,
            event = "agent_change",
            action = "ban",
            agent_id = %id,
            caller_uid = caller,
        );
        self.get_agent(id)
    }
}

#[cfg(test)]
mod tests {
    use super::pb;

    #[test]
    fn a_generated_join_token_is_redacted_in_debug() {
        let reply = pb::GenerateJoinTokenResponse {
            token: "s3cr3t-join-token-value".into(),
            token_id: "id1".into(),
            agent_id: "spiffe://example.org/node".into(),
            expires_at: 2,
        };
        let debug = format!("{reply:?}");
        assert!(!debug.contains("s3cr3t") && debug.contains("<redacted>"), "{debug}");
        assert!(debug.contains("id1") && debug.contains("spiffe://example.org/node"), "{debug}");
    }
}

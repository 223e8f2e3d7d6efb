//! Join tokens: single-use, expiring secrets an operator hands to a new agent.
//!
//! The secret is 32 random bytes written in base64url without padding (43 characters).
//! The server never stores it: the datastore keeps `SHA-256(token text)` ([`hash_token`]),
//! and operators see a short public name, the token ID: the first 16 hex characters of that
//! hash. Unless the operator chose an agent ID when generating the token, the agent that
//! presents it becomes `spiffe://<td>/keycard/agent/join_token/<token id>`, so the secret
//! never appears in an ID, a log line or an entry.

use std::fmt;
use std::time::{Duration, SystemTime};

use keycard_workload_api::{SpiffeId, TrustDomain};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

use super::datastore::JoinTokenRecord;
use super::entry::SERVER_PATH;

/// How long a token lives when the operator gives no TTL (SPIRE's default too).
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(600);
/// Longest TTL accepted: a join token is meant to be used right away.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Path prefix of the default agent IDs of join-token agents.
pub const AGENT_PATH_PREFIX: &str = "/keycard/agent/join_token/";
/// Length of a token ID in hex characters.
pub const TOKEN_ID_LEN: usize = 16;

/// Why a join token could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinTokenError {
    /// A TTL of zero.
    #[error("a join token TTL must be greater than zero, for example --ttl 600s")]
    ZeroTtl,
    /// A TTL beyond [`MAX_TOKEN_TTL`].
    #[error("a join token TTL may be at most 30 days; generate a token when the agent is ready")]
    TtlTooLong,
    /// The chosen agent ID is in another trust domain.
    #[error("agent ID {id} is not in this server's trust domain {trust_domain}")]
    ForeignAgentId {
        /// The ID given.
        id: String,
        /// The server's trust domain.
        trust_domain: String,
    },
    /// The chosen agent ID has no path.
    #[error("agent ID {0} has no path; give it one, for example spiffe://example.org/node1")]
    RootAgentId(String),
    /// The chosen agent ID is the server's own.
    #[error("agent ID {0} is the server's own ID; choose another")]
    ServerAgentId(String),
}

/// A freshly generated token: the secret (shown to the operator once) and its public name.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    secret: String,
    hash: [u8; 32],
}

impl JoinToken {
    /// Generates a new random token: 256 random bits as 64 lowercase hex characters, so
    /// that it never starts with `-` (a command line would take it for a flag) and needs
    /// no quoting in a shell.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let secret = hex::encode(bytes);
        let hash = hash_token(&secret);
        Self { secret, hash }
    }

    /// The secret text to hand to the agent; show it once and never log it.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// SHA-256 of the secret text: what the datastore keeps.
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }

    /// The token's public name.
    pub fn token_id(&self) -> String {
        token_id(&self.hash)
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken").field("token_id", &self.token_id()).finish_non_exhaustive()
    }
}

/// SHA-256 of the token text as UTF-8: the datastore key of a token.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The public name of the token with this hash: its first 16 hex characters.
pub fn token_id(hash: &[u8; 32]) -> String {
    hex::encode(&hash[..TOKEN_ID_LEN / 2])
}

/// The agent ID a token assigns when the operator chose none.
pub fn default_agent_id(trust_domain: &TrustDomain, token_id: &str) -> SpiffeId {
    // A token ID is 16 hex characters, always a valid path segment; fall back to the
    // trust domain's own ID rather than panic if a caller passes something else.
    trust_domain
        .spiffe_id(&format!("{AGENT_PATH_PREFIX}{token_id}"))
        .unwrap_or_else(|_| trust_domain.id())
}

/// The agent ID a stored token assigns: the operator's choice or the default.
pub fn agent_id_of(trust_domain: &TrustDomain, record: &JoinTokenRecord) -> SpiffeId {
    record.agent_id.clone().unwrap_or_else(|| default_agent_id(trust_domain, &record.token_id))
}

/// Generates a token for `trust_domain` expiring `ttl` after `now`, checking the
/// operator's choices; returns the secret and the record to store. The record always
/// names its agent ID: the operator's choice or [`default_agent_id`].
pub fn new_token(
    trust_domain: &TrustDomain,
    ttl: Duration,
    agent_id: Option<SpiffeId>,
    now: SystemTime,
) -> Result<(JoinToken, JoinTokenRecord), JoinTokenError> {
    if ttl.is_zero() {
        return Err(JoinTokenError::ZeroTtl);
    }
    if ttl > MAX_TOKEN_TTL {
        return Err(JoinTokenError::TtlTooLong);
    }
    if let Some(id) = &agent_id {
        if !id.is_member_of(trust_domain) {
            return Err(JoinTokenError::ForeignAgentId {
                id: id.to_string(),
                trust_domain: trust_domain.to_string(),
            });
        }
        if id.is_root() {
            return Err(JoinTokenError::RootAgentId(id.to_string()));
        }
        if id.path() == SERVER_PATH {
            return Err(JoinTokenError::ServerAgentId(id.to_string()));
        }
    }
    let token = JoinToken::generate();
    let token_id = token.token_id();
    // The default ID is stored too, so that the datastore can tell which agent ID an
    // unused token reserves (entries may name it as parent before the agent attests).
    let agent_id = agent_id.unwrap_or_else(|| default_agent_id(trust_domain, &token_id));
    let record = JoinTokenRecord {
        hash: token.hash(),
        token_id,
        agent_id: Some(agent_id),
        expires_at: now + ttl,
        used_at: None,
    };
    Ok((token, record))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    #[test]
    fn secrets_are_64_hex_chars_that_never_look_like_a_flag() {
        let a = JoinToken::generate();
        let b = JoinToken::generate();
        assert_ne!(a.secret(), b.secret());
        for _ in 0..1000 {
            let t = JoinToken::generate();
            assert_eq!(t.secret().len(), 64);
            assert!(t.secret().bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
            assert_eq!(hex::decode(t.secret()).unwrap().len(), 32);
        }
    }

    #[test]
    fn hash_and_token_id_follow_the_shared_rule() {
        // SHA-256("abc") is ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad.
        let h = hash_token("abc");
        assert_eq!(hex::encode(h).get(..16), Some("ba7816bf8f01cfea"));
        assert_eq!(token_id(&h), "ba7816bf8f01cfea");
        let t = JoinToken::generate();
        assert_eq!(t.hash(), hash_token(t.secret()));
        assert_eq!(t.token_id().len(), TOKEN_ID_LEN);
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let t = JoinToken::generate();
        let shown = format!("{t:?}");
        assert!(!shown.contains(t.secret()), "{shown}");
        assert!(shown.contains(&t.token_id()));
    }

    #[test]
    fn default_agent_id_uses_the_token_id_not_the_secret() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let (token, record) = new_token(&td(), DEFAULT_TOKEN_TTL, None, now).unwrap();
        assert_eq!(record.expires_at, now + Duration::from_secs(600));
        assert_eq!(record.used_at, None);
        assert_eq!(record.hash, token.hash());
        let id = agent_id_of(&td(), &record);
        assert_eq!(record.agent_id.as_ref(), Some(&id), "the default ID is stored");
        assert_eq!(
            id.as_str(),
            format!("spiffe://example.org/keycard/agent/join_token/{}", token.token_id())
        );
        assert!(!id.as_str().contains(token.secret()));
    }

    #[test]
    fn chosen_agent_ids_and_ttls_are_checked() {
        let now = SystemTime::UNIX_EPOCH;
        let id = |s: &str| Some(SpiffeId::parse(s).unwrap());
        let ok = new_token(&td(), Duration::from_secs(60), id("spiffe://example.org/node1"), now);
        let (_, record) = ok.unwrap();
        assert_eq!(agent_id_of(&td(), &record).as_str(), "spiffe://example.org/node1");
        let err = |ttl, agent| new_token(&td(), ttl, agent, now).unwrap_err();
        let minute = Duration::from_secs(60);
        assert_eq!(err(Duration::ZERO, None), JoinTokenError::ZeroTtl);
        assert_eq!(err(MAX_TOKEN_TTL + minute, None), JoinTokenError::TtlTooLong);
        assert!(matches!(
            err(minute, id("spiffe://other.org/node1")),
            JoinTokenError::ForeignAgentId { .. }
        ));
        assert!(matches!(err(minute, id("spiffe://example.org")), JoinTokenError::RootAgentId(_)));
        assert!(matches!(
            err(minute, id("spiffe://example.org/keycard/server")),
            JoinTokenError::ServerAgentId(_)
        ));
    }
}

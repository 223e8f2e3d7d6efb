//! The server and agent TOML configuration (`ServerConfig::from_toml`,
//! `AgentConfig::from_toml`, with no command-line flags). Input byte 0 picks which; the
//! rest is the file's text. A refused file must give a non-empty message; an accepted
//! one must give the same typed config again, and hold only values the documentation
//! allows (checked here field by field, with the constants of the docs).

use std::path::Path;
use std::time::Duration;

use keycard::agent::config::{AgentArgs, AgentConfig, NodeAttestation};
use keycard::ca::KeyType;
use keycard::server::config::{
    DatastoreConfig, MAX_SVIDS_PER_SECOND_PER_AGENT, ServerArgs, ServerConfig,
};
use keycard_workload_api::TrustDomain;

/// Longest Unix socket path (sun_path less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Parses the text `data` describes and checks the verdict; returns whether it was accepted.
pub fn check(data: &[u8]) -> bool {
    let Some((&which, text)) = data.split_first() else { return false };
    let Ok(text) = std::str::from_utf8(text) else { return false };
    let path = Path::new("fuzz.toml");
    if which % 2 == 0 {
        let args = ServerArgs::default();
        match ServerConfig::from_toml(&args, path, text) {
            Ok(c) => {
                assert_eq!(ServerConfig::from_toml(&args, path, text).ok(), Some(c.clone()));
                server_values(&c);
                true
            }
            Err(e) => {
                assert!(!e.to_string().is_empty(), "empty error message");
                false
            }
        }
    } else {
        let args = AgentArgs::default();
        match AgentConfig::from_toml(&args, path, text) {
            Ok(c) => {
                assert_eq!(AgentConfig::from_toml(&args, path, text).ok(), Some(c.clone()));
                agent_values(&c);
                true
            }
            Err(e) => {
                assert!(!e.to_string().is_empty(), "empty error message");
                false
            }
        }
    }
}

fn trust_domain_ok(td: &TrustDomain) {
    assert_eq!(TrustDomain::new(td.name()).as_ref(), Ok(td), "trust domain round trip");
}

fn server_values(c: &ServerConfig) {
    trust_domain_ok(&c.trust_domain);
    assert!(c.ca_ttl > Duration::ZERO, "zero ca_ttl");
    // The documented rule: an SVID lives at most a sixth of its CA's lifetime.
    let max = c.ca_ttl / 6;
    for (key, ttl) in [
        ("default_x509_svid_ttl", c.default_x509_svid_ttl),
        ("default_jwt_svid_ttl", c.default_jwt_svid_ttl),
        ("agent_svid_ttl", c.agent_svid_ttl),
    ] {
        assert!(ttl > Duration::ZERO, "zero {key}");
        assert!(ttl <= max, "{key} {ttl:?} over ca_ttl / 6");
    }
    assert!(c.backdate < c.ca_ttl, "backdate not shorter than ca_ttl");
    assert!(c.bundle_refresh_hint > Duration::ZERO, "zero bundle_refresh_hint");
    assert!((1..=MAX_SVIDS_PER_SECOND_PER_AGENT).contains(&c.svids_per_second_per_agent));
    assert_ne!(c.jwt_key_type, KeyType::Ed25519, "JWT authority cannot be Ed25519");
    assert!(!c.data_dir.as_os_str().is_empty(), "empty data_dir");
    let socket = c.admin_socket.as_os_str().len();
    assert!((1..=MAX_SOCKET_PATH).contains(&socket), "admin_socket of {socket} bytes");
    match &c.datastore {
        DatastoreConfig::Sqlite { path } => {
            assert!(!path.as_os_str().is_empty(), "empty datastore path");
        }
        DatastoreConfig::Postgres { url } => {
            let url = url.expose();
            assert!(url.starts_with("postgres://") || url.starts_with("postgresql://"), "{url}");
        }
    }
    if let Some(p) = &c.x509pop_ca_bundle {
        assert!(!p.as_os_str().is_empty(), "empty x509pop_ca_bundle");
    }
    if let Some(u) = &c.upstream_authority {
        assert!(!u.cert_file.as_os_str().is_empty() && !u.key_file.as_os_str().is_empty());
    }
    if let Some(h) = c.health_address {
        assert!(h != c.bind_address || h.port() == 0, "health and agent API on one address");
    }
    assert!(!c.log_level.is_empty(), "empty log level");
}

fn agent_values(c: &AgentConfig) {
    trust_domain_ok(&c.trust_domain);
    assert!(!c.server_addresses.is_empty(), "no server_address");
    for (i, a) in c.server_addresses.iter().enumerate() {
        assert!(!a.is_empty() && a.trim() == a, "server_address {a:?} not trimmed");
        assert!(!c.server_addresses[..i].contains(a), "server_address {a:?} twice");
    }
    match &c.attestation {
        NodeAttestation::JoinToken(t) => {
            assert!(!t.is_empty() && t.trim() == t, "join token {:?} not trimmed", t.len());
        }
        NodeAttestation::X509Pop { cert_file, key_file } => {
            assert!(!cert_file.as_os_str().is_empty() && !key_file.as_os_str().is_empty());
        }
        NodeAttestation::None => {}
    }
    assert!(!c.socket_path.as_os_str().is_empty(), "empty socket_path");
    assert!(!c.data_dir.as_os_str().is_empty(), "empty data_dir");
    let socket = c.admin_socket.as_os_str().len();
    assert!((1..=MAX_SOCKET_PATH).contains(&socket), "admin_socket of {socket} bytes");
    assert_ne!(c.admin_socket, c.socket_path, "one socket for both APIs");
    assert!(c.sync_interval > Duration::ZERO, "zero sync_interval");
    assert!(c.unix.max_binary_size > 0, "zero unix_sha256_max_size");
    assert!(!c.log_level.is_empty(), "empty log level");
}

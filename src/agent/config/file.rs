//! The raw shape of the agent's TOML file: every key optional and mostly a string, so that
//! [`super::AgentConfig`] can check each value itself and name the key at fault.
//! `deny_unknown_fields` turns typos into errors instead of silently ignored settings.

use std::path::PathBuf;

use serde::Deserialize;

use crate::secret::Secret;

/// The top level of the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) trust_domain: Option<String>,
    /// A string or an array of strings: checked by `super::servers`.
    pub(super) server_address: Option<toml::Value>,
    pub(super) server_request_timeout: Option<String>,
    pub(super) trust_bundle_path: Option<PathBuf>,
    pub(super) insecure_bootstrap: Option<bool>,
    pub(super) join_token: Option<Secret>,
    pub(super) x509pop: Option<FileX509Pop>,
    pub(super) socket_path: Option<String>,
    pub(super) admin_socket: Option<PathBuf>,
    pub(super) data_dir: Option<PathBuf>,
    pub(super) sync_interval: Option<String>,
    pub(super) workload_key_type: Option<String>,
    pub(super) disk_cache: Option<bool>,
    pub(super) unix_sha256: Option<bool>,
    pub(super) unix_sha256_max_size: Option<u64>,
    pub(super) health_address: Option<String>,
    pub(super) log_format: Option<String>,
    pub(super) log_level: Option<String>,
    pub(super) workload_api: Option<FileWorkloadApi>,
    pub(super) sds: Option<FileSds>,
}

/// `[sds]`: Envoy's Secret Discovery Service on the Workload API socket.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileSds {
    pub(super) enabled: Option<bool>,
    pub(super) default_svid_name: Option<String>,
    pub(super) default_bundle_name: Option<String>,
    pub(super) default_all_bundles_name: Option<String>,
    pub(super) max_streams_per_caller: Option<usize>,
}

/// `[workload_api]`: caps on Workload API connections.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileWorkloadApi {
    pub(super) enabled: Option<bool>,
    pub(super) max_connections: Option<usize>,
    pub(super) max_connections_per_uid: Option<usize>,
    pub(super) first_request_timeout: Option<String>,
}

/// `[x509pop]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileX509Pop {
    pub(super) cert_file: Option<PathBuf>,
    pub(super) key_file: Option<PathBuf>,
}

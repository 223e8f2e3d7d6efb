//! The raw shape of the server's TOML file: every key optional and mostly a string, so
//! that [`super::ServerConfig`] can check each value itself and name the key at fault.
//! `deny_unknown_fields` turns typos into errors instead of silently ignored settings.

use std::path::PathBuf;

use serde::Deserialize;

/// The top level of the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) trust_domain: Option<String>,
    pub(super) bind_address: Option<String>,
    pub(super) data_dir: Option<PathBuf>,
    pub(super) admin_socket: Option<PathBuf>,
    pub(super) ca_key_type: Option<String>,
    pub(super) ca_ttl: Option<String>,
    pub(super) default_x509_svid_ttl: Option<String>,
    pub(super) default_jwt_svid_ttl: Option<String>,
    pub(super) agent_svid_ttl: Option<String>,
    pub(super) jwt_key_type: Option<String>,
    pub(super) backdate: Option<String>,
    pub(super) bundle_refresh_hint: Option<String>,
    pub(super) svids_per_second_per_agent: Option<toml::Value>,
    pub(super) upstream_authority: Option<FileUpstream>,
    pub(super) datastore: Option<FileDatastore>,
    pub(super) x509pop_ca_bundle: Option<PathBuf>,
    pub(super) bundle_endpoint: Option<crate::server::federation::FileBundleEndpoint>,
    #[serde(default)]
    pub(super) federates_with: Vec<crate::server::federation::declared::FileFederatesWith>,
    pub(super) health_address: Option<String>,
    pub(super) log_format: Option<String>,
    pub(super) log_level: Option<String>,
}

/// `[upstream_authority]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileUpstream {
    pub(super) cert_file: Option<PathBuf>,
    pub(super) key_file: Option<PathBuf>,
}

/// `[datastore]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileDatastore {
    #[serde(rename = "type")]
    pub(super) kind: Option<String>,
    pub(super) path: Option<PathBuf>,
    pub(super) url: Option<crate::secret::Secret>,
}

//! The admin API: what operators (and the `keycard` CLI) use to manage the server.
//!
//! gRPC (`keycard.admin.v1.Admin`, see `proto/admin.proto`) on a Unix socket only; who may
//! call is decided by the socket's directory and mode and by the kernel's peer credentials
//! of each connection ([`crate::unixsock`]). The calls manage registration entries, join tokens,
//! agents, the bundle and the CA's authorities.
//!
//! - [`service`]: the tonic service and its blocking helpers.
//! - `entries.rs`, [`entries_batch`] (many entries in one call), `agents.rs`, `authority.rs`: what each call does.
//! - [`status`]: [`AdminError`] and the one mapping to `tonic::Status`.
//! - [`convert`]: wire types to and from the server's types.
//! - [`probe`]: the datastore write probe behind the health call.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use keycard_workload_api::TrustDomain;

use crate::clock::Clock;
use crate::server::cluster::Cluster;
use crate::server::datastore::DataStore;
use crate::telemetry::ServerMetrics;

mod agents;
mod authority;
pub mod convert;
mod entries;
pub mod entries_batch;
mod federation;
pub mod probe;
pub mod service;
pub mod status;
#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod tests_batch;
#[cfg(test)]
mod tests_federation;
#[cfg(test)]
mod tests_ops;
#[cfg(test)]
mod tests_peer;

pub use crate::unixsock::{AdminListener, ListenerError};
pub use service::AdminService;
pub use status::AdminError;

/// The generated admin API types, client and server.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("keycard.admin.v1");
}

/// Largest message the admin API takes or gives, on both sides (server and CLI): room for a
/// batch of [`entries_batch::MAX_BATCH_ENTRIES`] entries (tonic's default is 4 MiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// What the admin API needs from the server's configuration.
#[derive(Debug, Clone)]
pub struct AdminOptions {
    /// The server's trust domain: entries and agent IDs must be in it.
    pub trust_domain: TrustDomain,
    /// Path of the Unix socket; its directory is created 0700 if missing.
    pub socket_path: PathBuf,
    /// Uids allowed besides the server's own and root (empty for most installations).
    pub allowed_uids: Vec<u32>,
}

/// Why the admin API stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket could not be set up.
    #[error(transparent)]
    Listener(#[from] ListenerError),
    /// The gRPC server failed.
    #[error("admin API server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Binds the admin socket and serves until `shutdown` completes; then removes the socket.
pub async fn serve(
    options: AdminOptions,
    store: Arc<dyn DataStore>,
    cluster: Arc<Cluster>,
    metrics: Arc<ServerMetrics>,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let listener = AdminListener::bind(&options.socket_path, &options.allowed_uids)?;
    serve_on(listener, options.trust_domain, store, cluster, metrics, clock, shutdown).await
}

/// Serves on an already bound listener (tests bind first to learn the path).
pub async fn serve_on(
    listener: AdminListener,
    trust_domain: TrustDomain,
    store: Arc<dyn DataStore>,
    cluster: Arc<Cluster>,
    metrics: Arc<ServerMetrics>,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let path = listener.path().to_path_buf();
    tracing::info!(socket = %path.display(), uids = ?listener.allowed_uids(), "admin API listening");
    let service = AdminService::new(trust_domain, store, cluster, metrics, clock);
    let result = tonic::transport::Server::builder()
        .layer(crate::wire::oversized::OversizedLayer)
        .add_service(
            pb::admin_server::AdminServer::new(service)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(listener.incoming(), shutdown)
        .await;
    if let Err(e) = std::fs::remove_file(&path) {
        tracing::warn!(socket = %path.display(), error = %e, "could not remove the admin socket");
    }
    result.map_err(ServeError::from)
}

//! The agent API: gRPC over TLS between node agents and the server.
//!
//! The server presents its own SVID `spiffe://<td>/keycard/server` ([`server_svid`]),
//! re-minted from the CA before it expires. Agents attest once without a client
//! certificate ([`attest`]: `join_token` or `x509pop`), then call with their agent SVID,
//! which [`tls`] verifies against the CA's current bundle. The handlers ([`service`],
//! [`signing`]) take the agent's identity from the verified peer certificate, and
//! authorize entries from an in-memory view of the datastore ([`authorized`]) that keeps
//! serving its last good copy when the datastore fails; agents sync by cursor
//! ([`cursor_sync`]) against the log of what that view applied ([`event_log`]).
//! [`limits`] bounds attestations per source address and signatures per agent;
//! [`csr_check`] refuses CSRs that ask for more than a public key; [`status`] is the one
//! place errors become gRPC statuses.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::ca::CaManager;
use crate::clock::Clock;
use crate::server::datastore::DataStore;
use crate::telemetry::metrics::ServerMetrics;
use crate::wire::{KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT};

pub mod attest;
pub mod authorized;
pub mod csr_check;
pub mod cursor_sync;
pub mod error;
pub mod event_log;
pub mod limits;
pub mod options;
pub mod server_svid;
pub mod service;
pub mod signing;
pub mod state;
pub mod status;
pub mod tls;

#[cfg(test)]
mod tests;

pub use error::AgentApiError;
pub use limits::Rate;
pub use options::AgentApiOptions;

pub use crate::wire::{
    AGENT_PATH_PREFIX, MAX_BATCH, MAX_MESSAGE_SIZE, SYNC_PAGE_SIZE, proto, server_id,
};

/// Runs the agent API on `listener` until `shutdown` completes.
///
/// Mints the server's TLS SVID from `ca` unless `options` holds one (and keeps re-minting
/// it), loads the authorized entry cache from `store` (and keeps it fresh), then serves
/// TLS connections: every handler bounded by the request timeout, every connection pinged
/// (HTTP/2 keepalive) so that one whose agent vanished is closed.
pub async fn serve(
    listener: TcpListener,
    options: AgentApiOptions,
    ca: Arc<CaManager>,
    store: Arc<dyn DataStore>,
    metrics: Arc<ServerMetrics>,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AgentApiError> {
    let server_svid = match &options.server_svid {
        Some(shared) => shared.clone(),
        None => Arc::new(server_svid::ServerSvid::mint(
            ca.clone(),
            options.server_id(),
            options.server_svid_ttl,
            clock.clone(),
        )?),
    };
    let cache = Arc::new(authorized::AuthorizedEntries::new(store.clone(), options.server_id()));
    cache.refresh().await;
    let tls_config = tls::server_config(ca.clone(), server_svid.clone(), &options.trust_domain)?;
    let svc = service::AgentService::new(options.clone(), ca, store, metrics, clock, cache.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let rotate = tokio::spawn(server_svid.clone().run(stop_rx.clone()));
    let refresh = tokio::spawn(cache.clone().run(options.cache_refresh_interval, stop_rx.clone()));
    let incoming = tls::incoming(listener, tls_config, stop_rx);
    let result = tonic::transport::Server::builder()
        .timeout(options.request_timeout)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .layer(crate::wire::oversized::OversizedLayer)
        .add_service(svc.into_server())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| AgentApiError::Setup(e.to_string()));
    let _ = stop_tx.send(true);
    let _ = rotate.await;
    let _ = refresh.await;
    result
}

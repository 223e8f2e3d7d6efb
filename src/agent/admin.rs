//! The agent's admin API (`keycard.agentadmin.v1.AgentAdmin`, see
//! `proto/agent_admin.proto`) on a private Unix socket: the same directory, mode and
//! peer-uid rules as the server's admin socket ([`AdminListener`]).
//!
//! `Explain` answers SPIRE's most common support question, "why does my workload get no
//! SVID?": it attests a process by PID the way the Workload API would, and compares every
//! entry the agent holds with what it found.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use tonic::{Request, Response, Status};

use super::attest::{AttestError, UnixAttestorOptions, attest_pid};
use super::cache::SvidCache;
use crate::unixsock::{AdminListener, ListenerError};

/// Generated code of `proto/agent_admin.proto`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("keycard.agentadmin.v1");
}

/// Why the agent admin API stopped.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The socket could not be set up.
    #[error(transparent)]
    Listener(#[from] ListenerError),
    /// The gRPC server failed.
    #[error("agent admin API: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The service; see the module documentation.
#[derive(Debug, Clone)]
pub struct AgentAdminService {
    cache: Arc<SvidCache>,
    options: UnixAttestorOptions,
}

impl AgentAdminService {
    /// Explains processes against the entries in `cache`.
    pub fn new(cache: Arc<SvidCache>, options: UnixAttestorOptions) -> Self {
        Self { cache, options }
    }
}

/// Binds `path` and serves until `shutdown` completes; then removes the socket.
pub async fn serve_admin(
    path: &Path,
    cache: Arc<SvidCache>,
    options: UnixAttestorOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AdminError> {
    let listener = AdminListener::bind(path, &[])?;
    tracing::info!(socket = %path.display(), uids = ?listener.allowed_uids(), "agent admin API listening");
    let service = AgentAdminService::new(cache, options);
    let result = tonic::transport::Server::builder()
        .layer(crate::wire::oversized::OversizedLayer)
        .add_service(pb::agent_admin_server::AgentAdminServer::new(service))
        .serve_with_incoming_shutdown(listener.incoming(), shutdown)
        .await;
    if let Err(e) = std::fs::remove_file(path) {
        tracing::debug!(socket = %path.display(), error = %e, "could not remove the agent admin socket");
    }
    Ok(result?)
}

fn status_of(pid: i32, e: AttestError) -> Status {
    match e {
        AttestError::ProcessGone { .. } | AttestError::ProcessChanged { .. } => {
            Status::not_found(format!("no process with PID {pid} (it may have exited)"))
        }
        AttestError::ProcRead { source, .. }
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            Status::permission_denied(format!(
                "the agent may not read /proc/{pid}: run the agent with access to the process"
            ))
        }
        other => Status::internal(format!("cannot attest PID {pid}: {other}")),
    }
}

#[tonic::async_trait]
impl pb::agent_admin_server::AgentAdmin for AgentAdminService {
    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        let pid = request.get_ref().pid;
        if pid <= 0 {
            return Err(Status::invalid_argument(format!(
                "PID must be a positive number, got {pid}"
            )));
        }
        let options = self.options.clone();
        let found = tokio::task::spawn_blocking(move || attest_pid(pid, &options))
            .await
            .map_err(|e| Status::internal(format!("attestation task failed: {e}")))?
            .map_err(|e| status_of(pid, e))?;
        let entries = self
            .cache
            .entry_views()
            .into_iter()
            .map(|view| {
                let missing: Vec<String> =
                    view.selectors.missing_from(&found).map(ToString::to_string).collect();
                let expires = view.svid_expires_at.map(|t| {
                    t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs() as i64
                });
                pb::EntryMatch {
                    entry_id: view.entry_id.to_string(),
                    spiffe_id: view.spiffe_id.to_string(),
                    selectors: view.selectors.iter().map(ToString::to_string).collect(),
                    // An entry without selectors matches nobody (as in the Workload API).
                    matches: missing.is_empty() && !view.selectors.is_empty(),
                    missing_selectors: missing,
                    has_svid: expires.is_some(),
                    svid_expires_at: expires.unwrap_or(0),
                }
            })
            .collect();
        Ok(Response::new(pb::ExplainResponse {
            pid,
            selectors: found.iter().map(ToString::to_string).collect(),
            entries,
        }))
    }
}

#[cfg(test)]
mod tests;

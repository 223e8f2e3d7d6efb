//! The connection to the admin socket, and turning every way it can fail into advice.

use std::error::Error as _;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use tonic::Status;
use tonic::transport::Channel;

use super::{CliError, Connection};
use crate::server::admin::pb::admin_client::AdminClient;

/// An admin API client and the socket it talks to.
pub(super) struct Client {
    /// The generated client.
    pub api: AdminClient<Channel>,
    path: PathBuf,
}

/// The first I/O error in an error's chain of sources.
pub(super) fn io_kind(error: &(dyn std::error::Error + 'static)) -> Option<io::ErrorKind> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Some(io.kind());
        }
        current = e.source();
    }
    None
}

/// ` (uid N)` of the socket's owner, or nothing when it cannot be read.
pub(super) fn owner_of(path: &Path) -> String {
    std::fs::metadata(path).map(|m| format!(" (uid {})", m.uid())).unwrap_or_default()
}

fn closed(path: &Path, detail: String) -> CliError {
    CliError::Closed { path: path.to_path_buf(), detail, owner: owner_of(path) }
}

fn connect_error(path: &Path, kind: Option<io::ErrorKind>, detail: String) -> CliError {
    let path_buf = path.to_path_buf();
    match kind {
        Some(io::ErrorKind::NotFound) => CliError::ServerNotRunning(path_buf),
        Some(io::ErrorKind::ConnectionRefused) => CliError::ConnectionRefused(path_buf),
        Some(io::ErrorKind::PermissionDenied) => CliError::PermissionDenied(path_buf),
        // The server accepted, then dropped the connection: the peer uid check.
        Some(
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::UnexpectedEof,
        ) => closed(path, detail),
        _ => CliError::Connect { path: path_buf, detail },
    }
}

/// Connects to the admin socket named by `conn`.
pub(super) async fn connect(conn: &Connection) -> Result<Client, CliError> {
    let path = conn.admin_socket.clone();
    let channel = keycard_workload_api::client::unix_channel(&path)
        .await
        .map_err(|e| connect_error(&path, io_kind(&e), e.to_string()))?;
    Ok(Client { api: AdminClient::new(channel), path })
}

impl Client {
    /// Turns a failed call into advice: a status the server sent is shown as is; a
    /// transport failure after connecting means the server dropped the connection.
    pub fn fail(&self, status: Status) -> CliError {
        let Some(source) = status.source() else {
            return CliError::Server { code: status.code(), message: status.message().into() };
        };
        match io_kind(source) {
            Some(kind @ (io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied)) => {
                connect_error(&self.path, Some(kind), status.to_string())
            }
            _ => closed(&self.path, status.message().to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::transport::Endpoint;

    use super::*;
    use crate::cli::OutputFormat;

    fn conn(path: PathBuf) -> Connection {
        Connection { admin_socket: path, output: OutputFormat::Text }
    }

    #[tokio::test]
    async fn a_missing_socket_says_start_the_server() {
        let tmp = tempfile::tempdir().unwrap();
        let err = connect(&conn(tmp.path().join("admin.sock"))).await.err().unwrap();
        assert!(matches!(err, CliError::ServerNotRunning(_)), "{err}");
        assert!(err.to_string().contains("keycard server run"), "{err}");
    }

    #[tokio::test]
    async fn a_stale_socket_says_nothing_listens() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("admin.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let err = connect(&conn(path)).await.err().unwrap();
        assert!(matches!(err, CliError::ConnectionRefused(_)), "{err}");
        assert!(err.to_string().contains("is the server running?"), "{err}");
    }

    #[tokio::test]
    async fn server_statuses_are_shown_as_sent() {
        let api = AdminClient::new(Endpoint::from_static("http://localhost").connect_lazy());
        let client = Client { api, path: PathBuf::from("/nonexistent/admin.sock") };
        let err = client.fail(Status::already_exists("duplicate (entry ID e-1)"));
        assert!(matches!(err, CliError::Server { code: tonic::Code::AlreadyExists, .. }));
        assert_eq!(err.to_string(), "duplicate (entry ID e-1) (AlreadyExists)");
    }
}

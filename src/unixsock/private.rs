//! A private socket (the server's and the agent's admin sockets): a Unix socket in a
//! private directory, open to one uid.
//!
//! Three layers keep other users out: the directory is 0700 and owned by the server's
//! uid, the socket is 0600, and every accepted connection's peer uid (read from the kernel
//! with `SO_PEERCRED`, never from anything the client says) must be the server's own,
//! root's, or one the operator allowed; anything else is dropped with a log line.

use std::io;

use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::{Stream, StreamExt as _};

use super::{DirPolicy, PathProblem, bind_with_mode, own_uid, prepare_path};
use crate::fsutil::create_private_dir;

/// Mode of the admin socket.
pub const SOCKET_MODE: u32 = 0o600;

/// Why the admin socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// The socket's directory is a symbolic link (it could point anywhere).
    #[error("admin socket directory {0} is a symbolic link; use a real directory")]
    SymlinkDir(PathBuf),
    /// Something other than a directory is in the way.
    #[error("admin socket directory {0} is not a directory")]
    NotADirectory(PathBuf),
    /// The directory belongs to another user, who could replace the socket.
    #[error(
        "admin socket directory {path} is owned by uid {owner}, not by the server's uid \
         {own}; choose a directory the server owns"
    )]
    ForeignOwner {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The server's uid.
        own: u32,
    },
    /// The directory lets group or others in.
    #[error(
        "admin socket directory {path} has mode {mode:o}; it must be private: chmod 700 {path}"
    )]
    OpenDir {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Another server answers on the socket.
    #[error("admin socket {0} is in use by a running server; stop it or choose another path")]
    InUse(PathBuf),
    /// A file that is not a socket sits at the socket's path.
    #[error("{0} exists and is not a socket; remove it or choose another admin socket path")]
    NotASocket(PathBuf),
    /// The operating system refused.
    #[error("admin socket {path}: could not {action}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// What the OS said.
        source: io::Error,
    },
}

fn io_err(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> ListenerError {
    let path = path.to_path_buf();
    move |source| ListenerError::Io { path, action, source }
}

/// A bound admin socket and the uids allowed to use it.
#[derive(Debug)]
pub struct AdminListener {
    listener: UnixListener,
    path: PathBuf,
    allowed: Vec<u32>,
}

impl AdminListener {
    /// Prepares the directory, replaces a stale socket, binds and restricts the socket.
    /// `extra_uids` are allowed besides the server's own uid and root. Must be called
    /// inside a tokio runtime.
    pub fn bind(path: &Path, extra_uids: &[u32]) -> Result<Self, ListenerError> {
        let own = own_uid().map_err(io_err(path, "read the server's uid"))?;
        let policy = DirPolicy { create: create_private_dir, mode_ok: |mode| mode & 0o077 == 0 };
        prepare_path(path, own, &policy).map_err(|p| ListenerError::from_problem(p, own))?;
        let listener =
            bind_with_mode(path, SOCKET_MODE).map_err(|p| ListenerError::from_problem(p, own))?;
        let mut allowed = vec![own, 0];
        allowed.extend_from_slice(extra_uids);
        allowed.sort_unstable();
        allowed.dedup();
        Ok(Self { listener, path: path.to_path_buf(), allowed })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The uids whose connections are served.
    pub fn allowed_uids(&self) -> &[u32] {
        &self.allowed
    }

    /// Accepted connections from allowed uids; others are closed and logged.
    pub fn incoming(self) -> impl Stream<Item = io::Result<UnixStream>> + Send + 'static {
        let allowed = self.allowed;
        UnixListenerStream::new(self.listener).filter_map(move |conn| {
            let stream = match conn {
                Ok(stream) => stream,
                Err(e) => return Some(Err(e)),
            };
            match stream.peer_cred() {
                Ok(cred) if allowed.contains(&cred.uid()) => Some(Ok(stream)),
                Ok(cred) => {
                    tracing::warn!(
                        uid = cred.uid(),
                        pid = cred.pid(),
                        "admin socket: refused a connection from a uid that is not allowed"
                    );
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket: could not read peer credentials");
                    None
                }
            }
        })
    }
}

impl ListenerError {
    fn from_problem(problem: PathProblem, own: u32) -> Self {
        match problem {
            PathProblem::SymlinkDir(p) => Self::SymlinkDir(p),
            PathProblem::NotADirectory(p) => Self::NotADirectory(p),
            PathProblem::ForeignOwner(path, owner) => Self::ForeignOwner { path, owner, own },
            PathProblem::OpenMode(path, mode) => Self::OpenDir { path, mode },
            PathProblem::InUse(p) => Self::InUse(p),
            PathProblem::NotASocket(p) => Self::NotASocket(p),
            PathProblem::Io(path, action, source) => Self::Io { path, action, source },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[tokio::test]
    async fn creates_a_private_dir_and_socket_and_replaces_a_stale_one() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a/private/admin.sock");
        let listener = AdminListener::bind(&path, &[]).unwrap();
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(mode(&path), 0o600);
        assert!(listener.allowed_uids().contains(&0));
        assert!(listener.allowed_uids().contains(&own_uid().unwrap()));
        // While it listens, a second server is refused.
        assert!(matches!(AdminListener::bind(&path, &[]), Err(ListenerError::InUse(_))));
        drop(listener);
        // The socket file stays behind; the next bind removes it.
        assert!(path.exists());
        let again = AdminListener::bind(&path, &[7]).unwrap();
        assert!(again.allowed_uids().contains(&7));
        assert_eq!(mode(&path), 0o600);
    }

    #[tokio::test]
    async fn refuses_unsafe_directories_and_files_in_the_way() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        create_private_dir(&real).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = AdminListener::bind(&link.join("admin.sock"), &[]).unwrap_err();
        assert!(matches!(err, ListenerError::SymlinkDir(_)), "{err}");

        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = AdminListener::bind(&open.join("admin.sock"), &[]).unwrap_err();
        assert!(matches!(err, ListenerError::OpenDir { mode: 0o755, .. }), "{err}");
        assert!(err.to_string().contains("chmod 700"));

        let file = real.join("admin.sock");
        std::fs::write(&file, b"not a socket").unwrap();
        let err = AdminListener::bind(&file, &[]).unwrap_err();
        assert!(matches!(err, ListenerError::NotASocket(_)), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), b"not a socket");

        let plain = tmp.path().join("plain");
        std::fs::write(&plain, b"x").unwrap();
        let err = AdminListener::bind(&plain.join("admin.sock"), &[]).unwrap_err();
        assert!(matches!(err, ListenerError::NotADirectory(_)), "{err}");
    }

    #[tokio::test]
    async fn refuses_a_directory_owned_by_another_uid() {
        if own_uid().unwrap() != 0 {
            println!("note: not root, cannot chown a directory to another uid; skipped");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("theirs");
        create_private_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
        let err = AdminListener::bind(&dir.join("admin.sock"), &[]).unwrap_err();
        assert!(matches!(err, ListenerError::ForeignOwner { owner: 65534, .. }), "{err}");
    }
}

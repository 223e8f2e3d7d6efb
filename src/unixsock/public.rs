//! The Workload API socket: every local process may connect (attestation, not the file
//! mode, decides what each caller gets), but only the agent may create or replace it.
//!
//! The agent makes the socket's directory itself (mode 0755, parents too) and refuses to
//! use one that is a symbolic link, that another uid owns, or that group or others may
//! write to without the sticky bit: any of those would let someone else swap the socket
//! for their own and impersonate the agent. A socket left behind by an agent that is gone
//! is replaced; a live one, or a file that is not a socket, is left alone with an error.

use std::io;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

use super::{DirPolicy, PathProblem, bind_with_mode, prepare_path};

/// Mode of the socket: anyone may connect.
pub const SOCKET_MODE: u32 = 0o777;
/// Mode of a socket directory the agent creates.
pub const DIR_MODE: u32 = 0o755;

/// Why the Workload API socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// The socket's directory is a symbolic link.
    #[error("Workload API socket directory {0} is a symbolic link; use a real directory")]
    SymlinkDir(PathBuf),
    /// Something other than a directory is in the way.
    #[error("Workload API socket directory {0} is not a directory")]
    NotADirectory(PathBuf),
    /// Another user owns the directory and could replace the socket.
    #[error(
        "Workload API socket directory {path} is owned by uid {owner}, not by the agent's uid \
         {own}; choose a directory the agent owns (or let it create one)"
    )]
    ForeignOwner {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The agent's uid.
        own: u32,
    },
    /// Group or others may write to the directory (and so replace the socket).
    #[error(
        "Workload API socket directory {path} has mode {mode:o}: others could replace the \
         socket; chmod 755 {path}"
    )]
    WritableDir {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Another agent answers on the socket.
    #[error(
        "Workload API socket {0} is in use by a running agent; stop it or choose another socket_path"
    )]
    InUse(PathBuf),
    /// A file that is not a socket sits at the path.
    #[error("{0} exists and is not a socket; remove it or choose another socket_path")]
    NotASocket(PathBuf),
    /// The operating system refused.
    #[error("Workload API socket {path}: could not {action}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// What the OS said.
        source: io::Error,
    },
}

fn io_err(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> SocketError {
    let path = path.to_path_buf();
    move |source| SocketError::Io { path, action, source }
}

/// Prepares the directory, replaces a stale socket, binds, and opens the socket to every
/// local user. Must be called inside a tokio runtime.
pub fn bind_workload_socket(path: &Path) -> Result<UnixListener, SocketError> {
    let own = super::own_uid().map_err(io_err(path, "read the agent's uid"))?;
    // Group or others may not write to the directory (they could swap the socket),
    // unless the sticky bit keeps them from replacing our file.
    let policy =
        DirPolicy { create: create_public_dir, mode_ok: |m| m & 0o022 == 0 || m & 0o1000 != 0 };
    prepare_path(path, own, &policy).map_err(|p| SocketError::from_problem(p, own))?;
    bind_with_mode(path, SOCKET_MODE).map_err(|p| SocketError::from_problem(p, own))
}

/// Creates the directory and its parents with mode 0755 (whatever the umask).
fn create_public_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
}

impl SocketError {
    fn from_problem(problem: PathProblem, own: u32) -> Self {
        match problem {
            PathProblem::SymlinkDir(p) => Self::SymlinkDir(p),
            PathProblem::NotADirectory(p) => Self::NotADirectory(p),
            PathProblem::ForeignOwner(path, owner) => Self::ForeignOwner { path, owner, own },
            PathProblem::OpenMode(path, mode) => Self::WritableDir { path, mode },
            PathProblem::InUse(p) => Self::InUse(p),
            PathProblem::NotASocket(p) => Self::NotASocket(p),
            PathProblem::Io(path, action, source) => Self::Io { path, action, source },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[tokio::test]
    async fn creates_the_directory_and_an_open_socket_and_replaces_a_stale_one() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a/public/api.sock");
        let listener = bind_workload_socket(&path).unwrap();
        assert_eq!(mode(path.parent().unwrap()), 0o755);
        assert_eq!(mode(tmp.path().join("a").as_path()), 0o755);
        assert_eq!(mode(&path), 0o777);
        assert!(matches!(bind_workload_socket(&path), Err(SocketError::InUse(_))));
        drop(listener);
        assert!(path.exists(), "the dropped listener leaves its socket file");
        let _again = bind_workload_socket(&path).unwrap();
        assert_eq!(mode(&path), 0o777);
    }

    #[tokio::test]
    async fn a_sticky_world_writable_directory_is_accepted() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tmp-like");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        bind_workload_socket(&dir.join("api.sock")).unwrap();
    }

    #[tokio::test]
    async fn refuses_unsafe_directories_and_files_in_the_way() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = bind_workload_socket(&link.join("api.sock")).unwrap_err();
        assert!(matches!(err, SocketError::SymlinkDir(_)), "{err}");

        for open in [0o775, 0o777, 0o757] {
            let dir = tmp.path().join(format!("open-{open:o}"));
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(open)).unwrap();
            let err = bind_workload_socket(&dir.join("api.sock")).unwrap_err();
            assert!(matches!(err, SocketError::WritableDir { .. }), "{open:o}: {err}");
            assert!(err.to_string().contains("chmod 755"), "{err}");
        }

        let file = real.join("api.sock");
        std::fs::write(&file, b"not a socket").unwrap();
        let err = bind_workload_socket(&file).unwrap_err();
        assert!(matches!(err, SocketError::NotASocket(_)), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), b"not a socket", "the file must survive");

        let plain = tmp.path().join("plain");
        std::fs::write(&plain, b"x").unwrap();
        let err = bind_workload_socket(&plain.join("api.sock")).unwrap_err();
        assert!(matches!(err, SocketError::NotADirectory(_)), "{err}");
    }

    #[tokio::test]
    async fn refuses_a_directory_owned_by_another_uid() {
        if crate::unixsock::own_uid().unwrap() != 0 {
            println!("note: not root, cannot chown a directory to another uid; skipped");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("theirs");
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
        let err = bind_workload_socket(&dir.join("api.sock")).unwrap_err();
        assert!(matches!(err, SocketError::ForeignOwner { owner: 65534, own: 0, .. }), "{err}");
    }
}

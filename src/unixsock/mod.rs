//! Unix-socket listeners shared by every keycard socket: the server's admin socket, the
//! agent's admin socket ([`private`]: a 0700 directory, a 0600 socket, a peer-uid
//! allow-list) and the Workload API socket ([`public`]: open to every local user, in a
//! directory nobody else can write). Both refuse symlinked or foreign directories and
//! replace only a socket nobody answers on.

use std::io;
use std::os::unix::fs::FileTypeExt as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};

pub mod private;
pub mod public;

pub use private::{AdminListener, ListenerError, SOCKET_MODE as PRIVATE_SOCKET_MODE};
pub use public::{SocketError, bind_workload_socket};

/// Longest Unix socket path the kernel accepts (`sun_path` is 108 bytes with the NUL).
pub const MAX_SOCKET_PATH_LEN: usize = 107;

/// The uid this process runs as, from the kernel's credentials of a socket pair.
/// Must be called inside a tokio runtime.
pub fn own_uid() -> io::Result<u32> {
    let (a, _b) = UnixStream::pair()?;
    Ok(a.peer_cred()?.uid())
}

/// What sits at a socket path before binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Nothing.
    Absent,
    /// A socket nobody listens on: left by a process that is gone.
    Stale,
    /// A socket something answers on.
    Live,
    /// A file that is not a socket.
    NotASocket,
}

/// Looks at `path` without following a symlink.
pub fn existing_socket(path: &Path) -> io::Result<Existing> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Existing::Absent),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Ok(Existing::NotASocket);
    }
    Ok(if std::os::unix::net::UnixStream::connect(path).is_ok() {
        Existing::Live
    } else {
        Existing::Stale
    })
}

/// What is wrong with a socket's path or directory; each listener maps it to its own
/// error, which names the socket and the fix.
#[derive(Debug)]
pub(crate) enum PathProblem {
    /// The directory is a symbolic link.
    SymlinkDir(PathBuf),
    /// Something other than a directory is in the way.
    NotADirectory(PathBuf),
    /// Another uid owns the directory.
    ForeignOwner(PathBuf, u32),
    /// The directory's mode lets others in (the policy said which bits are too open).
    OpenMode(PathBuf, u32),
    /// Something answers on the socket.
    InUse(PathBuf),
    /// A file that is not a socket sits at the path.
    NotASocket(PathBuf),
    /// The operating system refused `action` on the path.
    Io(PathBuf, &'static str, io::Error),
}

/// How a socket's directory is made and which modes it may have.
pub(crate) struct DirPolicy {
    /// Creates the missing directory (and parents where the socket allows it).
    pub create: fn(&Path) -> io::Result<()>,
    /// Whether a directory with these permission bits is safe.
    pub mode_ok: fn(u32) -> bool,
}

/// Everything both listeners do before binding: the directory is created by `policy` or
/// checked (no symlink, a directory, owned by `own`, a safe mode), and a socket nobody
/// answers on is removed (a live one, or another file, is refused).
pub(crate) fn prepare_path(path: &Path, own: u32, policy: &DirPolicy) -> Result<(), PathProblem> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let meta = match std::fs::symlink_metadata(&dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            (policy.create)(&dir).map_err(io(&dir, "create directory"))?;
            std::fs::symlink_metadata(&dir).map_err(io(&dir, "inspect directory"))?
        }
        Err(e) => return Err(io(&dir, "inspect directory")(e)),
    };
    if meta.file_type().is_symlink() {
        return Err(PathProblem::SymlinkDir(dir));
    }
    if !meta.is_dir() {
        return Err(PathProblem::NotADirectory(dir));
    }
    if meta.uid() != own {
        return Err(PathProblem::ForeignOwner(dir, meta.uid()));
    }
    let mode = meta.mode() & 0o7777;
    if !(policy.mode_ok)(mode) {
        return Err(PathProblem::OpenMode(dir, mode));
    }
    match existing_socket(path).map_err(io(path, "inspect"))? {
        Existing::Absent => Ok(()),
        Existing::Live => Err(PathProblem::InUse(path.to_path_buf())),
        Existing::NotASocket => Err(PathProblem::NotASocket(path.to_path_buf())),
        Existing::Stale => std::fs::remove_file(path).map_err(io(path, "remove the stale socket")),
    }
}

/// The error of `action` on `path`, for `map_err`.
fn io(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> PathProblem {
    let path = path.to_path_buf();
    move |e| PathProblem::Io(path, action, e)
}

/// Binds `path` and sets `mode` on the socket file.
pub(crate) fn bind_with_mode(path: &Path, mode: u32) -> Result<UnixListener, PathProblem> {
    let listener = UnixListener::bind(path).map_err(|e| PathProblem::Io(path.into(), "bind", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| PathProblem::Io(path.into(), "set the mode of", e))?;
    Ok(listener)
}

//! Unix-socket listeners shared by every keycard socket: the server's admin socket, the
//! agent's admin socket ([`private`]: a 0700 directory, a 0600 socket, a peer-uid
//! allow-list) and the Workload API socket ([`public`]: open to every local user, in a
//! directory nobody else can write). Both refuse symlinked or foreign directories and
//! replace only a socket nobody answers on.

use std::io;
use std::os::unix::fs::FileTypeExt as _;
use std::path::Path;

use tokio::net::UnixStream;

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

//! Kernel peer credentials of a Unix socket, and pidfds.
//!
//! The standard library does not offer these calls on stable Rust, so this is the one
//! module of the crate that uses `unsafe`: each block is a single system call on a file
//! descriptor we borrow, with plain integers or a stack struct as arguments.
//!
//! - [`peer_cred`]: `SO_PEERCRED` (pid, uid, gid the kernel recorded at `connect()`).
//! - [`peer_pidfd`]: on kernels that have it (Linux 6.5+), `SO_PEERPIDFD`: a pidfd for
//!   exactly the process that connected, so a PID reused later is never mistaken for it.
//! - [`pidfd_open`]: a pidfd for a PID (Linux 5.3+), for callers found by PID only.
//! - [`pidfd_alive`]: whether the process a pidfd refers to is still running.
//! - [`watch_pidfd`]: a pidfd registered with tokio, to wait for the process to exit.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `SO_PEERPIDFD` (Linux 6.5). The `libc` crate does not define it; the number is the
/// same on every architecture that uses the generic socket option numbers.
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64",
    target_arch = "loongarch64"
))]
const SO_PEERPIDFD: Option<libc::c_int> = Some(77);
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64",
    target_arch = "loongarch64"
)))]
const SO_PEERPIDFD: Option<libc::c_int> = None;

/// What the kernel says about the process at the other end of a Unix socket.
#[derive(Debug)]
pub(crate) struct PeerIds {
    /// PID of the peer as seen from our PID namespace (0: the peer is outside it).
    pub pid: i32,
    /// Effective uid of the peer when it connected.
    pub uid: u32,
    /// Effective gid of the peer when it connected.
    pub gid: u32,
    /// Pidfd of the peer, when the kernel has `SO_PEERPIDFD`.
    pub pidfd: Option<OwnedFd>,
}

/// Reads `SO_PEERCRED` of a connected Unix socket; the pidfd is left `None`.
pub(crate) fn peer_cred(sock: BorrowedFd<'_>) -> io::Result<PeerIds> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `sock` is a valid open descriptor for the duration of the borrow; `cred` and
    // `len` are live stack values and `len` holds the exact size of `cred`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<libc::ucred>() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "short SO_PEERCRED answer"));
    }
    Ok(PeerIds { pid: cred.pid, uid: cred.uid, gid: cred.gid, pidfd: None })
}

/// `SO_PEERPIDFD` of a connected Unix socket; `Ok(None)` when the kernel does not know the
/// option. A peer that is already gone gives `ESRCH` (on kernels before pidfds of exited
/// tasks; later ones give a pidfd that polls as exited).
pub(crate) fn peer_pidfd(sock: BorrowedFd<'_>) -> io::Result<Option<OwnedFd>> {
    let Some(option) = SO_PEERPIDFD else {
        return Ok(None);
    };
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: as above; `fd` and `len` are live stack integers, `len` is the size of `fd`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw mut fd).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENOPROTOOPT) | Some(libc::EINVAL) => Ok(None),
            _ => Err(err),
        };
    }
    if fd < 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "negative SO_PEERPIDFD answer"));
    }
    // SAFETY: the kernel just installed `fd` in our table for us; nothing else owns it.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// `pidfd_open(pid, 0)`; `Ok(None)` when the kernel has no pidfds. `ESRCH`: no such process.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<Option<OwnedFd>> {
    // SAFETY: pidfd_open takes two integers and touches no memory of ours.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENOSYS) => Ok(None),
            _ => Err(err),
        };
    }
    let fd = libc::c_int::try_from(rc)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "pidfd out of range"))?;
    // SAFETY: the kernel just installed `fd` in our table for us; nothing else owns it.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Registers a pidfd with the tokio runtime (readable interest: it polls readable once the
/// process exited). Must run inside a runtime; on failure the descriptor comes back.
pub(crate) fn watch_pidfd(
    pidfd: OwnedFd,
) -> Result<tokio::io::unix::AsyncFd<OwnedFd>, (OwnedFd, io::Error)> {
    // SAFETY: the `AsyncFd` owns the `OwnedFd`, which returns the same open descriptor
    // from every `as_raw_fd` call and is closed only when the `AsyncFd` is dropped (after
    // it deregistered); nothing else holds or closes that descriptor.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE)
    }
    .map_err(|e| e.into_parts())
}

/// Whether the process behind `pidfd` is still running (not exited, not a zombie).
pub(crate) fn pidfd_alive(pidfd: BorrowedFd<'_>) -> io::Result<bool> {
    // A pidfd polls readable once its process has exited (zombies included).
    let mut entry = libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: `entry` is one live pollfd and we pass a count of 1; timeout 0 never blocks.
    let rc = unsafe { libc::poll(&raw mut entry, 1, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if entry.revents & (libc::POLLIN | libc::POLLHUP) != 0 {
        return Ok(false);
    }
    // Signal 0 sends nothing; it only asks whether the process still exists.
    // SAFETY: integers and a null siginfo pointer, which the call documents as allowed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ESRCH) => Ok(false),
        // Not allowed to signal it, which means it exists.
        Some(libc::EPERM) => Ok(true),
        _ => Err(err),
    }
}

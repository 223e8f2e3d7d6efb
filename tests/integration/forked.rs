//! Processes forked from this test process that run a few system calls and wait to be
//! killed: the callers of the attack test ([`crate::attackers`]) and the connection flood
//! of the limits test ([`crate::limits`]).
//!
//! A child forked from a multi-threaded process may only make async-signal-safe calls, so
//! every child here runs plain system calls on values built before the fork (no
//! allocation, no lock, nothing that can panic), and first closes every descriptor it was
//! not given on purpose: children forked side by side never hold each other's pipes or
//! connections. Children die with the thread that forked them (`PR_SET_PDEATHSIG`), and
//! a [`Reaper`] kills and reaps them when a test ends, also when it fails.

use std::fs::File;
use std::io::{self, Read as _};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::net::UnixStream;
use std::path::Path;

use libc::{c_int, pid_t};

/// Kills (SIGKILL) and reaps the processes it holds when dropped, also on a failure.
#[derive(Default)]
pub struct Reaper(pub Vec<pid_t>);

impl Reaper {
    /// Waits for `pid` to exit by itself; it is no longer held.
    pub fn wait(&mut self, pid: pid_t) -> io::Result<()> {
        self.0.retain(|p| *p != pid);
        let mut status = 0;
        // SAFETY: waitpid writes one int to a live local.
        if unsafe { libc::waitpid(pid, &raw mut status, 0) } != pid {
            return Err(io::Error::last_os_error());
        }
        match libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            true => Ok(()),
            false => Err(io::Error::other(format!("child {pid} failed: status {status:#x}"))),
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: plain integers; the PIDs are our children (or, through the
            // subreaper setting, our orphaned grandchildren), not yet reaped.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// Step `n` of a child succeeded, or its number is the child's exit status.
pub fn step(n: c_int, ok: bool) -> Result<(), c_int> {
    if ok { Ok(()) } else { Err(n) }
}

/// Forks a child that keeps only descriptors 0-2 and `keep`, dies with this thread when
/// `die_with_parent`, runs `body` and exits with 0 or the failed step. `body` may make
/// async-signal-safe calls only.
pub fn fork(
    keep: &[RawFd],
    die_with_parent: bool,
    body: impl FnOnce() -> Result<(), c_int>,
) -> io::Result<pid_t> {
    let mut kept = [RawFd::MAX; 4];
    kept[..keep.len()].copy_from_slice(keep);
    kept.sort_unstable();
    // SAFETY: the child below makes system calls only, on values built before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid > 0 {
        return Ok(pid);
    }
    // SAFETY (whole child): integer system calls; `_exit` never returns.
    unsafe {
        let mut low: libc::c_uint = 3;
        for fd in kept {
            let fd = fd as libc::c_uint;
            if fd > low {
                libc::syscall(libc::SYS_close_range, low, fd - 1, 0);
            }
            low = fd.saturating_add(1);
        }
        libc::syscall(libc::SYS_close_range, low, libc::c_uint::MAX, 0);
        if die_with_parent {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        }
        libc::_exit(match body() {
            Ok(()) => 0,
            Err(n) => n,
        })
    }
}

/// Drops to `uid` and `gid` with no supplementary groups (in a forked child).
pub fn ids(uid: u32, gid: u32) -> bool {
    // SAFETY: id system calls with integer arguments.
    unsafe {
        libc::setgroups(0, std::ptr::null()) == 0
            && libc::setgid(gid) == 0
            && libc::setuid(uid) == 0
    }
}

/// A Unix socket address, built before the fork.
#[derive(Clone, Copy)]
pub struct Address {
    addr: libc::sockaddr_un,
    len: libc::socklen_t,
}

/// Connects `sock` to `to` (in a forked child).
pub fn connect(sock: RawFd, to: &Address) -> bool {
    // SAFETY: the address is a live, fully built sockaddr_un of `len` bytes.
    unsafe { libc::connect(sock, (&raw const to.addr).cast(), to.len) == 0 }
}

pub fn say(fd: RawFd, byte: u8) -> bool {
    // SAFETY: writes one byte from a live local.
    unsafe { libc::write(fd, (&raw const byte).cast(), 1) == 1 }
}

/// Says ready on `fd`, then waits to be killed.
pub fn hold(fd: RawFd) -> Result<(), c_int> {
    step(9, say(fd, b'R'))?;
    loop {
        // SAFETY: pause(2) takes nothing; SIGKILL ends it.
        unsafe { libc::pause() };
    }
}

/// Sends `fd` over the Unix socket `over` (SCM_RIGHTS), with one byte of data.
pub fn send_fd(over: RawFd, fd: RawFd) -> bool {
    let byte = [b'x'];
    let mut space = [0u64; 8];
    // SAFETY: the message, its one iovec and its control buffer (64 bytes, aligned, more
    // than CMSG_SPACE of one int) are live locals; the macros are pointer arithmetic.
    unsafe {
        let mut iov = libc::iovec { iov_base: byte.as_ptr() as *mut _, iov_len: 1 };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = space.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(size_of::<c_int>() as u32) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<c_int>(), fd);
        libc::sendmsg(over, &raw const msg, 0) == 1
    }
}

/// Receives one descriptor sent by [`send_fd`]; -1 on failure.
pub fn recv_fd(over: RawFd) -> RawFd {
    let mut byte = [0u8; 1];
    let mut space = [0u64; 8];
    // SAFETY: as in `send_fd`; the kernel fills the buffers it is given.
    unsafe {
        let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = space.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(size_of::<c_int>() as u32) as _;
        if libc::recvmsg(over, &raw mut msg, 0) != 1 {
            return -1;
        }
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        if cmsg.is_null() || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            return -1;
        }
        std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<c_int>())
    }
}

pub fn owned(fd: c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just gave us, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: pipe2 writes two ints to a live local array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((owned(fds[0])?, owned(fds[1])?))
}

pub fn socket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (a, b) = UnixStream::pair()?;
    Ok((a.into(), b.into()))
}

/// The address of the socket file at `path`.
pub fn sockaddr(path: &Path) -> io::Result<Address> {
    // SAFETY: sockaddr_un is plain integers, for which all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::other(format!("socket path too long: {}", path.display())));
    }
    for (to, from) in addr.sun_path.iter_mut().zip(bytes) {
        *to = *from as libc::c_char;
    }
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    Ok(Address { addr, len: len as libc::socklen_t })
}

/// Waits (20 s at most) until `file` can be read.
pub fn wait_readable(file: &File, what: &str) -> io::Result<()> {
    let mut entry = libc::pollfd { fd: file.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one live pollfd, count 1.
    match unsafe { libc::poll(&raw mut entry, 1, 20_000) } {
        1 => Ok(()),
        0 => Err(io::Error::other(format!("{what}: the caller was not ready in 20 s"))),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Reads `n` bytes the child writes when it is ready.
pub fn read_ready(fd: OwnedFd, n: usize, what: &str) -> io::Result<Vec<u8>> {
    let mut file = File::from(fd);
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        wait_readable(&file, what)?;
        let mut buf = [0u8; 4];
        let read = file.read(&mut buf[..n - got.len()])?;
        if read == 0 {
            return Err(io::Error::other(format!("{what}: the caller exited before ready")));
        }
        got.extend_from_slice(&buf[..read]);
    }
    Ok(got)
}

pub fn expect_ready(fd: OwnedFd, what: &str) -> io::Result<()> {
    match read_ready(fd, 1, what)?[0] {
        b'R' => Ok(()),
        other => Err(io::Error::other(format!("{what}: unexpected byte {other}"))),
    }
}

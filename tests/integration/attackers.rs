//! The callers of the attestation attack test ([`crate::attacks`]): processes forked from
//! this test process that connect to the agent's Workload API socket and then do what an
//! attacker would (exit, fork and exit, drop to another uid, exec, hand the connection to
//! another uid, leave their PID to a process of a registered uid).
//!
//! The socket is made here before the fork and only `connect()`ed by the child, so the
//! kernel records the child as the peer (`SO_PEERCRED`, `SO_PEERPIDFD`) while this process
//! keeps a descriptor of the same connection and speaks gRPC over it: the agent sees only
//! the child. The children run system calls only ([`crate::forked`]).

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read as _};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Mutex;

use libc::pid_t;

use crate::forked::{
    Address, Reaper, connect, expect_ready, fork, hold, ids, owned, pipe, read_ready, recv_fd, say,
    send_fd, sockaddr, socket_pair, step, wait_readable,
};

/// The uid the registered entry selects.
pub const REGISTERED_UID: u32 = 4242;
/// The gid the registered entry selects.
pub const REGISTERED_GID: u32 = 4243;
/// A uid and gid no entry selects, for the wrong-uid and wrong-gid callers.
pub const OTHER_ID: u32 = 4244;
/// `nobody`: the uid of callers with no entry, attackers and receivers.
pub const NOBODY: u32 = 65534;
/// A program to exec into: it runs until it is killed.
const EXEC: &str = "/usr/bin/sleep";

/// Writing `ns_last_pid` and forking must not interleave between two PID-reuse callers.
static PID_CYCLE: Mutex<()> = Mutex::new(());

/// How a caller tries its luck; [`Kind::Registered`] is the one that must be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// uid and gid of the entry, running this test binary: served every time.
    Registered,
    /// `nobody`, for whom there is no entry at all.
    NoEntry,
    /// The entry's gid and executable, another uid.
    WrongUid,
    /// The entry's uid and executable, another gid.
    WrongGid,
    /// Registered, but the request lacks the `workload.spiffe.io` header.
    NoHeader,
    /// Registered, connects and exits before the request.
    ExitAfterConnect,
    /// Registered, connects, forks a child that keeps the connection, and exits.
    ForkParentExits,
    /// `nobody` connects and exits; a registered process is started on its PID.
    PidReuse,
    /// Registered when it connects, then drops to `nobody`.
    SetuidAfterConnect,
    /// Registered when it connects, then execs another program.
    ExecAfterConnect,
    /// Registered, passes the connection to a `nobody` process over SCM_RIGHTS, exits.
    PassedToOtherUid,
}

impl Kind {
    /// Every kind, in the order of the printed table.
    pub const ALL: [Kind; 11] = [
        Kind::Registered,
        Kind::NoEntry,
        Kind::WrongUid,
        Kind::WrongGid,
        Kind::NoHeader,
        Kind::ExitAfterConnect,
        Kind::ForkParentExits,
        Kind::PidReuse,
        Kind::SetuidAfterConnect,
        Kind::ExecAfterConnect,
        Kind::PassedToOtherUid,
    ];

    /// Whether its requests carry the security header.
    pub fn sends_header(self) -> bool {
        self != Kind::NoHeader
    }

    /// Whether the agent's attestation itself must fail (the connector is gone or is no
    /// longer who it was), rather than succeed and match no entry.
    pub fn fails_attestation(self) -> bool {
        matches!(
            self,
            Kind::ExitAfterConnect
                | Kind::ForkParentExits
                | Kind::PidReuse
                | Kind::SetuidAfterConnect
                | Kind::PassedToOtherUid
        )
    }
}

/// A caller set up and ready for its request: this process's descriptor of the
/// connection, and the processes still holding it (killed and reaped on drop).
pub struct Attempt {
    /// The connection the caller's connector made, as this process holds it.
    pub conn: UnixStream,
    /// For [`Kind::PidReuse`]: whether the registered process got exactly the PID of the
    /// connector that left (the kernel may hand out another one; counted, not required).
    pub pid_reused: Option<bool>,
    _reaper: Reaper,
}

/// What every child needs, built before the fork.
struct Plan {
    addr: Address,
    sock: std::os::fd::RawFd,
    exec: CString,
    exec_arg: CString,
}

/// Sets up a caller of `kind` against the Workload API socket at `socket`.
pub fn prepare(kind: Kind, socket: &Path) -> io::Result<Attempt> {
    // SAFETY: socket(2) with constant arguments; the new descriptor is owned at once.
    let sock = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    let sock = owned(sock)?;
    let plan = Plan {
        addr: sockaddr(socket)?,
        sock: sock.as_raw_fd(),
        exec: CString::new(EXEC)?,
        exec_arg: CString::new("600")?,
    };
    let mut reaper = Reaper::default();
    let (ready, ready_w) = pipe()?;
    let mut pid_reused = None;
    let (r, g) = (REGISTERED_UID, REGISTERED_GID);
    let w = ready_w.as_raw_fd();
    match kind {
        Kind::Registered | Kind::NoHeader | Kind::NoEntry | Kind::WrongUid | Kind::WrongGid => {
            let (uid, gid) = match kind {
                Kind::NoEntry => (NOBODY, NOBODY),
                Kind::WrongUid => (OTHER_ID, g),
                Kind::WrongGid => (r, OTHER_ID),
                _ => (r, g),
            };
            reaper.0.push(fork(&[plan.sock, w], true, || {
                step(1, ids(uid, gid))?;
                step(2, connect(plan.sock, &plan.addr))?;
                hold(w)
            })?);
            drop(ready_w);
            expect_ready(ready, &format!("{kind:?}"))?;
        }
        Kind::ExitAfterConnect => {
            let child = connect_and_exit(&plan, (r, g), &mut reaper)?;
            reaper.wait(child)?;
        }
        Kind::ForkParentExits => {
            let child = fork(&[plan.sock, w], true, || {
                step(1, ids(r, g))?;
                step(2, connect(plan.sock, &plan.addr))?;
                // SAFETY: fork in a single-threaded child; the grandchild only pauses.
                let holder = unsafe { libc::fork() };
                if holder == 0 {
                    loop {
                        // SAFETY: pause(2) takes nothing; SIGKILL ends it.
                        unsafe { libc::pause() };
                    }
                }
                step(3, holder > 0)?;
                let bytes = holder.to_le_bytes();
                // SAFETY: writes 4 bytes from a live local to our pipe.
                step(4, unsafe { libc::write(w, bytes.as_ptr().cast(), 4) } == 4)
            })?;
            reaper.0.push(child);
            drop(ready_w);
            let bytes = read_ready(ready, 4, &format!("{kind:?}"))?;
            let holder = pid_t::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            reaper.0.push(holder);
            reaper.wait(child)?;
        }
        Kind::PidReuse => {
            let (ready2, ready2_w) = pipe()?;
            let w2 = ready2_w.as_raw_fd();
            let child = connect_and_exit(&plan, (NOBODY, NOBODY), &mut reaper)?;
            let _cycle = PID_CYCLE.lock().unwrap_or_else(|p| p.into_inner());
            reaper.wait(child)?;
            // The kernel gives the next fork the PID after `ns_last_pid` (when it is free
            // and nothing else forks first).
            let _ = std::fs::write("/proc/sys/kernel/ns_last_pid", (child - 1).to_string());
            let heir = fork(&[w2], true, || {
                step(1, ids(r, g))?;
                hold(w2)
            })?;
            reaper.0.push(heir);
            drop(ready2_w);
            expect_ready(ready2, &format!("{kind:?}"))?;
            pid_reused = Some(heir == child);
        }
        Kind::SetuidAfterConnect => {
            reaper.0.push(fork(&[plan.sock, w], true, || {
                // SAFETY: id system calls with integer arguments. The effective uid is the
                // registered one at connect(); real and saved stay 0 so it can drop later.
                step(1, unsafe { libc::setgroups(0, std::ptr::null()) } == 0)?;
                step(2, unsafe { libc::setresgid(g, g, g) } == 0)?;
                step(3, unsafe { libc::setresuid(0, r, 0) } == 0)?;
                step(4, connect(plan.sock, &plan.addr))?;
                step(5, unsafe { libc::setresuid(u32::MAX, 0, u32::MAX) } == 0)?;
                step(6, unsafe { libc::setresuid(NOBODY, NOBODY, NOBODY) } == 0)?;
                hold(w)
            })?);
            drop(ready_w);
            expect_ready(ready, &format!("{kind:?}"))?;
        }
        Kind::ExecAfterConnect => {
            // The pipe closes on exec: end of file says the exec happened.
            reaper.0.push(fork(&[plan.sock, w], true, || {
                step(1, ids(r, g))?;
                step(2, connect(plan.sock, &plan.addr))?;
                let argv = [plan.exec.as_ptr(), plan.exec_arg.as_ptr(), std::ptr::null()];
                let envp = [std::ptr::null()];
                // SAFETY: NUL-terminated strings and arrays built before the fork.
                unsafe { libc::execve(plan.exec.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
                step(3, false)
            })?);
            drop(ready_w);
            let mut file = File::from(ready);
            wait_readable(&file, &format!("{kind:?}"))?;
            let mut byte = [0u8; 1];
            if file.read(&mut byte)? != 0 {
                return Err(io::Error::other(format!("{kind:?}: exec failed ({})", byte[0])));
            }
        }
        Kind::PassedToOtherUid => {
            let (here, there) = socket_pair()?;
            let (h, t) = (here.as_raw_fd(), there.as_raw_fd());
            reaper.0.push(fork(&[t, w], true, || {
                step(1, ids(NOBODY, NOBODY))?;
                step(2, recv_fd(t) >= 0)?;
                hold(w)
            })?);
            let connector = fork(&[plan.sock, h], true, || {
                step(1, ids(r, g))?;
                step(2, connect(plan.sock, &plan.addr))?;
                step(3, send_fd(h, plan.sock))
            })?;
            reaper.0.push(connector);
            drop((ready_w, here, there));
            expect_ready(ready, &format!("{kind:?}"))?;
            reaper.wait(connector)?;
        }
    }
    Ok(Attempt { conn: UnixStream::from(sock), pid_reused, _reaper: reaper })
}

/// Forks a connector of `ids` (uid, gid) that connects, says so and exits; returns its
/// PID once it said so (reap it with [`Reaper::wait`] to free the PID).
fn connect_and_exit(plan: &Plan, (uid, gid): (u32, u32), reaper: &mut Reaper) -> io::Result<pid_t> {
    let (ready, ready_w) = pipe()?;
    let w = ready_w.as_raw_fd();
    let child = fork(&[plan.sock, w], true, || {
        step(1, ids(uid, gid))?;
        step(2, connect(plan.sock, &plan.addr))?;
        step(3, say(w, b'R'))
    })?;
    reaper.0.push(child);
    drop(ready_w);
    expect_ready(ready, "a connector that exits")?;
    Ok(child)
}

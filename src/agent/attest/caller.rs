//! The process on the other end of a Workload API connection, pinned so that a PID reused
//! by another process during or after attestation is noticed.
//!
//! With a pidfd (`SO_PEERPIDFD`, or `pidfd_open` for a caller found by PID), the caller is
//! the process the pidfd refers to: it is the same process exactly while that process
//! runs. Without one, the caller is the PID plus its start time; it is the same process
//! while `/proc/<pid>` exists, runs, has the same start time and the same effective uid and
//! gid. (Start times tick at 100 Hz, so this fallback cannot tell apart two processes
//! started within the same 10 ms; pidfds have no such gap.)

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;

use super::AttestError;
use super::peer::{self, PeerIds};
use super::procfs;

/// An attested caller: PID, the uid/gid it connected with, its start time, and a pidfd
/// when the kernel offers one.
#[derive(Debug)]
pub struct Caller {
    pid: i32,
    uid: u32,
    gid: u32,
    start_time: u64,
    pidfd: Option<OwnedFd>,
    /// `/proc/<pid>` opened at attestation: files read through it fail with `ESRCH` once
    /// the process is gone, even when its PID has been given to another process.
    proc_dir: File,
}

impl Caller {
    /// Reads the kernel's peer credentials (and pidfd) of a connected Unix socket. Only
    /// system calls on the socket: cheap and non-blocking.
    pub(crate) fn peer_of(sock: impl AsFd) -> Result<PeerIds, AttestError> {
        let mut ids = peer::peer_cred(sock.as_fd()).map_err(AttestError::NoPeerCredentials)?;
        if ids.pid <= 0 {
            return Err(AttestError::PeerOutsidePidNamespace);
        }
        let pid = ids.pid;
        ids.pidfd = peer::peer_pidfd(sock.as_fd()).map_err(|e| match e.raw_os_error() {
            Some(libc::ESRCH) => AttestError::ProcessGone { pid },
            _ => AttestError::Pidfd(e),
        })?;
        Ok(ids)
    }

    /// Completes a caller from its peer credentials: reads its start time from `/proc`
    /// (blocking). Without `SO_PEERPIDFD` a pidfd is opened by PID (no better than `/proc`
    /// against a PID reused before this point, but it pins the process from here on).
    pub(crate) fn from_peer(ids: PeerIds) -> Result<Self, AttestError> {
        let PeerIds { pid, uid, gid, pidfd } = ids;
        let pidfd = match pidfd {
            Some(fd) => Some(fd),
            None => open_pidfd(pid)?,
        };
        let dir = procfs::proc_path(pid, "");
        let proc_dir = File::open(&dir).map_err(|e| procfs::proc_error(pid, &dir, e))?;
        let stat = procfs::read_stat(pid, pinned(&proc_dir, "stat"))?;
        let caller = Self { pid, uid, gid, start_time: stat.start_time, pidfd, proc_dir };
        if stat.exited() {
            return Err(AttestError::ProcessGone { pid });
        }
        // The start time just read belongs to the pidfd's process only if it still runs.
        caller.ensure_same_process()?;
        Ok(caller)
    }

    /// The process with this PID now (for `keycard agent explain --pid N`): uid and gid
    /// are its current effective ones. Blocking (reads `/proc`).
    pub fn from_pid(pid: i32) -> Result<Self, AttestError> {
        if pid <= 0 {
            return Err(AttestError::ProcessGone { pid });
        }
        let pidfd = open_pidfd(pid)?;
        let status = procfs::read_status(pid, procfs::proc_path(pid, "status"))?;
        let ids = PeerIds { pid, uid: status.uid, gid: status.gid, pidfd };
        Self::from_peer(ids)
    }

    /// The PID of the caller, as seen from the agent's PID namespace.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The effective uid the caller connected with.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// The effective gid the caller connected with.
    pub fn gid(&self) -> u32 {
        self.gid
    }

    /// Start time of the caller in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub fn start_time(&self) -> u64 {
        self.start_time
    }

    /// `/proc/<pid>/<leaf>` of exactly this process: through the directory opened at
    /// attestation, so reading it fails once the process is gone.
    pub(crate) fn proc_file(&self, leaf: &str) -> PathBuf {
        pinned(&self.proc_dir, leaf)
    }

    /// Whether the caller is pinned by a pidfd (else by PID and start time).
    pub fn has_pidfd(&self) -> bool {
        self.pidfd.is_some()
    }

    /// Drops the pidfd, so the caller is checked by PID and start time only (tests of the
    /// fallback used on kernels without pidfds).
    #[cfg(test)]
    pub(crate) fn without_pidfd(mut self) -> Self {
        self.pidfd = None;
        self
    }

    /// Whether the caller is still the process that was attested. `Ok(false)` when it
    /// exited or its PID now belongs to another process; `Err` only when the check itself
    /// could not be made.
    pub fn is_same_process(&self) -> Result<bool, AttestError> {
        match self.ensure_same_process() {
            Ok(()) => Ok(true),
            Err(AttestError::ProcessGone { .. } | AttestError::ProcessChanged { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Like [`Caller::is_same_process`], as an error naming what changed: use it to refuse.
    pub fn ensure_same_process(&self) -> Result<(), AttestError> {
        let pid = self.pid;
        if let Some(fd) = &self.pidfd {
            let alive = peer::pidfd_alive(fd.as_fd()).map_err(AttestError::Pidfd)?;
            if !alive {
                return Err(AttestError::ProcessGone { pid });
            }
        }
        let stat = procfs::read_stat(pid, self.proc_file("stat"))?;
        if stat.exited() {
            return Err(AttestError::ProcessGone { pid });
        }
        if stat.start_time != self.start_time {
            return Err(AttestError::ProcessChanged { pid, what: "start time" });
        }
        if self.pidfd.is_none() {
            let status = procfs::read_status(pid, self.proc_file("status"))?;
            if status.uid != self.uid {
                return Err(AttestError::ProcessChanged { pid, what: "effective uid" });
            }
            if status.gid != self.gid {
                return Err(AttestError::ProcessChanged { pid, what: "effective gid" });
            }
        }
        Ok(())
    }
}

fn pinned(dir: &File, leaf: &str) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}/{leaf}", dir.as_raw_fd()))
}

fn open_pidfd(pid: i32) -> Result<Option<OwnedFd>, AttestError> {
    peer::pidfd_open(pid).map_err(|e| match e.raw_os_error() {
        Some(libc::ESRCH) => AttestError::ProcessGone { pid },
        _ => AttestError::Pidfd(e),
    })
}

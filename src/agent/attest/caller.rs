//! The process on the other end of a Workload API connection, pinned so that a PID reused
//! by another process during or after attestation is noticed, and re-checked so that a
//! process that changes who it is (`setuid`, `setgroups`, `exec`) is noticed too.
//!
//! With a pidfd (`SO_PEERPIDFD`, or `pidfd_open` when the kernel lacks it), the caller is
//! the process the pidfd refers to: it is the same process exactly while that process
//! runs. Without one, the caller is the PID plus its start time; it is the same process
//! while `/proc/<pid>` exists, runs and has the same start time. (Start times tick at
//! 100 Hz, so this fallback cannot tell apart two processes started within the same 10 ms;
//! pidfds have no such gap.) Either way its effective uid and gid must still be the ones
//! the kernel recorded at `connect()` (`SO_PEERCRED`): a `pidfd_open(pid)` taken after the
//! connector exited would pin whoever got its PID, and a process that dropped to another
//! uid is no longer the caller that was attested.
//!
//! A [`Fingerprint`] records the rest of what the selectors come from (supplementary
//! groups, the executable file); [`Caller::ensure_unchanged`] compares it again.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use tokio::io::unix::AsyncFd;

use super::AttestError;
use super::peer::{self, PeerIds};
use super::procfs;

/// What the caller's selectors were derived from, besides its uid and gid: read before
/// the selectors are collected and compared again after, and on every later check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// Supplementary groups (`Groups:` of `/proc/<pid>/status`).
    groups: Vec<u32>,
    /// Device and inode of the file the process runs; `None` when the agent may not look
    /// (then no selector came from it either).
    exe: Option<(u64, u64)>,
}

impl Fingerprint {
    /// The supplementary groups.
    pub(crate) fn groups(&self) -> &[u32] {
        &self.groups
    }
}

/// The caller's pidfd: plain while attestation runs on the blocking pool, then registered
/// with the runtime so that a stream can wait for the process to exit.
#[derive(Debug)]
enum Pidfd {
    Plain(OwnedFd),
    Watched(AsyncFd<OwnedFd>),
}

impl Pidfd {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Self::Plain(fd) => fd.as_fd(),
            Self::Watched(fd) => fd.get_ref().as_fd(),
        }
    }
}

/// An attested caller: PID, the uid/gid it connected with, its start time, and a pidfd
/// when the kernel offers one.
#[derive(Debug)]
pub struct Caller {
    pid: i32,
    uid: u32,
    gid: u32,
    start_time: u64,
    pidfd: Option<Pidfd>,
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
        if ids.pidfd.is_none() {
            // No SO_PEERPIDFD: pin the PID now, as early as we can. Whoever it names is
            // checked against the uid and gid of SO_PEERCRED on every use.
            ids.pidfd = open_pidfd(pid)?;
        }
        Ok(ids)
    }

    /// Completes a caller from its peer credentials: reads its start time from `/proc`
    /// (blocking), then checks it is still the process that connected, with the uid and
    /// gid it connected with.
    pub(crate) fn from_peer(ids: PeerIds) -> Result<Self, AttestError> {
        Self::from_peer_with_status(ids).map(|(caller, _)| caller)
    }

    /// [`Caller::from_peer`], also returning the `status` it read (for the fingerprint,
    /// so that attestation reads it once less).
    pub(crate) fn from_peer_with_status(
        ids: PeerIds,
    ) -> Result<(Self, procfs::Status), AttestError> {
        let PeerIds { pid, uid, gid, pidfd } = ids;
        let pidfd = pidfd.map(Pidfd::Plain);
        let dir = procfs::proc_path(pid, "");
        let proc_dir = File::open(&dir).map_err(|e| procfs::proc_error(pid, &dir, e))?;
        let stat = procfs::stat_in(pid, &proc_dir)?;
        let caller = Self { pid, uid, gid, start_time: stat.start_time, pidfd, proc_dir };
        if stat.exited() {
            return Err(AttestError::ProcessGone { pid });
        }
        let status = procfs::status_in(pid, &caller.proc_dir)?;
        caller.ensure_same_ids(&status)?;
        // The directory opened and what was read through it belong to the pidfd's
        // process only if it still runs (without a pidfd, the start time just read is the
        // pin).
        if let Some(fd) = &caller.pidfd
            && !peer::pidfd_alive(fd.fd()).map_err(AttestError::Pidfd)?
        {
            return Err(AttestError::ProcessGone { pid });
        }
        Ok((caller, status))
    }

    /// The process with this PID now (for `keycard agent explain --pid N`): uid and gid
    /// are its current effective ones. Blocking (reads `/proc`).
    pub fn from_pid(pid: i32) -> Result<Self, AttestError> {
        if pid <= 0 {
            return Err(AttestError::ProcessGone { pid });
        }
        let pidfd = open_pidfd(pid)?;
        // Read after the pidfd pins the process, so the ids are of that process.
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

    /// `/proc/<pid>` of exactly this process, opened at attestation.
    pub(crate) fn proc_dir(&self) -> &File {
        &self.proc_dir
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

    /// Registers the pidfd with the tokio runtime so that [`Caller::exited`] can wait on
    /// it. Must run inside a runtime; without a pidfd (or when the registration fails) it
    /// changes nothing and [`Caller::exited`] never completes.
    pub(crate) fn watch_exit(&mut self) {
        if let Some(Pidfd::Plain(fd)) = self.pidfd.take() {
            self.pidfd = Some(match peer::watch_pidfd(fd) {
                Ok(watched) => Pidfd::Watched(watched),
                Err((fd, error)) => {
                    tracing::debug!(%error, "cannot watch the caller's pidfd; re-checked on a timer");
                    Pidfd::Plain(fd)
                }
            });
        }
    }

    /// Completes once the caller's process has exited (its pidfd polls readable); never
    /// when the pidfd is not watched (`watch_exit` registers it): callers without one are
    /// re-checked on a timer instead.
    pub async fn exited(&self) {
        let Some(Pidfd::Watched(fd)) = &self.pidfd else {
            return std::future::pending().await;
        };
        loop {
            match fd.readable().await {
                Ok(mut guard) => {
                    if !peer::pidfd_alive(fd.get_ref().as_fd()).unwrap_or(false) {
                        return;
                    }
                    guard.clear_ready();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot wait on the caller's pidfd");
                    return std::future::pending().await;
                }
            }
        }
    }

    /// Whether the caller is still the process that was attested. `Ok(false)` when it
    /// exited, its PID now belongs to another process, or its uid or gid changed; `Err`
    /// only when the check itself could not be made.
    pub fn is_same_process(&self) -> Result<bool, AttestError> {
        match self.ensure_same_process() {
            Ok(()) => Ok(true),
            Err(AttestError::ProcessGone { .. } | AttestError::ProcessChanged { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Like [`Caller::is_same_process`], as an error naming what changed: use it to refuse.
    pub fn ensure_same_process(&self) -> Result<(), AttestError> {
        self.ensure_alive()?;
        self.ensure_same_ids(&procfs::status_in(self.pid, &self.proc_dir)?)
    }

    /// The process still runs (its pidfd, then its `stat` read through the pinned
    /// directory) and has the start time it was attested with.
    fn ensure_alive(&self) -> Result<(), AttestError> {
        let pid = self.pid;
        if let Some(fd) = &self.pidfd {
            let alive = peer::pidfd_alive(fd.fd()).map_err(AttestError::Pidfd)?;
            if !alive {
                return Err(AttestError::ProcessGone { pid });
            }
        }
        let stat = procfs::stat_in(pid, &self.proc_dir)?;
        if stat.exited() {
            return Err(AttestError::ProcessGone { pid });
        }
        if stat.start_time != self.start_time {
            return Err(AttestError::ProcessChanged { pid, what: "start time" });
        }
        Ok(())
    }

    /// The effective uid and gid in `status` are still those the caller connected with
    /// (with a pidfd too: the process may have dropped to another uid since).
    fn ensure_same_ids(&self, status: &procfs::Status) -> Result<(), AttestError> {
        let pid = self.pid;
        if status.uid != self.uid {
            return Err(AttestError::ProcessChanged { pid, what: "effective uid" });
        }
        if status.gid != self.gid {
            return Err(AttestError::ProcessChanged { pid, what: "effective gid" });
        }
        Ok(())
    }

    /// What the selectors besides uid and gid are derived from, now (blocking: reads
    /// `/proc`). Take it before collecting selectors, and compare after.
    pub(crate) fn fingerprint(&self) -> Result<Fingerprint, AttestError> {
        let status = procfs::status_in(self.pid, &self.proc_dir)?;
        self.fingerprint_with(status)
    }

    /// The fingerprint from a `status` just read, and the executable now.
    pub(crate) fn fingerprint_with(
        &self,
        status: procfs::Status,
    ) -> Result<Fingerprint, AttestError> {
        // The link resolves to the inode the process runs, even when it was deleted.
        let exe = procfs::exe_inode_in(self.pid, &self.proc_dir)?;
        Ok(Fingerprint { groups: status.groups, exe })
    }

    /// [`Caller::ensure_same_process`], then the fingerprint compared with `attested`:
    /// refuses a caller that exited, or changed its uid, gid, supplementary groups or
    /// executable (`exec`) since it was attested. Blocking (reads `/proc`).
    ///
    /// Each file is read once, through the directory pinned at attestation (reads fail
    /// once the process is gone, whoever has its PID now); the process is then checked
    /// to be still the same one, so that what was read described it.
    pub fn ensure_unchanged(&self, attested: &Fingerprint) -> Result<(), AttestError> {
        // With a pidfd, the pinned directory's files fail once the process is gone and
        // the pidfd is asked last, so the start time (`stat`) adds nothing: it is read
        // only in the fallback without one.
        if self.pidfd.is_none() {
            self.ensure_alive()?;
        }
        let status = procfs::status_in(self.pid, &self.proc_dir)?;
        self.ensure_same_ids(&status)?;
        let now = self.fingerprint_with(status)?;
        let pid = self.pid;
        if now.groups != attested.groups {
            return Err(AttestError::ProcessChanged { pid, what: "supplementary groups" });
        }
        if now.exe != attested.exe {
            return Err(AttestError::ProcessChanged { pid, what: "executable" });
        }
        match &self.pidfd {
            // The pidfd names exactly this process: alive now means it was the one read.
            Some(fd) => match peer::pidfd_alive(fd.fd()).map_err(AttestError::Pidfd)? {
                true => Ok(()),
                false => Err(AttestError::ProcessGone { pid }),
            },
            None => self.ensure_alive(),
        }
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

//! Workload attestation: who is on the other end of a Workload API connection.
//!
//! The kernel says which process connected (peer credentials of the Unix socket, never a
//! secret the workload presents); the unix attestor turns that process into selectors
//! (`unix:uid:1000`, `unix:path:/usr/bin/app`, ...). A registration entry matches a caller
//! when the entry's selectors are a subset of the caller's.
//!
//! PID reuse: the caller may exit and another process take its PID while the agent reads
//! `/proc`, so the selectors would describe the wrong process. The caller is pinned by a
//! pidfd where the kernel has them, and always by its `/proc/<pid>` directory opened at
//! attestation (reads through it fail once the process is gone, whoever has the PID now)
//! and its start time; its effective uid and gid must still be those of `SO_PEERCRED`.
//! It is checked again AFTER the selectors are collected; a changed caller is refused.
//!
//! Identity changes: a process may `setuid`, `setgroups` or `exec` another program after
//! it connected, or hand its connection to another process and exit. [`Attested`] keeps
//! a [`Fingerprint`] of what its selectors came from; [`Attested::ensure_unchanged`]
//! refuses the caller once it exited or any of that changed. The Workload API calls it on
//! every call and before every stream update, and ends streams when the process exits
//! ([`Caller::exited`]).
//!
//! - [`caller`]: [`Caller`], the pinned process, and its same-process check.
//! - [`unix`]: the selectors and [`UnixAttestorOptions`].
//! - `peer`: the system calls (`SO_PEERCRED`, `SO_PEERPIDFD`, pidfds): the crate's only
//!   `unsafe` code. `procfs`: parsers of `/proc` and the account files.

pub mod caller;
mod peer;
mod procfs;
pub mod unix;

use std::path::PathBuf;

use tokio::net::UnixStream;

pub use caller::{Caller, Fingerprint};
use peer::PeerIds;
pub use unix::{DEFAULT_MAX_BINARY_SIZE, UnixAttestorOptions};

use crate::selector::SelectorSet;

/// Why a caller could not be attested.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// The kernel gave no peer credentials for the socket.
    #[error("no peer credentials for the Workload API connection: {0}")]
    NoPeerCredentials(#[source] std::io::Error),
    /// The peer's PID is 0: it lives in a PID namespace the agent cannot see into.
    #[error(
        "the caller is outside the agent's PID namespace (peer PID 0): run the agent in the \
         host PID namespace (for containers: hostPID / --pid=host)"
    )]
    PeerOutsidePidNamespace,
    /// The caller exited (before attestation finished, or since).
    #[error("the caller (PID {pid}) exited")]
    ProcessGone {
        /// The caller's PID.
        pid: i32,
    },
    /// The PID now belongs to another process, or the caller changed identity.
    #[error("the caller (PID {pid}) is no longer the attested process: its {what} changed")]
    ProcessChanged {
        /// The caller's PID.
        pid: i32,
        /// What changed: `start time`, `effective uid`, `effective gid`, `supplementary
        /// groups`, `executable`.
        what: &'static str,
    },
    /// A `/proc` file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    ProcRead {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A `/proc` file did not have the expected form.
    #[error("{} has no readable {what}", path.display())]
    ProcParse {
        /// The file.
        path: PathBuf,
        /// What was missing.
        what: &'static str,
    },
    /// Opening or checking a pidfd failed for another reason than the process being gone.
    #[error("pidfd of the caller: {0}")]
    Pidfd(#[source] std::io::Error),
    /// The blocking attestation task panicked or was cancelled.
    #[error("attestation task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// An attested caller and its selectors.
#[derive(Debug)]
pub struct Attested {
    /// The process, still pinned: check [`Attested::ensure_unchanged`] again before using
    /// the selectors for anything that follows later.
    pub caller: Caller,
    /// The selectors discovered for it (all of type `unix`).
    pub selectors: SelectorSet,
    /// What the selectors were derived from, besides uid and gid.
    pub fingerprint: Fingerprint,
}

impl Attested {
    /// Refuses the caller once it exited or changed uid, gid, supplementary groups or
    /// executable since it was attested: the selectors no longer describe it. Blocking.
    pub fn ensure_unchanged(&self) -> Result<(), AttestError> {
        self.caller.ensure_unchanged(&self.fingerprint)
    }
}

/// Who connected on a Workload API socket, as the kernel recorded it at `connect()`: pid,
/// uid, gid and a pidfd, read at accept (system calls only, no `/proc`), attested later by
/// [`attest_peer`].
#[derive(Debug)]
pub struct Peer(PeerIds);

impl Peer {
    /// Reads the peer credentials and pidfd of an accepted connection. Cheap and
    /// non-blocking.
    pub fn of(stream: &UnixStream) -> Result<Self, AttestError> {
        Caller::peer_of(stream).map(Self)
    }

    /// The effective uid the peer connected with.
    pub fn uid(&self) -> u32 {
        self.0.uid
    }
}

/// Attests a peer: its start time and unix selectors from `/proc`, with a fingerprint
/// taken before and compared after; then its pidfd is registered so that
/// [`Caller::exited`] can wait for it.
///
/// The `/proc` files are made by the kernel from memory and the account files are small
/// and cached, so they are read on the calling task: that costs less than the hand-off to
/// the blocking pool and back. With `unix:sha256` on, the whole executable is read, and
/// attestation runs on the blocking pool.
pub async fn attest_peer(
    peer: Peer,
    options: &UnixAttestorOptions,
) -> Result<Attested, AttestError> {
    let mut attested = if options.sha256 {
        let options = options.clone();
        tokio::task::spawn_blocking(move || attest_now(peer, &options)).await??
    } else {
        attest_now(peer, options)?
    };
    attested.caller.watch_exit();
    Ok(attested)
}

/// Whether [`attest_peer`] waits (on the blocking pool) with these options; when it does
/// not, it completes in its first poll and cannot be cancelled halfway.
pub fn attestation_waits(options: &UnixAttestorOptions) -> bool {
    options.sha256
}

/// The blocking part of [`attest_peer`].
fn attest_now(peer: Peer, options: &UnixAttestorOptions) -> Result<Attested, AttestError> {
    let (caller, status) = Caller::from_peer_with_status(peer.0)?;
    let fingerprint = caller.fingerprint_with(status)?;
    let selectors = unix::collect(&caller, fingerprint.groups(), options)?;
    let attested = Attested { caller, selectors, fingerprint };
    attested.ensure_unchanged()?;
    Ok(attested)
}

/// Attests the process that connected on `stream`: [`Peer::of`], then [`attest_peer`].
pub async fn attest(
    stream: &UnixStream,
    options: &UnixAttestorOptions,
) -> Result<Attested, AttestError> {
    attest_peer(Peer::of(stream)?, options).await
}

/// The selectors of the process with this PID now (for `keycard agent explain --pid N`).
/// Blocking: call it off the async runtime.
pub fn attest_pid(pid: i32, options: &UnixAttestorOptions) -> Result<SelectorSet, AttestError> {
    let caller = Caller::from_pid(pid)?;
    let fingerprint = caller.fingerprint()?;
    let selectors = unix::collect(&caller, fingerprint.groups(), options)?;
    caller.ensure_unchanged(&fingerprint)?;
    Ok(selectors)
}

#[cfg(test)]
mod tests;

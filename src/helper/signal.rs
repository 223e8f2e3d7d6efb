//! Signals between the helper and the programs it starts: sending `--renew-signal` to its
//! child (the standard library can only kill), and handing each program it starts the
//! signal state a freshly started program expects. These are the helper's only `unsafe`.
//!
//! Why the reset: a signal a process ignores stays ignored across `fork` and `exec`. A
//! helper started under `nohup` (or by any parent that ignores SIGHUP) would otherwise pass
//! the ignored SIGHUP on to `--cmd`, which could then never trap it: every renewal signal
//! would be lost. Handlers need no reset (`exec` resets them); blocked signals would stay
//! pending forever, so the mask is emptied too.
#![allow(unsafe_code)]

use std::str::FromStr;

/// Signals `--renew-signal` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewSignal {
    /// SIGHUP (nginx, haproxy, most daemons: reload).
    Hup,
    /// SIGUSR1.
    Usr1,
    /// SIGUSR2.
    Usr2,
    /// SIGINT.
    Int,
    /// SIGTERM.
    Term,
    /// SIGQUIT.
    Quit,
}

/// An unknown signal name.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// Not a signal the helper sends.
    #[error("unknown signal {0:?}: use SIGHUP, SIGUSR1, SIGUSR2, SIGINT, SIGTERM or SIGQUIT")]
    Unknown(String),
    /// The kernel refused.
    #[error("cannot signal PID {pid}: {source}")]
    Send {
        /// The target.
        pid: u32,
        /// What the kernel said.
        source: std::io::Error,
    },
}

impl FromStr for RenewSignal {
    type Err = SignalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim().to_ascii_uppercase();
        Ok(match name.strip_prefix("SIG").unwrap_or(&name) {
            "HUP" => Self::Hup,
            "USR1" => Self::Usr1,
            "USR2" => Self::Usr2,
            "INT" => Self::Int,
            "TERM" => Self::Term,
            "QUIT" => Self::Quit,
            _ => return Err(SignalError::Unknown(s.to_owned())),
        })
    }
}

impl RenewSignal {
    fn number(self) -> libc::c_int {
        match self {
            Self::Hup => libc::SIGHUP,
            Self::Usr1 => libc::SIGUSR1,
            Self::Usr2 => libc::SIGUSR2,
            Self::Int => libc::SIGINT,
            Self::Term => libc::SIGTERM,
            Self::Quit => libc::SIGQUIT,
        }
    }
}

/// Sends `signal` to the process `pid` (the helper's own child).
pub fn send(pid: u32, signal: RenewSignal) -> Result<(), SignalError> {
    let target = libc::pid_t::try_from(pid).ok().filter(|p| *p > 0).ok_or_else(|| {
        SignalError::Send { pid, source: std::io::Error::from(std::io::ErrorKind::InvalidInput) }
    })?;
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    let rc = unsafe { libc::kill(target, signal.number()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(SignalError::Send { pid, source: std::io::Error::last_os_error() })
    }
}

/// Makes `command` start its program with every catchable signal at its default action
/// and no signal blocked, whatever the helper itself inherited.
pub fn reset_in_child(command: &mut tokio::process::Command) {
    // Computed here: in the child, between fork and exec, only async-signal-safe calls.
    // The C library keeps the signals between 31 and SIGRTMIN for itself (glibc: 32, 33)
    // and refuses to change them; no program can trap them anyway.
    let (first_rt, last_rt) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    // SAFETY: the closure runs in the forked child before exec; it calls only sigaction,
    // sigemptyset and sigprocmask, which POSIX lists as async-signal-safe, allocates
    // nothing and touches no lock.
    unsafe {
        command.pre_exec(move || {
            let mut default: libc::sigaction = std::mem::zeroed();
            default.sa_sigaction = libc::SIG_DFL;
            libc::sigemptyset(&mut default.sa_mask);
            for signal in (1..=libc::SIGSYS).chain(first_rt..=last_rt) {
                if signal == libc::SIGKILL || signal == libc::SIGSTOP {
                    continue;
                }
                libc::sigaction(signal, &default, std::ptr::null_mut());
            }
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_with_or_without_sig_and_in_any_case() {
        assert_eq!("SIGHUP".parse::<RenewSignal>().unwrap(), RenewSignal::Hup);
        assert_eq!("hup".parse::<RenewSignal>().unwrap(), RenewSignal::Hup);
        assert_eq!("SIGUSR1".parse::<RenewSignal>().unwrap(), RenewSignal::Usr1);
        assert_eq!("usr2".parse::<RenewSignal>().unwrap(), RenewSignal::Usr2);
        let e = "SIGKILL".parse::<RenewSignal>().unwrap_err().to_string();
        assert!(e.contains("SIGKILL") && e.contains("SIGHUP"), "{e}");
        assert!(send(0, RenewSignal::Hup).is_err(), "PID 0 would signal the whole group");
    }

    /// The `SigIgn` and `SigBlk` masks of `/proc/self/status` as seen by a program started
    /// through `command`, which prints its own status.
    async fn child_masks(mut command: tokio::process::Command) -> (u64, u64) {
        let out = command.output().await.unwrap();
        assert!(out.status.success(), "{out:?}");
        let status = String::from_utf8(out.stdout).unwrap();
        let mask = |name: &str| {
            let line = status.lines().find(|l| l.starts_with(name)).unwrap();
            u64::from_str_radix(line[name.len()..].trim(), 16).unwrap()
        };
        (mask("SigIgn:"), mask("SigBlk:"))
    }

    /// Adds to `command` what a parent such as `nohup sh` leaves behind: HUP and USR1
    /// ignored, USR2 blocked.
    fn inherit_ignored_and_blocked(command: &mut tokio::process::Command) {
        // SAFETY: signal, sigemptyset, sigaddset and sigprocmask are async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                libc::signal(libc::SIGHUP, libc::SIG_IGN);
                libc::signal(libc::SIGUSR1, libc::SIG_IGN);
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGUSR2);
                libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                Ok(())
            });
        }
    }

    #[tokio::test]
    async fn a_started_program_ignores_and_blocks_nothing_its_parent_did() {
        let bit = |signal: libc::c_int| 1u64 << (signal - 1);
        let status = || {
            let mut command = tokio::process::Command::new("cat");
            command.arg("/proc/self/status");
            command
        };
        // Without the reset the program inherits the ignored and blocked signals...
        let mut inherited = status();
        inherit_ignored_and_blocked(&mut inherited);
        let (ignored, blocked) = child_masks(inherited).await;
        let hup_usr1 = bit(libc::SIGHUP) | bit(libc::SIGUSR1);
        assert_eq!(ignored & hup_usr1, hup_usr1, "{ignored:x}");
        assert_eq!(blocked & bit(libc::SIGUSR2), bit(libc::SIGUSR2), "{blocked:x}");

        // ...with it (run after the parent's state is in place) nothing is ignored or blocked.
        let mut reset = status();
        inherit_ignored_and_blocked(&mut reset);
        reset_in_child(&mut reset);
        let (ignored, blocked) = child_masks(reset).await;
        // The C library's own signals (glibc: 32, 33) are out of reach and of no use.
        let library: u64 = (libc::SIGSYS + 1..libc::SIGRTMIN()).map(bit).sum();
        let ignored = ignored & !library;
        assert_eq!(ignored, 0, "signals still ignored: {ignored:x}");
        assert_eq!(blocked, 0, "signals still blocked: {blocked:x}");
    }
}

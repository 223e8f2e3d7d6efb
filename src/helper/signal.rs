//! Sending a signal to the helper's child. The standard library can only kill; this is
//! the one other system call the helper needs, and the module's only `unsafe`.
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
}

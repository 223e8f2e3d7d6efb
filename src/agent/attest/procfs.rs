//! What `/proc` and the account files say about a process: start time and state
//! (`/proc/<pid>/stat`), effective uid/gid and supplementary groups (`/proc/<pid>/status`),
//! the executable (`/proc/<pid>/exe`), and user and group names (`/etc/passwd`,
//! `/etc/group`). Parsers are pure functions over text so they are tested without a process.

use std::fs::File;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};

use super::AttestError;

/// The parts of `/proc/<pid>/stat` attestation uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    /// Field 3: `R`, `S`, `Z` (zombie), `X` (dead), ...
    pub state: char,
    /// Field 22: start time in clock ticks since boot.
    pub start_time: u64,
}

impl Stat {
    /// A zombie or dead task has exited; what `/proc` shows of it no longer runs.
    pub fn exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// The parts of `/proc/<pid>/status` attestation uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Status {
    /// Effective uid (second number of `Uid:`).
    pub uid: u32,
    /// Effective gid (second number of `Gid:`).
    pub gid: u32,
    /// Supplementary groups (`Groups:`).
    pub groups: Vec<u32>,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may itself
/// contain spaces and `)`, so the fields after it start at the LAST `)`.
pub(crate) fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // `rest` starts at field 3 (state); field 22 is 19 fields further.
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(Stat { state, start_time })
}

/// Parses `/proc/<pid>/status`.
pub(crate) fn parse_status(text: &str) -> Option<Status> {
    let mut uid = None;
    let mut gid = None;
    let mut groups = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("Uid:") {
            uid = v.split_whitespace().nth(1).and_then(|n| n.parse().ok());
        } else if let Some(v) = line.strip_prefix("Gid:") {
            gid = v.split_whitespace().nth(1).and_then(|n| n.parse().ok());
        } else if let Some(v) = line.strip_prefix("Groups:") {
            groups = v.split_whitespace().map(|n| n.parse().ok()).collect::<Option<Vec<u32>>>();
        }
    }
    Some(Status { uid: uid?, gid: gid?, groups: groups? })
}

/// The name of `id` in an `/etc/passwd` or `/etc/group` text (`name:x:id:...`): the first
/// line with that id, as the C library answers.
pub(crate) fn name_for_id(text: &str, id: u32) -> Option<&str> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let mut parts = line.split(':');
        let name = parts.next()?;
        let found: u32 = parts.nth(1)?.trim().parse().ok()?;
        (found == id && !name.is_empty()).then_some(name)
    })
}

/// `/proc/<pid>/<leaf>`.
pub(crate) fn proc_path(pid: i32, leaf: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{leaf}"))
}

/// Maps a read error of a `/proc` file: a vanished process is [`AttestError::ProcessGone`].
pub(crate) fn proc_error(pid: i32, path: &Path, source: io::Error) -> AttestError {
    match source.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ESRCH) => AttestError::ProcessGone { pid },
        _ => AttestError::ProcRead { path: path.to_owned(), source },
    }
}

/// Reads `leaf` of a `/proc/<pid>` directory opened earlier (`dir`): one `openat` of that
/// name (no walk through `/proc/self/fd`), then reads into a buffer that fits the file.
/// Fails with [`AttestError::ProcessGone`] once the process is gone.
fn read_in(pid: i32, dir: &File, leaf: &str) -> Result<String, AttestError> {
    use rustix::fs::{Mode, OFlags, openat};
    let fail = |e: io::Error| proc_error(pid, &proc_path(pid, leaf), e);
    let fd = openat(dir, leaf, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| fail(e.into()))?;
    let mut text = String::with_capacity(4096);
    File::from(fd).read_to_string(&mut text).map_err(fail)?;
    Ok(text)
}

/// Reads and parses `stat` of the `/proc/<pid>` directory `dir`.
pub(crate) fn stat_in(pid: i32, dir: &File) -> Result<Stat, AttestError> {
    parse_stat(&read_in(pid, dir, "stat")?).ok_or(AttestError::ProcParse {
        path: proc_path(pid, "stat"),
        what: "start time (field 22)",
    })
}

/// Reads and parses `status` of the `/proc/<pid>` directory `dir`.
pub(crate) fn status_in(pid: i32, dir: &File) -> Result<Status, AttestError> {
    parse_status(&read_in(pid, dir, "status")?).ok_or(AttestError::ProcParse {
        path: proc_path(pid, "status"),
        what: "Uid, Gid and Groups lines",
    })
}

/// Device and inode of the file the process of the `/proc/<pid>` directory `dir` runs
/// (its `exe` link followed); `None` when the agent may not look.
pub(crate) fn exe_inode_in(pid: i32, dir: &File) -> Result<Option<(u64, u64)>, AttestError> {
    match rustix::fs::statat(dir, "exe", rustix::fs::AtFlags::empty()) {
        Ok(st) => Ok(Some((st.st_dev, st.st_ino))),
        Err(rustix::io::Errno::ACCESS) => Ok(None),
        Err(e) => Err(proc_error(pid, &proc_path(pid, "exe"), e.into())),
    }
}

/// Reads and parses `/proc/<pid>/status` (at `path`, which may be a pinned alias).
pub(crate) fn read_status(pid: i32, path: PathBuf) -> Result<Status, AttestError> {
    let text = std::fs::read_to_string(&path).map_err(|e| proc_error(pid, &path, e))?;
    parse_status(&text).ok_or(AttestError::ProcParse { path, what: "Uid, Gid and Groups lines" })
}

/// The path the `exe` link of the `/proc/<pid>` directory `dir` names, when it still
/// names this executable.
///
/// When the file was deleted or replaced after the process started, the kernel appends
/// ` (deleted)` and the path no longer leads to what runs: then `None`. A file whose real
/// name ends in ` (deleted)` is told apart by comparing device and inode with the file the
/// process runs.
pub(crate) fn read_exe_path(pid: i32, dir: &File) -> Result<Option<PathBuf>, AttestError> {
    use std::os::unix::ffi::OsStringExt as _;
    use std::os::unix::fs::MetadataExt;
    const DELETED: &str = " (deleted)";
    let fail = |e: rustix::io::Errno| proc_error(pid, &proc_path(pid, "exe"), e.into());
    let target = rustix::fs::readlinkat(dir, "exe", Vec::new()).map_err(fail)?;
    let target = PathBuf::from(std::ffi::OsString::from_vec(target.into_bytes()));
    if !target.is_absolute() {
        return Ok(None);
    }
    let Some(text) = target.to_str() else {
        return Ok(Some(target));
    };
    if !text.ends_with(DELETED) {
        return Ok(Some(target));
    }
    let running = rustix::fs::statat(dir, "exe", rustix::fs::AtFlags::empty()).map_err(fail)?;
    let same = std::fs::metadata(&target)
        .map(|m| m.dev() == running.st_dev && m.ino() == running.st_ino)
        .unwrap_or(false);
    Ok(same.then_some(target))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat_line(comm: &str) -> String {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime cutime cstime priority nice threads itrealvalue starttime vsize ...
        format!(
            "4242 ({comm}) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 77"
        )
    }

    #[test]
    fn stat_start_time_is_field_22() {
        let s = parse_stat(&stat_line("sleep")).unwrap();
        assert_eq!(s, Stat { state: 'S', start_time: 987654 });
        assert!(!s.exited());
    }

    #[test]
    fn stat_comm_with_spaces_and_parentheses() {
        for comm in ["a b", "x) R 1 2 3", "((", ") 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 1"]
        {
            let s = parse_stat(&stat_line(comm)).unwrap();
            assert_eq!(s.start_time, 987654, "comm {comm:?}");
            assert_eq!(s.state, 'S');
        }
    }

    #[test]
    fn stat_truncated_or_zombie() {
        assert_eq!(parse_stat("12 (x) S 1 2"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
        let z = parse_stat(&stat_line("z").replace(") S", ") Z")).unwrap();
        assert!(z.exited());
    }

    #[test]
    fn status_effective_ids_and_groups() {
        let text =
            "Name:\tx\nUid:\t1000\t1001\t1002\t1003\nGid:\t50\t51\t52\t53\nGroups:\t4 24 27 \n";
        let s = parse_status(text).unwrap();
        assert_eq!(s, Status { uid: 1001, gid: 51, groups: vec![4, 24, 27] });
        let none = parse_status("Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n").unwrap();
        assert!(none.groups.is_empty());
        assert_eq!(parse_status("Uid:\t0\t0\t0\t0\nGroups:\n"), None);
        assert_eq!(parse_status("Uid:\t0\tx\nGid:\t0\t0\nGroups:\n"), None);
    }

    #[test]
    fn names_from_account_files() {
        let passwd = "# comment\nroot:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n\
                      dup:x:65534:1::/:/bin/false\nbroken\n";
        assert_eq!(name_for_id(passwd, 0), Some("root"));
        assert_eq!(name_for_id(passwd, 65534), Some("nobody"));
        assert_eq!(name_for_id(passwd, 7), None);
        assert_eq!(name_for_id("wheel:x:10:alice,bob\n", 10), Some("wheel"));
    }
}

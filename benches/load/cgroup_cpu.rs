//! CPU time of one daemon to the microsecond: the process is moved into a cgroup of its
//! own, whose counter holds every thread's time, those that have exited included (cgroup
//! v1 `cpuacct.usage` in nanoseconds, or v2 `cpu.stat` `usage_usec`). `/proc/<pid>/stat`
//! counts in 10 ms ticks, too coarse for a few seconds of an idle process. Needs root and a
//! cgroup file system; where the bench may not make a cgroup, [`CpuMeter::attach`] says
//! `None` and the caller falls back to the ticks.

use std::path::{Path, PathBuf};

/// A cgroup holding one process, removed (the process moved back) when dropped.
pub struct CpuMeter {
    dir: PathBuf,
    /// Where the process goes back to.
    parent: PathBuf,
    /// cgroup v2 (`cpu.stat`) rather than v1 (`cpuacct.usage`).
    v2: bool,
}

impl CpuMeter {
    /// Moves `pid` (all its threads) into a new cgroup named after this bench and `name`.
    pub fn attach(pid: u32, name: &str) -> Option<CpuMeter> {
        let v1 = Path::new("/sys/fs/cgroup/cpuacct");
        let v2 = Path::new("/sys/fs/cgroup");
        let (parent, is_v2) = if v1.join("cpuacct.usage").exists() {
            (v1.to_path_buf(), false)
        } else if v2.join("cgroup.controllers").exists() {
            (v2.to_path_buf(), true)
        } else {
            return None;
        };
        let dir = parent.join(format!("keycard-bench-{}-{name}", std::process::id()));
        std::fs::create_dir(&dir).ok()?;
        let meter = CpuMeter { dir, parent, v2: is_v2 };
        std::fs::write(meter.dir.join("cgroup.procs"), pid.to_string()).ok()?;
        Some(meter)
    }

    /// CPU time used in the cgroup so far, in seconds.
    pub fn seconds(&self) -> f64 {
        let read = |file: &str| {
            std::fs::read_to_string(self.dir.join(file))
                .unwrap_or_else(|e| panic!("cannot read {}/{file}: {e}", self.dir.display()))
        };
        if self.v2 {
            let stat = read("cpu.stat");
            let usec = stat
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no usage_usec in {}/cpu.stat", self.dir.display()));
            usec / 1e6
        } else {
            let ns: f64 = read("cpuacct.usage").trim().parse().expect("cpuacct.usage is a number");
            ns / 1e9
        }
    }
}

impl Drop for CpuMeter {
    fn drop(&mut self) {
        // A cgroup that still holds a process cannot be removed: move them back first.
        if let Ok(procs) = std::fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = std::fs::write(self.parent.join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

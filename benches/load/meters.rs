//! What a daemon under load costs, as measured from outside it: its resident memory and
//! CPU time from `/proc/<pid>/{status,stat}` (and how to find the PID of a daemon this
//! process started), one sample of its Prometheus metrics, and the bytes on the wire
//! between the agent and the server ([`WireMeter`]).

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The PID of a child of this process whose command line mentions `marker` (a path only
/// that daemon was given, such as its data directory). Panics naming `what` if there is none.
pub fn child_pid(marker: &Path, what: &str) -> u32 {
    let me = std::process::id();
    let marker = marker.to_string_lossy().into_owned();
    let entries = std::fs::read_dir("/proc").expect("/proc is readable");
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        if stat_field(&stat, 3) != Some(u64::from(me)) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&marker) {
            return pid;
        }
    }
    panic!("no child process of {me} mentions {marker} ({what})");
}

/// Field `n` of `/proc/<pid>/stat`, numbered from 0 (proc(5) numbers from 1: 3 here is
/// `ppid`, 13 `utime`, 14 `stime`), counted after the parenthesised command name, which
/// may itself hold spaces and parentheses.
fn stat_field(stat: &str, n: usize) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ")" come field 2 (state), 3 (ppid), ...
    rest.split_whitespace().nth(n.checked_sub(2)?)?.parse().ok()
}

/// Resident set size in MiB (`VmRSS`).
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"));
    kib / 1024.0
}

/// User plus system CPU time in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/stat: {e}"));
    let ticks = stat_field(&stat, 13).unwrap_or(0) + stat_field(&stat, 14).unwrap_or(0);
    // SAFETY: sysconf takes an integer and returns one; it touches no memory of ours.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ticks as f64 / per_second.max(1) as f64
}

/// One value from a Prometheus text page at `http://<address>/metrics`: the first sample
/// whose line starts with `name` (with its labels, if given: `name{a="b"}`). `None` while
/// the endpoint does not answer or has no such sample.
pub fn metric(address: &str, name: &str) -> Option<f64> {
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
    // HTTP/1.0: the body is close-delimited, never chunked, so every line arrives whole.
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?;
        // `name` must be the whole metric name: next comes a space (or its labels).
        let value = value.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// Bytes on the wire between the agent and the server: a TCP relay on loopback that the
/// agent is pointed at instead of the server, counting every byte it forwards either way.
/// The agent authenticates the server by SPIFFE ID, not by address, so TLS passes through
/// untouched; the count is TLS records (headers, HTTP/2 frames, gRPC messages, pings),
/// without the TCP/IP headers. (`/proc/PID/io` cannot tell: Rust sockets use send/recv,
/// which its rchar and wchar do not count.) It stops accepting when dropped.
pub struct WireMeter {
    /// Where the agent should connect (`127.0.0.1:port`).
    pub address: String,
    bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl WireMeter {
    /// Starts relaying connections to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> WireMeter {
        let listener = TcpListener::bind("127.0.0.1:0").expect("wire meter: a free port");
        let address = listener.local_addr().expect("wire meter: its address").to_string();
        let bytes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopped, upstream) = (bytes.clone(), stop.clone(), upstream.to_owned());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else { continue };
                relay(client, server, &count);
            }
        });
        WireMeter { address, bytes, stop }
    }

    /// Bytes forwarded so far, both directions together.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

impl Drop for WireMeter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(&self.address);
    }
}

/// Copies both ways between `a` and `b` on two threads, adding every byte to `count`.
fn relay(a: TcpStream, b: TcpStream, count: &Arc<AtomicU64>) {
    let _ = a.set_nodelay(true);
    let _ = b.set_nodelay(true);
    for (from, to) in [(&a, &b), (&b, &a)] {
        let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else { return };
        let count = count.clone();
        std::thread::spawn(move || {
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                match from.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to.write_all(&buffer[..n]).is_err() {
                            break;
                        }
                        count.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
            let _ = to.shutdown(Shutdown::Write);
        });
    }
}

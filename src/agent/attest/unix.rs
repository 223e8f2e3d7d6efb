//! The unix workload attestor: selectors of type `unix` for a caller.
//!
//! | selector | source |
//! |---|---|
//! | `unix:uid:<n>`, `unix:gid:<n>` | the uid/gid the caller connected with |
//! | `unix:user:<name>`, `unix:group:<name>` | `/etc/passwd`, `/etc/group` (left out when unknown) |
//! | `unix:supplementary_gid:<n>`, `unix:supplementary_group:<name>` | `Groups:` of `/proc/<pid>/status` |
//! | `unix:path:<path>` | `/proc/<pid>/exe` (left out when the file was deleted or replaced, or the agent may not read the link) |
//! | `unix:sha256:<hex>` | opt-in: the executable, read through `/proc/<pid>/exe`, up to a size limit |
//!
//! Names come from the account files only (no NSS modules such as LDAP or sssd).

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::caller::Caller;
use super::{AttestError, procfs};
use crate::selector::{Selector, SelectorSet};

/// Default largest executable hashed for `unix:sha256`: 64 MiB.
pub const DEFAULT_MAX_BINARY_SIZE: u64 = 64 * 1024 * 1024;

/// Options of the unix attestor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixAttestorOptions {
    /// Emit `unix:sha256:<hex>` of the caller's executable (reads the whole file).
    pub sha256: bool,
    /// Executables larger than this get no `unix:sha256` selector (a warning is logged).
    pub max_binary_size: u64,
}

impl Default for UnixAttestorOptions {
    fn default() -> Self {
        Self { sha256: false, max_binary_size: DEFAULT_MAX_BINARY_SIZE }
    }
}

/// Collects the unix selectors of `caller` whose supplementary groups are `groups` (from
/// its [`Fingerprint`](super::caller::Fingerprint)); blocking: reads `/proc` and account
/// files.
///
/// The caller is NOT re-checked here; whoever uses the selectors must call
/// [`Caller::ensure_unchanged`] afterwards, or they may describe a process that took
/// over the PID meanwhile.
pub(crate) fn collect(
    caller: &Caller,
    groups: &[u32],
    options: &UnixAttestorOptions,
) -> Result<SelectorSet, AttestError> {
    let pid = caller.pid();
    let mut set = SelectorSet::new();
    let passwd = read_account_file("/etc/passwd");
    let group = read_account_file("/etc/group");

    add(&mut set, format!("uid:{}", caller.uid()));
    if let Some(name) = procfs::name_for_id(&passwd, caller.uid()) {
        add(&mut set, format!("user:{name}"));
    }
    add(&mut set, format!("gid:{}", caller.gid()));
    if let Some(name) = procfs::name_for_id(&group, caller.gid()) {
        add(&mut set, format!("group:{name}"));
    }

    for gid in groups {
        add(&mut set, format!("supplementary_gid:{gid}"));
        if let Some(name) = procfs::name_for_id(&group, *gid) {
            add(&mut set, format!("supplementary_group:{name}"));
        }
    }

    match skip_if_denied(procfs::read_exe_path(pid, caller.proc_dir()))? {
        Some(Some(path)) => match path.to_str() {
            Some(text) => add(&mut set, format!("path:{text}")),
            None => tracing::warn!(pid, ?path, "executable path is not UTF-8: no unix:path"),
        },
        Some(None) => tracing::warn!(pid, "executable was deleted or replaced: no unix:path"),
        None => {}
    }

    if options.sha256 {
        let hashed = hash_executable(pid, &caller.proc_file("exe"), options.max_binary_size);
        if let Some(Some(hex)) = skip_if_denied(hashed)? {
            add(&mut set, format!("sha256:{hex}"));
        }
    }
    Ok(set)
}

/// SHA-256 of the file the process runs, read through its `exe` link (the inode it runs,
/// not whatever its path names now). `None` above `max_size`.
fn hash_executable(pid: i32, path: &Path, max_size: u64) -> Result<Option<String>, AttestError> {
    let file = std::fs::File::open(path).map_err(|e| procfs::proc_error(pid, path, e))?;
    let size = file.metadata().map_err(|e| procfs::proc_error(pid, path, e))?.len();
    if size > max_size {
        tracing::warn!(
            pid,
            size,
            max_size,
            "executable larger than max_binary_size: no unix:sha256 selector"
        );
        return Ok(None);
    }
    let mut hasher = Sha256::new();
    let mut reader = file.take(max_size.saturating_add(1));
    let mut buf = vec![0u8; 64 * 1024];
    let mut total: u64 = 0;
    loop {
        let n = reader.read(&mut buf).map_err(|e| procfs::proc_error(pid, path, e))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        hasher.update(&buf[..n]);
    }
    if total > max_size {
        tracing::warn!(pid, max_size, "executable grew past max_binary_size: no unix:sha256");
        return Ok(None);
    }
    Ok(Some(hex::encode(hasher.finalize())))
}

/// The agent may not look at another user's executable (it runs without root, or the
/// process is not dumpable): then the selectors that need it are left out, with a warning,
/// rather than failing the whole attestation. `Ok(None)`: denied.
fn skip_if_denied<T>(result: Result<T, AttestError>) -> Result<Option<T>, AttestError> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(AttestError::ProcRead { path, source })
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            tracing::warn!(path = %path.display(), "not allowed to read the caller's executable: no unix:path or unix:sha256");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn read_account_file(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| {
        tracing::debug!(path, error = %e, "account file unreadable: no names in selectors");
        String::new()
    })
}

/// Adds `unix:<value>`; a value that makes no valid selector (a path with a control
/// character, say) is left out with a warning: fewer selectors only match fewer entries.
fn add(set: &mut SelectorSet, value: String) {
    match Selector::new("unix", &value) {
        Ok(s) => {
            set.insert(s);
        }
        Err(e) => tracing::warn!(error = %e, "discovered value makes no selector; left out"),
    }
}

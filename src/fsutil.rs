//! Atomic file writes, for keys and other files that must never be seen half-written.
//!
//! A write goes to a fresh temporary file in the destination's directory (created with its
//! final mode, so a private file is never readable by others even for an instant), is
//! flushed to disk, renamed over the destination, and then the directory itself is flushed
//! so that the rename survives a crash. Readers see either the old file or the new one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of private files: read and write for the owner only.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Mode of private directories: owner only.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// Writes `bytes` to `path` atomically with mode 0600 (owner read/write only).
pub fn write_private_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic(path, bytes, PRIVATE_FILE_MODE)
}

/// Writes `bytes` to `path` atomically, leaving the file with exactly `mode` (the umask
/// does not apply).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent_dir(path);
    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "destination has no file name")
    })?;
    let (tmp_path, mut file) = create_temp(&dir, &file_name.to_string_lossy(), mode)?;
    let result = (|| {
        // The umask may have removed bits at creation; set the exact mode asked for.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp_path, path)
    })();
    if let Err(err) = result {
        // Best effort: the write already failed, a leftover temp file is the lesser problem.
        let _ = fs::remove_file(&tmp_path);
        return Err(err);
    }
    sync_dir(&dir)
}

/// Creates `dir` (and its parents) if missing and sets it to mode 0700.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(PRIVATE_DIR_MODE).create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_DIR_MODE))
}

/// Flushes a directory's entries (renames, creations, removals) to disk.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Creates a new, unique temporary file next to the destination. `create_new` refuses to
/// follow or reuse anything already there, so a planted file or symlink cannot be written
/// through.
fn create_temp(dir: &Path, base: &str, mode: u32) -> io::Result<(PathBuf, File)> {
    for _ in 0..16 {
        let suffix: u64 = rand::random();
        let tmp = dir.join(format!(".{base}.{suffix:016x}.tmp"));
        match OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(err),
        }
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, "could not pick a unique temporary name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn private_write_has_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        write_private_atomic(&path, b"secret").unwrap();
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(fs::read(&path).unwrap(), b"secret");
    }

    #[test]
    fn rewrite_replaces_whole_content_and_tightens_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"a much longer original content").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_private_atomic(&path, b"short").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"short");
        assert_eq!(mode_of(&path), 0o600);
    }

    #[test]
    fn no_temp_file_is_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle.pem");
        write_atomic(&path, b"one", 0o644).unwrap();
        write_atomic(&path, b"two", 0o644).unwrap();
        assert_eq!(entries(dir.path()), vec!["bundle.pem".to_string()]);
        assert_eq!(mode_of(&path), 0o644);
    }

    #[test]
    fn failed_write_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        // Renaming a file over a non-empty directory fails.
        let target = dir.path().join("occupied");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("x"), b"x").unwrap();
        assert!(write_private_atomic(&target, b"data").is_err());
        assert_eq!(entries(dir.path()), vec!["occupied".to_string()]);
    }

    #[test]
    fn private_dir_is_0700() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("a/b/keys");
        create_private_dir(&keys).unwrap();
        assert_eq!(mode_of(&keys), 0o700);
    }
}

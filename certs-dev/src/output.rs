//! Collects generated files in memory, then writes them in one go: nothing reaches the disk
//! until every certificate was built, and each file is replaced through a temporary file and
//! a rename so that a reader never sees half a file. A file that already holds exactly the
//! new content is left alone (same inode, same modification time).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::Manifest;

/// Files waiting to be written, by path relative to the output directory.
#[derive(Default)]
pub struct Output {
    files: Vec<(PathBuf, String)>,
}

impl Output {
    /// Queues one file.
    pub fn add(&mut self, path: impl Into<PathBuf>, contents: impl Into<String>) {
        self.files.push((path.into(), contents.into()));
    }

    /// Fails unless the queued files are exactly those `manifest` lists, so the manifest
    /// (which tests read without generating) cannot drift from what is written.
    pub fn check_matches(&self, manifest: &Manifest) -> Result<()> {
        let mut queued: Vec<&Path> = self.files.iter().map(|(p, _)| p.as_path()).collect();
        let mut listed = manifest.files();
        queued.sort();
        listed.sort();
        if queued != listed {
            bail!("generated files {queued:?} differ from the manifest {listed:?}");
        }
        Ok(())
    }

    /// Writes every queued file under `dir` whose content differs from what is there, and
    /// returns how many it wrote. Key files get mode 0600 on Unix.
    pub fn write_all(&self, dir: &Path) -> Result<usize> {
        let mut written = 0;
        for (rel, contents) in &self.files {
            let path = dir.join(rel);
            if fs::read(&path).is_ok_and(|old| old == contents.as_bytes()) {
                continue;
            }
            let parent = path.parent().unwrap_or(dir);
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            let private = rel.to_string_lossy().ends_with(".key.pem");
            write_atomically(&path, contents.as_bytes(), private)
                .with_context(|| format!("writing {}", path.display()))?;
            written += 1;
        }
        Ok(written)
    }
}

/// Writes `path` through a temporary sibling file and a rename.
fn write_atomically(path: &Path, contents: &[u8], private: bool) -> Result<()> {
    let name = path.file_name().context("no file name")?.to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| -> Result<()> {
        let mut file = fs::File::create(&tmp)?;
        if private {
            restrict(&file)?;
        }
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        Ok(())
    })();
    if result.is_err() {
        // Best effort: the temporary file is ours and useless now.
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(unix)]
fn restrict(file: &fs::File) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    Ok(())
}

#[cfg(not(unix))]
fn restrict(_file: &fs::File) -> Result<()> {
    Ok(())
}

/// Lists every file under `dir`, relative to `base` (for tests comparing with a manifest).
#[cfg(test)]
pub fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(base, &path, out)?;
        } else {
            out.push(path.strip_prefix(base)?.to_path_buf());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_nested_files_and_restricts_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = Output::default();
        out.add("a/b.pem", "cert");
        out.add("a/b.key.pem", "key");
        assert_eq!(out.write_all(dir.path()).unwrap(), 2);
        assert_eq!(out.write_all(dir.path()).unwrap(), 0, "unchanged files are not rewritten");
        assert_eq!(fs::read_to_string(dir.path().join("a/b.pem")).unwrap(), "cert");
        let mut found = Vec::new();
        walk(dir.path(), dir.path(), &mut found).unwrap();
        assert_eq!(found.len(), 2, "no temporary files left: {found:?}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join("a/b.key.pem")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn mismatch_with_manifest_is_an_error() {
        let mut out = Output::default();
        out.add("x.pem", "");
        assert!(out.check_matches(&Manifest::describe()).is_err());
    }
}

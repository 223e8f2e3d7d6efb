//! A key manager that keeps each key in its own PKCS#8 PEM file.
//!
//! Layout: `<dir>/<key id>.pem`, mode 0600, in a directory of mode 0700. Files are written
//! atomically (see [`crate::fsutil`]), so a crash leaves the old key or the new one, never
//! a torn file. A key file that group or others could read is refused on load rather than
//! used: a key that may have leaked must be replaced, not trusted.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use super::CaError;
use super::keys::{KeyId, KeyManager, KeyType, SigningKey};
use crate::fsutil;

/// A [`KeyManager`] backed by a private directory of PKCS#8 PEM files.
#[derive(Debug)]
pub struct DiskKeyManager {
    dir: PathBuf,
    /// Keys already loaded, so repeated `get`s do not re-read and re-parse the file.
    cache: Mutex<HashMap<KeyId, Arc<SigningKey>>>,
}

impl DiskKeyManager {
    /// Opens (creating if needed) the key directory `dir` and sets it to mode 0700.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, CaError> {
        let dir = dir.into();
        fsutil::create_private_dir(&dir).map_err(CaError::io(&dir))?;
        Ok(Self { dir, cache: Mutex::new(HashMap::new()) })
    }

    /// The key directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file that holds (or would hold) key `id`.
    pub fn key_path(&self, id: &KeyId) -> PathBuf {
        self.dir.join(format!("{}.pem", id.as_str()))
    }

    fn load(&self, path: &Path) -> Result<Option<SigningKey>, CaError> {
        let meta = match fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(CaError::io(path)(err)),
        };
        if !meta.file_type().is_file() {
            return Err(CaError::KeyMalformed(format!("{} is not a regular file", path.display())));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(CaError::KeyFileTooOpen { path: path.to_path_buf(), mode });
        }
        let text = fs::read_to_string(path).map_err(CaError::io(path))?;
        SigningKey::from_pkcs8_pem(&text).map(Some)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<KeyId, Arc<SigningKey>>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl KeyManager for DiskKeyManager {
    fn generate(&self, id: &KeyId, key_type: KeyType) -> Result<Arc<SigningKey>, CaError> {
        let key = Arc::new(SigningKey::generate(key_type)?);
        let pem_text =
            pem::encode(&pem::Pem::new("PRIVATE KEY", key.pkcs8_der().secret_pkcs8_der()));
        let path = self.key_path(id);
        fsutil::write_private_atomic(&path, pem_text.as_bytes()).map_err(CaError::io(&path))?;
        self.cache().insert(id.clone(), key.clone());
        Ok(key)
    }

    fn get(&self, id: &KeyId) -> Result<Option<Arc<SigningKey>>, CaError> {
        if let Some(key) = self.cache().get(id) {
            return Ok(Some(key.clone()));
        }
        let Some(key) = self.load(&self.key_path(id))? else {
            return Ok(None);
        };
        let key = Arc::new(key);
        self.cache().insert(id.clone(), key.clone());
        Ok(Some(key))
    }

    fn delete(&self, id: &KeyId) -> Result<(), CaError> {
        self.cache().remove(id);
        let path = self.key_path(id);
        match fs::remove_file(&path) {
            Ok(()) => fsutil::sync_dir(&self.dir).map_err(CaError::io(&self.dir)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(CaError::io(&path)(err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn keys_survive_a_new_manager_with_private_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        let id = KeyId::new("x509-ca-1").unwrap();
        let made = {
            let m = DiskKeyManager::open(&dir).unwrap();
            m.generate(&id, KeyType::EcP384).unwrap()
        };
        assert_eq!(mode(&dir), 0o700);
        let file = dir.join("x509-ca-1.pem");
        assert_eq!(mode(&file), 0o600);
        assert!(fs::read_to_string(&file).unwrap().starts_with("-----BEGIN PRIVATE KEY-----"));

        let reopened = DiskKeyManager::open(&dir).unwrap();
        let loaded = reopened.get(&id).unwrap().unwrap();
        assert_eq!(loaded.key_type(), KeyType::EcP384);
        assert_eq!(loaded.public_key_der(), made.public_key_der());
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "temp files left behind");
    }

    #[test]
    fn missing_key_is_none_and_delete_is_idempotent() {
        let tmp = tempfile::tempdir().unwrap();
        let m = DiskKeyManager::open(tmp.path().join("k")).unwrap();
        let id = KeyId::new("gone").unwrap();
        assert!(m.get(&id).unwrap().is_none());
        m.generate(&id, KeyType::Ed25519).unwrap();
        m.delete(&id).unwrap();
        m.delete(&id).unwrap();
        assert!(m.get(&id).unwrap().is_none());
        assert!(!m.key_path(&id).exists());
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("k");
        let id = KeyId::new("leaky").unwrap();
        DiskKeyManager::open(&dir).unwrap().generate(&id, KeyType::EcP256).unwrap();
        let path = dir.join("leaky.pem");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = DiskKeyManager::open(&dir).unwrap().get(&id).unwrap_err();
        assert!(matches!(err, CaError::KeyFileTooOpen { mode: 0o644, .. }), "{err}");
    }

    #[test]
    fn a_corrupt_key_file_is_an_error_not_a_panic() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("k");
        let m = DiskKeyManager::open(&dir).unwrap();
        let id = KeyId::new("bad").unwrap();
        fsutil::write_private_atomic(&m.key_path(&id), b"not a pem").unwrap();
        assert!(matches!(m.get(&id), Err(CaError::KeyMalformed(_))));
    }

    #[test]
    fn debug_does_not_show_cached_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let m = DiskKeyManager::open(tmp.path().join("k")).unwrap();
        let key = m.generate(&KeyId::new("a").unwrap(), KeyType::EcP256).unwrap();
        let pem_text = key.key_pair().serialize_pem();
        let body: String = pem_text.lines().filter(|l| !l.starts_with("-----")).collect();
        for out in [format!("{m:?}"), format!("{m:#?}")] {
            assert!(!out.contains(&body[..40]), "{out}");
            assert!(!out.contains(&hex::encode(key.key_pair().serialized_der())));
        }
    }
}

//! Issued certificates kept in the state dir, so that a restart re-uses them instead of re-issuing.
//!
//! Layout: `STATE_DIR/certificates/NAMESPACE/NAME.json`, one file per Certificate holding the Secret's data
//! (`tls.crt`, `tls.key`, `ca.crt`), written atomically (temporary file, fsync, rename) with mode 0600 in
//! directories of mode 0700. Loading verifies the file: it parses, the key is the certificate's, and the
//! names are the request's; anything else is an error, so the caller re-issues rather than serve it.

use crate::issue::{CertificateRequest, Issued, VerifyError};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why the store could not save or load. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A namespace or name that is not a safe file name.
    #[error("\"{0}\" is not a valid object name for the certificate store")]
    BadName(String),
    /// A file system error.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not what Portico writes (not JSON of the expected shape).
    #[error("{path}: corrupt certificate file: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The certificate or key in the file is unusable (does not parse, or the key is not the certificate's).
    #[error("{path}: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: VerifyError,
    },
    /// The stored certificate was issued for other names than the request's.
    #[error("{path}: stored certificate no longer matches the request: {message}")]
    RequestChanged {
        /// The file.
        path: PathBuf,
        /// What changed.
        message: String,
    },
}

#[derive(Serialize, Deserialize)]
struct StoredFile {
    version: u32,
    #[serde(rename = "tls.crt")]
    tls_crt: String,
    #[serde(rename = "tls.key")]
    tls_key: String,
    #[serde(rename = "ca.crt", default, skip_serializing_if = "Option::is_none")]
    ca_crt: Option<String>,
}

/// Issued certificates persisted under a state directory.
#[derive(Clone, Debug)]
pub struct CertStore {
    dir: PathBuf,
}

impl CertStore {
    /// A store in `STATE_DIR/certificates` (created, mode 0700).
    pub fn new(state_dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = state_dir.as_ref().join("certificates");
        create_private_dir(&dir)?;
        Ok(CertStore { dir })
    }

    /// The file holding `namespace/name`.
    pub fn path(&self, namespace: &str, name: &str) -> Result<PathBuf, StoreError> {
        let ns = if namespace.is_empty() { "_cluster" } else { namespace };
        for part in [ns, name] {
            let ok = !part.is_empty()
                && part.len() <= 253
                && !part.starts_with('.')
                && part.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
            if !ok {
                return Err(StoreError::BadName(part.to_string()));
            }
        }
        Ok(self.dir.join(ns).join(format!("{name}.json")))
    }

    /// Saves an issued certificate for `namespace/name`, replacing the previous one atomically.
    pub fn save(&self, namespace: &str, name: &str, issued: &Issued) -> Result<(), StoreError> {
        let path = self.path(namespace, name)?;
        if let Some(parent) = path.parent() {
            create_private_dir(parent)?;
        }
        let file = StoredFile {
            version: 1,
            tls_crt: issued.chain_pem.clone(),
            tls_key: issued.key_pem.expose().to_string(),
            ca_crt: issued.ca_pem.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&file)
            .map_err(|e| StoreError::Corrupt { path: path.clone(), message: e.to_string() })?;
        write_atomic(&path, &bytes)
    }

    /// Loads `namespace/name`: `Ok(None)` if nothing is stored, `Ok(Some)` if the stored certificate and key
    /// are a valid pair for `request`'s names, and an error otherwise (the caller re-issues and reports it).
    pub fn load(
        &self,
        namespace: &str,
        name: &str,
        request: &CertificateRequest,
    ) -> Result<Option<Issued>, StoreError> {
        let path = self.path(namespace, name)?;
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        let file: StoredFile = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Corrupt { path: path.clone(), message: e.to_string() })?;
        if file.version != 1 {
            return Err(StoreError::Corrupt { path, message: format!("unknown version {}", file.version) });
        }
        let issued = Issued::from_pem(&file.tls_crt, &file.tls_key, file.ca_crt.as_deref(), request.renew_before)
            .map_err(|source| StoreError::Invalid { path: path.clone(), source })?;
        issued.matches(request).map_err(|message| StoreError::RequestChanged { path, message })?;
        Ok(Some(issued))
    }

    /// Forgets `namespace/name` (no error if nothing was stored).
    pub fn remove(&self, namespace: &str, name: &str) -> Result<(), StoreError> {
        let path = self.path(namespace, name)?;
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::Io { path, source: e }),
            _ => Ok(()),
        }
    }
}

fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    let io = |source| StoreError::Io { path: dir.to_path_buf(), source };
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)
}

/// Writes `bytes` to `path` through a 0600 temporary file in the same directory, fsynced, then renamed.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}-{:08x}", std::process::id(), rand::random::<u32>()));
    let result = (|| {
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    result.map_err(|source| {
        let _ = fs::remove_file(&tmp);
        StoreError::Io { path: path.to_path_buf(), source }
    })
}

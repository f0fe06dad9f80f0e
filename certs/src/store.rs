//! The ACME state on disk (`acme.state_dir`): the account and the certificates, written
//! atomically, private material readable by the service user only.
//!
//! ```text
//!   state_dir/                      0700
//!     account.json                  0600  ACME account credentials (includes its key)
//!     certificates/<set>/           0700  one directory per domain set
//!       fullchain.pem               0600
//!       privkey.pem                 0600
//! ```

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why the store could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("ACME state {path}: {source}")]
pub struct StoreError {
    path: PathBuf,
    source: std::io::Error,
}

fn at(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError {
        path: path.to_path_buf(),
        source,
    }
}

/// The ACME state directory.
#[derive(Debug, Clone)]
pub struct CertStore {
    dir: PathBuf,
}

/// A certificate chain and its key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCertificate {
    /// PEM chain, leaf first.
    pub chain_pem: String,
    /// PEM private key.
    pub key_pem: String,
}

impl CertStore {
    /// Open (creating it if need be) the state directory.
    pub fn open(dir: &Path) -> Result<CertStore, StoreError> {
        private_dir(dir)?;
        Ok(CertStore {
            dir: dir.to_path_buf(),
        })
    }

    fn account_path(&self) -> PathBuf {
        self.dir.join("account.json")
    }

    /// The stored account credentials (JSON), if any.
    pub fn account(&self) -> Result<Option<String>, StoreError> {
        read_if_exists(&self.account_path())
    }

    /// Store the account credentials.
    pub fn save_account(&self, json: &str) -> Result<(), StoreError> {
        write_private(&self.account_path(), json.as_bytes())
    }

    /// Forget the account (the CA no longer knows it).
    pub fn forget_account(&self) -> Result<(), StoreError> {
        let path = self.account_path();
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(at(&path)(e)),
            _ => Ok(()),
        }
    }

    /// The directory of the certificate for `domains` (order does not matter).
    pub fn certificate_dir(&self, domains: &[String]) -> PathBuf {
        let mut sorted: Vec<String> = domains.iter().map(|d| d.to_ascii_lowercase()).collect();
        sorted.sort();
        sorted.dedup();
        let first: String = sorted
            .first()
            .map_or("none", String::as_str)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        // FNV-1a: a stable name for the set, not a security measure.
        let hash = sorted
            .join(",")
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
            });
        self.dir
            .join("certificates")
            .join(format!("{first}-{}-{hash:016x}", sorted.len()))
    }

    /// The stored certificate for `domains`, if any.
    pub fn certificate(&self, domains: &[String]) -> Result<Option<StoredCertificate>, StoreError> {
        let dir = self.certificate_dir(domains);
        let chain = read_if_exists(&dir.join("fullchain.pem"))?;
        let key = read_if_exists(&dir.join("privkey.pem"))?;
        Ok(match (chain, key) {
            (Some(chain_pem), Some(key_pem)) => Some(StoredCertificate { chain_pem, key_pem }),
            _ => None,
        })
    }

    /// Store the certificate for `domains`: the key first, so that a chain on disk always has
    /// its key beside it.
    pub fn save_certificate(
        &self,
        domains: &[String],
        cert: &StoredCertificate,
    ) -> Result<(), StoreError> {
        let dir = self.certificate_dir(domains);
        private_dir(&dir)?;
        write_private(&dir.join("privkey.pem"), cert.key_pem.as_bytes())?;
        write_private(&dir.join("fullchain.pem"), cert.chain_pem.as_bytes())
    }
}

fn private_dir(dir: &Path) -> Result<(), StoreError> {
    fs::create_dir_all(dir).map_err(at(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(at(dir))
}

fn read_if_exists(path: &Path) -> Result<Option<String>, StoreError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(at(path)(e)),
    }
}

/// Write `bytes` to `path` atomically with mode 0600: a new file beside it, synced, renamed
/// over the old one, and the directory synced.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(at(&tmp))?;
    file.write_all(bytes).map_err(at(&tmp))?;
    file.sync_all().map_err(at(&tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(at(path))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(at(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("nakama-edge-store-{tag}-{}", std::process::id()))
    }

    #[test]
    fn round_trips_with_private_permissions() {
        let dir = tempdir("perm");
        let _ = fs::remove_dir_all(&dir);
        let store = CertStore::open(&dir).unwrap();
        assert_eq!(store.account().unwrap(), None);
        store.save_account("{\"id\":1}").unwrap();
        assert_eq!(store.account().unwrap().as_deref(), Some("{\"id\":1}"));
        let domains = vec!["b.example".to_string(), "A.example".to_string()];
        let cert = StoredCertificate {
            chain_pem: "chain".into(),
            key_pem: "key".into(),
        };
        store.save_certificate(&domains, &cert).unwrap();
        let reordered = vec!["a.example".to_string(), "b.example".to_string()];
        assert_eq!(store.certificate(&reordered).unwrap(), Some(cert));
        assert_eq!(
            store.certificate(&["other.example".to_string()]).unwrap(),
            None
        );

        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("account.json")), 0o600);
        let cdir = store.certificate_dir(&domains);
        assert_eq!(mode(&cdir.join("privkey.pem")), 0o600);
        assert_eq!(mode(&cdir.join("fullchain.pem")), 0o600);
        let leftovers: Vec<_> = fs::read_dir(&cdir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers.len(), 2, "no temporary files left: {leftovers:?}");

        store.forget_account().unwrap();
        assert_eq!(store.account().unwrap(), None);
        store.forget_account().unwrap();
        fs::remove_dir_all(dir).unwrap();
    }
}

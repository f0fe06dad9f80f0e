//! Turning key material into a rustls [`CertifiedKey`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

/// Why a certificate could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The reason.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the kind wanted.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is missing or wrong.
        what: String,
    },
    /// The private key is of a type rustls cannot sign with, or does not match.
    #[error("{path}: {source}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// The reason.
        source: rustls::Error,
    },
    /// Generating a certificate failed.
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(rustls::Error),
}

/// Load a certificate chain (leaf first) and its private key from PEM files, and check that
/// the key belongs to the leaf.
pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, CertError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| CertError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;

    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| CertError::Pem {
            path: cert.to_path_buf(),
            what: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(CertError::Pem {
            path: cert.to_path_buf(),
            what: "no CERTIFICATE in the file".into(),
        });
    }
    let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| CertError::Pem {
            path: key.to_path_buf(),
            what: e.to_string(),
        })?
        .ok_or_else(|| CertError::Pem {
            path: key.to_path_buf(),
            what: "no PRIVATE KEY in the file".into(),
        })?;
    certified(chain, key_der, key)
}

/// A self-signed ECDSA P-256 certificate for `names` (DNS names or IP addresses), for the
/// development default and as a placeholder before a real certificate is in hand.
pub fn self_signed(names: &[&str]) -> Result<Arc<CertifiedKey>, CertError> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let generated = rcgen::generate_simple_self_signed(names)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(generated.key_pair.serialize_der()));
    certified(
        vec![generated.cert.der().clone()],
        key,
        Path::new("<generated>"),
    )
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    key_path: &Path,
) -> Result<Arc<CertifiedKey>, CertError> {
    let key_error = |source| CertError::Key {
        path: key_path.to_path_buf(),
        source,
    };
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key).map_err(key_error)?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(key_error)?;
    Ok(Arc::new(certified))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("nakama-edge-certs-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn loads_a_pem_pair_and_rejects_a_mismatched_key() {
        let dir = tempdir("pair");
        let a = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b.test".to_string()]).unwrap();
        let cert = write(&dir, "a.pem", &a.cert.pem());
        let key = write(&dir, "a.key", &a.key_pair.serialize_pem());
        let wrong = write(&dir, "b.key", &b.key_pair.serialize_pem());

        let ck = from_pem_files(&cert, &key).unwrap();
        assert_eq!(ck.cert.len(), 1);
        assert!(matches!(
            from_pem_files(&cert, &wrong),
            Err(CertError::Key { .. })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn names_the_file_that_is_wrong() {
        let dir = tempdir("bad");
        let empty = write(&dir, "empty.pem", "not pem\n");
        let a = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
        let key = write(&dir, "a.key", &a.key_pair.serialize_pem());
        let err = from_pem_files(&empty, &key).unwrap_err().to_string();
        assert!(
            err.contains("empty.pem") && err.contains("no CERTIFICATE"),
            "{err}"
        );
        let err = from_pem_files(&dir.join("missing.pem"), &key)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.pem"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}

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
    /// Material received from elsewhere (another edge) is not what it should be.
    #[error("{0}")]
    Invalid(String),
    /// A certificate could not be parsed.
    #[error("cannot parse certificate: {0}")]
    Parse(String),
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
    let (cert_pem, key_pem) = (read(cert)?, read(key)?);
    let chain = pem_chain(&cert_pem, cert)?;
    let key_der = pem_key(&key_pem, key)?;
    certified(chain, key_der, key)
}

/// The same from PEM text in memory; `origin` names it in errors.
pub fn from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    origin: &str,
) -> Result<Arc<CertifiedKey>, CertError> {
    let origin = Path::new(origin);
    certified(
        pem_chain(cert_pem, origin)?,
        pem_key(key_pem, origin)?,
        origin,
    )
}

fn pem_chain(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| CertError::Pem {
            path: path.to_path_buf(),
            what: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(CertError::Pem {
            path: path.to_path_buf(),
            what: "no CERTIFICATE in the file".into(),
        });
    }
    Ok(chain)
}

fn pem_key(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|e| CertError::Pem {
            path: path.to_path_buf(),
            what: e.to_string(),
        })?
        .ok_or_else(|| CertError::Pem {
            path: path.to_path_buf(),
            what: "no PRIVATE KEY in the file".into(),
        })
}

/// A certificate and PKCS#8 key generated here.
pub(crate) fn certified_from_der(
    cert: CertificateDer<'static>,
    pkcs8: Vec<u8>,
) -> Result<Arc<CertifiedKey>, CertError> {
    certified(
        vec![cert],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8)),
        Path::new("<generated>"),
    )
}

/// A self-signed ECDSA P-256 certificate for `names` (DNS names or IP addresses), for the
/// development default and as a placeholder before a real certificate is in hand.
pub fn self_signed(names: &[&str]) -> Result<Arc<CertifiedKey>, CertError> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let generated = rcgen::generate_simple_self_signed(names)?;
    certified_from_der(
        generated.cert.der().clone(),
        generated.signing_key.serialize_der(),
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

/// A TLS-ALPN-01 challenge certificate and its key, generated together. Not checked with
/// `keys_match`: webpki refuses the critical acmeIdentifier extension RFC 8737 requires.
pub(crate) fn challenge_certified(
    cert: CertificateDer<'static>,
    pkcs8: Vec<u8>,
) -> Result<Arc<CertifiedKey>, CertError> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8));
    let signing_key =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|source| CertError::Key {
            path: "<generated>".into(),
            source,
        })?;
    Ok(Arc::new(CertifiedKey::new(vec![cert], signing_key)))
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
        let key = write(&dir, "a.key", &a.signing_key.serialize_pem());
        let wrong = write(&dir, "b.key", &b.signing_key.serialize_pem());

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
        let key = write(&dir, "a.key", &a.signing_key.serialize_pem());
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

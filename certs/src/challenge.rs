//! Answers to the ACME challenges in progress, read by the listeners.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rustls::sign::CertifiedKey;

use crate::load::CertError;

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Pending challenge responses: HTTP-01 key authorizations by token, TLS-ALPN-01
/// certificates by domain.
#[derive(Debug, Default)]
pub struct Challenges {
    http01: RwLock<HashMap<String, String>>,
    tls_alpn01: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl Challenges {
    /// The key authorization to answer `GET /.well-known/acme-challenge/{token}` with.
    pub fn http01(&self, token: &str) -> Option<String> {
        self.http01
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned()
    }

    /// The certificate to answer an `acme-tls/1` handshake for `domain` with.
    pub fn tls_alpn01(&self, domain: &str) -> Option<Arc<CertifiedKey>> {
        self.tls_alpn01
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&domain.to_ascii_lowercase())
            .cloned()
    }

    pub(crate) fn set_http01(&self, token: &str, key_authorization: &str) {
        self.http01
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.to_string(), key_authorization.to_string());
    }

    /// Make and publish the RFC 8737 certificate for `domain`: the domain as its only SAN and
    /// the SHA-256 of the key authorization in the critical acmeIdentifier extension.
    pub(crate) fn set_tls_alpn01(
        &self,
        domain: &str,
        key_authorization_sha256: &[u8],
    ) -> Result<(), CertError> {
        let mut params = rcgen::CertificateParams::new(vec![domain.to_string()])?;
        params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(
            key_authorization_sha256,
        )];
        let key = rcgen::KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let certified = crate::load::challenge_certified(cert.der().clone(), key.serialize_der())?;
        self.tls_alpn01
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(domain.to_ascii_lowercase(), certified);
        Ok(())
    }

    /// Forget every pending answer (the order is over, one way or the other).
    pub(crate) fn clear(&self) {
        self.http01
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.tls_alpn01
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

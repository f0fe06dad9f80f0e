//! The certificate a handshake is answered with, replaceable at any moment.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::challenge::{Challenges, ACME_TLS_ALPN};

/// Serves one certificate to every handshake; [`CertResolver::replace`] swaps it atomically.
///
/// A handshake in progress keeps the certificate it picked; established connections are
/// untouched; the next handshake gets the new one. A handshake that offers only ALPN
/// `acme-tls/1` is a TLS-ALPN-01 validation and gets the pending challenge certificate for
/// its server name, or nothing.
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
    challenges: Challenges,
}

impl CertResolver {
    /// A resolver serving `initial`.
    pub fn new(initial: Arc<CertifiedKey>) -> Self {
        CertResolver {
            current: ArcSwap::new(initial),
            challenges: Challenges::default(),
        }
    }

    /// Serve `next` from the next handshake on.
    pub fn replace(&self, next: Arc<CertifiedKey>) {
        self.current.store(next);
    }

    /// The certificate being served now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// The ACME challenge answers this resolver (and the http listener) serve.
    pub fn challenges(&self) -> &Challenges {
        &self.challenges
    }
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertResolver").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if is_acme_validation(&hello) {
            return self.challenges.tls_alpn01(hello.server_name()?);
        }
        Some(self.current.load_full())
    }
}

fn is_acme_validation(hello: &ClientHello<'_>) -> bool {
    hello
        .alpn()
        .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN))
}

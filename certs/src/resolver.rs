//! The certificate a handshake is answered with, replaceable at any moment.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Serves one certificate to every handshake; [`CertResolver::replace`] swaps it atomically.
///
/// A handshake in progress keeps the certificate it picked; established connections are
/// untouched; the next handshake gets the new one.
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl CertResolver {
    /// A resolver serving `initial`.
    pub fn new(initial: Arc<CertifiedKey>) -> Self {
        CertResolver {
            current: ArcSwap::new(initial),
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
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertResolver").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

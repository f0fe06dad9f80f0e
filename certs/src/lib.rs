//! Certificates for the edge's TLS listener, swapped live.
//!
//! ```text
//!   PEM files ([tls]) ──► load::from_pem_files ─┐
//!   rcgen (dev default) ─► load::self_signed ───┼─► CertResolver (ArcSwap) ◄── rustls handshakes
//!   ACME (later) ───────────────────────────────┘          │
//!                                                           ▼
//!                                               server_config(): the listener's rustls config
//! ```
//!
//! * [`CertResolver`] is the one place a handshake gets its certificate from; replacing its
//!   contents affects the next handshake and no established connection.
//! * [`server_config`] builds the listener's rustls config: TLS 1.2 and 1.3 only, ALPN h2,
//!   http/1.1 and acme-tls/1, the ring provider.
//! * [`acme`] obtains certificates, [`store`] keeps them and the account on disk,
//!   [`renewal`] decides when to renew and retry, [`info`] reads a certificate's facts,
//!   [`challenge`] holds the answers the listeners give the CA.

pub mod acme;
pub mod challenge;
pub mod info;
mod load;
pub mod renewal;
mod resolver;
pub mod store;

use std::sync::Arc;

pub use challenge::{ChallengeAnswer, ACME_TLS_ALPN};
pub use load::{from_pem, from_pem_files, self_signed, CertError};
pub use resolver::CertResolver;
pub use rustls::sign::CertifiedKey;

/// ALPN protocols the https listener offers, in server preference: a normal client gets h2
/// or http/1.1; only a TLS-ALPN-01 validator, which offers nothing else, gets acme-tls/1.
pub const ALPN: [&[u8]; 3] = [b"h2", b"http/1.1", ACME_TLS_ALPN];

/// The process-wide crypto provider. pingora's rustls support uses ring; installing it
/// explicitly keeps any other crate's choice from making rustls panic at first use.
pub fn install_crypto_provider() {
    // Err only means one is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The rustls server config of the https listener, serving whatever `resolver` holds.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<rustls::ServerConfig, CertError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(CertError::Rustls)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

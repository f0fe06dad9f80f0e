//! The one accept path of the player listeners: firewall, then TLS with the edge's own rustls
//! config, then pingora's HTTP proxy.
//!
//! ```text
//!   TCP accept (pingora listener, plain TCP)
//!     └─► Entry::process_new
//!           ├─ firewall: deny/allow on the peer address ── refused: closed, counted
//!           ├─ TLS (https only): own Acceptor, handshake timeout ── failed: closed, counted
//!           │     └─ ALPN acme-tls/1: a TLS-ALPN-01 validation, closed after the handshake
//!           └─► HttpProxy<Edge>: HTTP/1.1 or h2 (ALPN), the request path
//! ```
//!
//! The https listener is a plain TCP listener on purpose: pingora's stock TLS listener cannot
//! offer ALPN `acme-tls/1` beside h2 and http/1.1, and owning the path is also where a PROXY
//! protocol header and the handshake timeout belong.

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::listeners::tls::Acceptor;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{Ssl, Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;

use crate::firewall::canonical;
use crate::metrics::RejectReason;
use crate::proxy::Edge;
use crate::state::Shared;

/// A player listener's connection handler.
pub struct Entry {
    shared: Arc<Shared>,
    tls: Option<Acceptor>,
    http: Arc<HttpProxy<Edge>>,
}

impl Entry {
    /// A handler that terminates TLS with `tls` (or speaks plain HTTP without it) and hands
    /// the connection to `http`.
    pub fn new(shared: Arc<Shared>, tls: Option<Acceptor>, http: HttpProxy<Edge>) -> Self {
        Entry {
            shared,
            tls,
            http: Arc::new(http),
        }
    }
}

#[async_trait]
impl ServerApp for Entry {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let snapshot = self.shared.snapshot();
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        if let Some(ip) = peer {
            if !snapshot.firewall.allows(canonical(ip)) {
                self.shared.metrics.rejected(RejectReason::Firewall);
                return None;
            }
        }
        let handshake_timeout = snapshot.config.timeouts.tls_handshake;
        drop(snapshot);

        let stream: Stream = match &self.tls {
            None => stream,
            Some(acceptor) => {
                // The listener is plain TCP, so every stream it hands over is an L4 stream.
                let l4 = stream.into_any().downcast::<L4Stream>().ok()?;
                match tokio::time::timeout(handshake_timeout, acceptor.tls_handshake(*l4)).await {
                    Ok(Ok(tls)) => {
                        self.shared.metrics.tls_handshake(true);
                        // acme-tls/1 is the only protocol offered besides HTTP: a TLS-ALPN-01
                        // validation, over once the handshake has shown the certificate.
                        if matches!(tls.selected_alpn_proto(), Some(ALPN::Custom(_))) {
                            tracing::info!(peer = ?peer, "TLS-ALPN-01 validation handshake answered");
                            return None;
                        }
                        Box::new(tls)
                    }
                    Ok(Err(e)) => {
                        self.shared.metrics.tls_handshake(false);
                        tracing::debug!(peer = ?peer, error = %e, "TLS handshake failed");
                        return None;
                    }
                    Err(_) => {
                        self.shared.metrics.tls_handshake(false);
                        tracing::debug!(peer = ?peer, "TLS handshake timed out");
                        return None;
                    }
                }
            }
        };
        self.http.process_new(stream, shutdown).await
    }
}

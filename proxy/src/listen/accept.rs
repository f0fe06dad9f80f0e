//! The one accept path of the player (and console) listeners: firewall, PROXY protocol,
//! connection limits, TLS with the edge's own rustls config, then the HTTP layer.
//!
//! ```text
//!   TCP accept (pingora listener, plain TCP)
//!     ├─ PeerFilter (before a task is spawned): firewall on the peer address;
//!     │    a trusted load balancer passes, to be judged by its client's address
//!     └─► Entry::process_new
//!           ├─ PROXY header (trusted peers only): the client address; then the firewall on it
//!           ├─ limits: new connections per second, concurrent connections per client
//!           ├─ TLS: player_tls (rustls), handshake timeout ── failed: closed, counted
//!           │     └─ ALPN acme-tls/1: a TLS-ALPN-01 validation, closed after the handshake
//!           ├─ ClientConn: head, idle and WebSocket deadlines, the connection slot
//!           └─► http::serve: HTTP/1.1 or HTTP/2 (ALPN), framed by hyper
//! ```
//!
//! The https listener is a plain TCP listener on purpose: pingora's stock TLS listener cannot
//! offer ALPN `acme-tls/1` beside h2 and http/1.1, and owning the path is also where a PROXY
//! protocol header and the handshake timeout belong.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::listeners::ConnectionFilter;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use tokio::net::TcpStream;

use crate::http::route::Listener;
use crate::limits::{client_key, Limited};
use crate::listen::client_conn::{ClientConn, Deadlines, Transport};
use crate::listen::closing::Closing;
use crate::listen::firewall::{canonical, Firewall};
use crate::listen::player_tls;
use crate::listen::proxy_protocol::{read_header, Claim};
use crate::ops::metrics::{RejectReason, TlsFailure};
use crate::state::Shared;

fn admits(firewall: &Firewall, listener: Listener, ip: IpAddr) -> Result<(), RejectReason> {
    match listener {
        Listener::Console if firewall.allows_console(ip) => Ok(()),
        Listener::Console => Err(RejectReason::Console),
        _ if firewall.allows(ip) => Ok(()),
        _ => Err(RejectReason::Firewall),
    }
}

/// The firewall, run by pingora right after `accept()`, before a task or a buffer exists.
pub struct PeerFilter {
    shared: Arc<Shared>,
    listener: Listener,
}

impl PeerFilter {
    /// The filter of `listener`.
    pub fn new(shared: Arc<Shared>, listener: Listener) -> Self {
        PeerFilter { shared, listener }
    }
}

impl std::fmt::Debug for PeerFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerFilter")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl ConnectionFilter for PeerFilter {
    async fn should_accept(&self, addr: Option<&SocketAddr>) -> bool {
        let Some(addr) = addr else { return true };
        let snapshot = self.shared.snapshot();
        let ip = canonical(addr.ip());
        if snapshot.firewall.is_trusted_proxy(ip) {
            return true;
        }
        match admits(&snapshot.firewall, self.listener, ip) {
            Ok(()) => true,
            Err(reason) => {
                self.shared.metrics.rejected(reason);
                false
            }
        }
    }
}

/// A listener's connection handler.
pub struct Entry {
    shared: Arc<Shared>,
    listener: Listener,
    tls: Option<Arc<rustls::ServerConfig>>,
    http: crate::http::Server,
    /// Raised when idle and partial connections are to close.
    closing: Closing,
}

impl Entry {
    /// A handler for `listener` that terminates TLS with `tls` (or speaks plain HTTP without
    /// it) and serves HTTP on the connection.
    pub fn new(
        shared: Arc<Shared>,
        listener: Listener,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Self {
        Entry {
            shared,
            listener,
            tls,
            http: crate::http::Server::default(),
            closing: Closing::default(),
        }
    }

    fn reject(&self, reason: RejectReason) -> Option<Stream> {
        self.shared.metrics.rejected(reason);
        None
    }
}

/// The accepted socket, out of pingora's stream: pingora's listener (which hands sockets
/// over in an upgrade) accepted it, and from here the edge reads and writes it directly,
/// without the buffers and timing digests of pingora's stream around every read.
fn into_socket(l4: L4Stream) -> std::io::Result<TcpStream> {
    // SAFETY: dup(2) on a descriptor this stream owns and keeps open until it is dropped
    // below; the new descriptor is owned by the std stream made from it, and by nothing else.
    let fd = unsafe { libc::dup(l4.as_raw_fd()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor of a connected TCP socket, owned by no one else.
    let socket = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    // Pingora's stream leaves the reactor and closes its own descriptor; the socket stays.
    drop(l4);
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    TcpStream::from_std(socket)
}

/// Whether a handshake failed because the peer closed the connection (a TCP probe, a client
/// that gave up), rather than because TLS went wrong.
fn went_away(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe
    )
}

#[async_trait]
impl ServerApp for Entry {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        _shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        crate::ops::allocator::tend_this_thread();
        // The listeners are plain TCP, so every stream they hand over is an L4 stream.
        let l4 = *stream.into_any().downcast::<L4Stream>().ok()?;
        let mut socket = match into_socket(l4) {
            Ok(socket) => socket,
            Err(e) => {
                tracing::debug!(error = %e, "an accepted connection could not be taken over");
                return None;
            }
        };
        let peer = socket.peer_addr().ok()?;
        let snapshot = self.shared.snapshot();
        let timeouts = snapshot.config.timeouts.clone();
        // Counted from here, through the PROXY header and the TLS handshake, so that a
        // shutting-down process (`server::ExitWhenIdle`) does not leave with one half-open.
        let open = self.shared.metrics.connection_opened(self.listener.name());
        let mut client = canonical(peer.ip());

        if snapshot.firewall.is_trusted_proxy(client) {
            match read_header(&mut socket, timeouts.tls_handshake).await {
                Ok(Claim::Client(addr)) => {
                    client = canonical(addr.ip());
                    if let Err(reason) = admits(&snapshot.firewall, self.listener, client) {
                        return self.reject(reason);
                    }
                }
                Ok(Claim::Local) => {}
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "refused a connection from a trusted proxy");
                    return None;
                }
            }
        }

        let slot = match snapshot.limits.admit_connection(client_key(client)) {
            Ok(slot) => slot,
            Err(Limited::Rate(_)) => return self.reject(RejectReason::RateLimit),
            Err(Limited::Connections) => return self.reject(RejectReason::ConnectionLimit),
        };
        drop(snapshot);

        let transport = match &self.tls {
            None => Transport::Tcp(socket),
            Some(config) => {
                match tokio::time::timeout(
                    timeouts.tls_handshake,
                    player_tls::accept(config, socket),
                )
                .await
                {
                    Ok(Ok(tls)) => {
                        self.shared.metrics.tls_handshake(true);
                        // acme-tls/1 is the only protocol offered besides HTTP: a TLS-ALPN-01
                        // validation, over once the handshake has shown the certificate.
                        if tls.alpn() == Some(nakama_edge_certs::ACME_TLS_ALPN) {
                            tracing::info!(%peer, "TLS-ALPN-01 validation handshake answered");
                            return None;
                        }
                        Transport::Tls(tls)
                    }
                    Ok(Err(e)) if went_away(&e) => {
                        // A TCP probe or a client that gave up: no TLS failure to count.
                        tracing::debug!(%peer, "closed before completing the TLS handshake");
                        return None;
                    }
                    Ok(Err(e)) => {
                        let text = e.to_string();
                        self.shared.metrics.tls_failure(TlsFailure::of(&text));
                        tracing::debug!(%peer, error = %text, "TLS handshake failed");
                        return None;
                    }
                    Err(_) => {
                        self.shared.metrics.tls_failure(TlsFailure::Timeout);
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return None;
                    }
                }
            }
        };
        let h2 = transport.is_h2();
        let conn = ClientConn::new(
            transport,
            h2,
            Deadlines::of(&timeouts),
            Some(slot),
            Some(open),
        );
        crate::http::serve(
            &self.http,
            self.shared.clone(),
            self.listener,
            client,
            conn,
            self.closing.watch(),
        )
        .await;
        None
    }

    /// The listener has stopped accepting (shutdown, or an upgrade's hand-over). Connections in
    /// use finish their request with `Connection: close`; keep-alive connections that sit idle
    /// or hold part of a head are closed halfway through the grace period (with the
    /// WebSockets' close frames), and HTTP/2 connections get GOAWAY then; not at once: a
    /// client may be sending its next request on one right now, and is answered.
    async fn cleanup(&self) {
        let grace = self.shared.snapshot().config.server.grace_period;
        let closing = self.closing.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace / 2).await;
            closing.raise();
        });
    }
}

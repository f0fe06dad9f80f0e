//! A player's TLS connection: tokio-rustls's stream directly over the accepted socket, with
//! what pingora's HTTP layer asks of a stream (the TLS digest, the negotiated ALPN).
//!
//! ```text
//!   accept::Entry ── accept(acceptor, socket) ──► PlayerTls { rustls stream, digest }
//!                                                   └─► ClientConn ─► h1_api / pingora
//! ```
//!
//! Why not pingora's own `TlsStream`: it keeps its client and server handshake futures
//! inline beside the established connection for the connection's whole life, 4.6 KiB per
//! connection in one allocation, where this stream is the connection alone (BENCHMARKS.md:
//! memory per idle WebSocket).

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{CustomALPN, SslDigest, TlsRef};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// An established TLS connection from a player.
pub struct PlayerTls {
    tls: TlsStream<L4Stream>,
    digest: Arc<SslDigest>,
}

/// Complete the TLS handshake on `socket`. Errors are tokio-rustls's: the peer's EOF reads
/// "tls handshake eof", a TLS failure is rustls's error text.
pub async fn accept(acceptor: &TlsAcceptor, socket: L4Stream) -> io::Result<PlayerTls> {
    let tls = acceptor.accept(socket).await?;
    let (_, conn) = tls.get_ref();
    let cipher = conn
        .negotiated_cipher_suite()
        .and_then(|suite| suite.suite().as_str())
        .unwrap_or_default();
    let version = conn
        .protocol_version()
        .and_then(|version| version.as_str())
        .unwrap_or_default();
    // Players present no certificate: no organization, serial or certificate digest.
    let digest = Arc::new(SslDigest::new(cipher, version, None, None, Vec::new()));
    Ok(PlayerTls { tls, digest })
}

impl AsyncRead for PlayerTls {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for PlayerTls {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for PlayerTls {
    async fn shutdown(&mut self) {
        // TLS close_notify, then the socket's write side: as pingora's stream does.
        let _ = AsyncWriteExt::shutdown(&mut self.tls).await;
    }
}

impl UniqueID for PlayerTls {
    fn id(&self) -> UniqueIDType {
        self.tls.get_ref().0.id()
    }
}

impl Ssl for PlayerTls {
    fn get_ssl(&self) -> Option<&TlsRef> {
        None
    }
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        Some(self.digest.clone())
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        match self.tls.get_ref().1.alpn_protocol()? {
            b"http/1.1" => Some(ALPN::H1),
            b"h2" => Some(ALPN::H2),
            other => Some(ALPN::Custom(CustomALPN::new(other.to_vec()))),
        }
    }
}

impl GetTimingDigest for PlayerTls {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.tls.get_ref().0.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.tls.get_ref().0.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.tls.get_ref().0.get_write_pending_time()
    }
}

impl GetProxyDigest for PlayerTls {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.tls.get_ref().0.get_proxy_digest()
    }
}

impl GetSocketDigest for PlayerTls {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.tls.get_ref().0.get_socket_digest()
    }
}

impl Peek for PlayerTls {}

impl fmt::Debug for PlayerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlayerTls")
            .field("version", &self.digest.version)
            .finish_non_exhaustive()
    }
}

//! What a player's bytes travel over: plain TCP or rustls, one type hyper reads and writes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::listen::player_tls::PlayerTls;

/// What a player's bytes travel over.
///
/// TLS inline, unboxed: it is what players use, and a box would cost each of their reads and
/// writes an indirection to save memory on plain connections only.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Transport {
    /// Plain TCP (the http listener, or a TLS-ending load balancer in front).
    Tcp(TcpStream),
    /// TLS ended here.
    Tls(PlayerTls),
    /// Handed to a lingering close: nothing more to read or write here.
    Closed,
}

impl Transport {
    /// The TLS version's name, or `"none"`.
    pub fn tls_version(&self) -> &'static str {
        match self {
            Transport::Tls(tls) => tls.version(),
            _ => "none",
        }
    }

    /// Whether the client chose HTTP/2 (ALPN `h2`).
    pub fn is_h2(&self) -> bool {
        matches!(self, Transport::Tls(tls) if tls.alpn() == Some(b"h2"))
    }
}

macro_rules! each {
    ($self:expr, $s:ident => $e:expr, $closed:expr) => {
        match $self.get_mut() {
            Transport::Tcp($s) => {
                let $s = Pin::new($s);
                $e
            }
            Transport::Tls($s) => {
                let $s = Pin::new($s);
                $e
            }
            Transport::Closed => $closed,
        }
    };
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_read(cx, buf), Poll::Ready(Ok(())))
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => s.poll_write(cx, buf), Poll::Ready(Err(io::ErrorKind::NotConnected.into())))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => s.poll_write_vectored(cx, bufs), Poll::Ready(Err(io::ErrorKind::NotConnected.into())))
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Tcp(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
            Transport::Closed => false,
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_flush(cx), Poll::Ready(Ok(())))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_shutdown(cx), Poll::Ready(Ok(())))
    }
}

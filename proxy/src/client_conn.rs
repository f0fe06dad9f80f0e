//! A player's connection as the edge holds it: the stream pingora reads and writes, wrapped
//! with the deadlines pingora does not enforce, and the per-IP connection slot it occupies.
//!
//! ```text
//!   phase            deadline on reads                         set by
//!   AwaitingHeader   request_header after the request began    accept; end of each request
//!   Proxying         none (pingora's own read timeout)         early_request_filter
//!   WebSocket        websocket_idle after the last client byte the node's 101 (proxy.rs)
//! ```
//!
//! Pingora times out each *read*; a slowloris that sends one byte a second never trips that.
//! Here the whole request head has a deadline, and an upgraded WebSocket an idle deadline of
//! its own, separate from HTTP's keep-alive. HTTP/2 connections start in `Proxying`: their
//! idle limit is pingora's `h2_idle_timeout`.
//!
//! An HTTP/1.x request head is also measured here as it arrives ([`HeadScan`]): a request line
//! over [`MAX_HEAD_BYTES`] is answered 414, a head over it 431, by this connection itself,
//! before pingora has buffered or parsed any of it (pingora would answer its own parse limits
//! with 400). The rest of what the client sends is read and dropped for a moment
//! ([`LINGER`]), so that it reads the answer instead of a reset.
//!
//! The same goes for a request refused before its body was read (413 for a body over 256 KiB,
//! 408 for one too slow, 400 for one of unknown length): the request path marks the
//! connection with [`ClientConn::linger_on_close`], and when it is dropped its stream is
//! handed to a task that closes its side, then reads and drops what the client still sends
//! ([`LINGER`], [`LINGER_BYTES`]). Closing a socket with unread bytes sends a reset, and a
//! client still writing its body then reports the reset, not the answer it was sent.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, TlsRef};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::limits::ConnectionSlot;
use crate::metrics::OpenConnection;
use crate::state::Shared;
use crate::ws_close::{close_frame, Closer, Frames};

/// What the connection is doing, as far as its deadlines are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Waiting for (the rest of) a request head.
    AwaitingHeader = 0,
    /// A request is being proxied.
    Proxying = 1,
    /// An upgraded WebSocket.
    WebSocket = 2,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::AwaitingHeader,
            2 => Phase::WebSocket,
            _ => Phase::Proxying,
        }
    }
}

/// Nakama refuses request heads over 5 KiB; the edge refuses them first: 431 for a head, 414
/// for a request line (method, target, version) that alone is over it.
pub const MAX_HEAD_BYTES: usize = 5 * 1024;

/// At most this many header lines (pingora parses 256 and would answer more with 400; Nakama's
/// own clients send about ten).
pub const MAX_HEADER_LINES: u32 = 200;

/// After refusing a head, how long the rest of the client's bytes are read and dropped before
/// the connection closes.
pub const LINGER: Duration = Duration::from_secs(2);

/// At most this much of a refused request's body is read and dropped before its connection
/// closes anyway (a client that sends more is reset).
pub const LINGER_BYTES: usize = 16 << 20;

/// Where an HTTP/1.x request head is, byte by byte, and whether it is still within limits.
/// Lines end in LF, with or without CR (RFC 9112 §2.2); empty lines before the request line
/// are skipped; the first empty line after it ends the head.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HeadScan {
    /// Bytes of the head so far.
    len: usize,
    /// Lines finished so far (the request line is the first).
    lines: u32,
    /// Bytes in the current line, CRs aside.
    line_len: usize,
    /// The whole head is in: what follows is a body.
    complete: bool,
}

impl HeadScan {
    /// Account for `bytes` read from the client. `Err(status)`: the head is over the limits.
    pub fn advance(&mut self, mut bytes: &[u8]) -> Result<(), u16> {
        while !self.complete && !bytes.is_empty() {
            // Up to and including the next line end, or all of it.
            let (segment, ends_line) = match memchr::memchr(b'\n', bytes) {
                Some(i) => (&bytes[..i], true),
                None => (bytes, false),
            };
            let consumed = segment.len() + usize::from(ends_line);
            // CRs do not make a line non-empty (a line may end in CRLF or LF).
            self.line_len += segment.iter().filter(|&&b| b != b'\r').count();
            self.len += consumed;
            bytes = &bytes[consumed..];
            if self.len > MAX_HEAD_BYTES {
                // Still in the request line (an empty line before it is no request line).
                let in_request_line = self.lines == 0 && self.line_len > 0;
                return Err(if in_request_line { 414 } else { 431 });
            }
            if ends_line {
                match (self.line_len, self.lines) {
                    (0, 0) => {} // an empty line before the request line
                    (0, _) => self.complete = true,
                    _ => {
                        self.lines += 1;
                        self.line_len = 0;
                    }
                }
            }
            if self.lines > MAX_HEADER_LINES {
                return Err(431);
            }
        }
        Ok(())
    }
}

/// A refused request head: the answer being written, then the client's bytes dropped.
#[derive(Debug)]
enum Refusal {
    Writing { answer: &'static [u8], done: usize },
    Lingering,
}

fn refusal_answer(status: u16) -> &'static [u8] {
    match status {
        414 => b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        _ => b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    }
}

/// A player's connection. Built by the accept path; reached from the request path with
/// [`ClientConn::of`].
pub struct ClientConn {
    inner: Stream,
    phase: AtomicU8,
    /// The limit of the current phase, in milliseconds (request header or WebSocket idle).
    limit_ms: AtomicU64,
    seen_phase: Phase,
    /// When the current request head began, or the last client byte of a WebSocket.
    since: Option<Instant>,
    timer: Pin<Box<Sleep>>,
    timer_at: Option<Instant>,
    /// Held until the connection closes, lingering included.
    slot: Option<ConnectionSlot>,
    open: Option<OpenConnection>,
    /// Set by [`ClientConn::linger_on_close`].
    linger: AtomicBool,
    /// Server-to-client frame boundaries, once upgraded.
    frames: Frames,
    closer: Arc<Closer>,
    close: Close,
    /// The HTTP/1.x head being read; `None` for HTTP/2.
    head: Option<HeadScan>,
    refusal: Option<Refusal>,
    /// Where refused heads are counted.
    shared: Option<Arc<Shared>>,
    /// Bytes read again before the stream's: a request whose body the edge read first.
    replayed: Option<bytes::Bytes>,
}

/// Progress of a requested close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// None requested, or waiting for a frame boundary.
    Open,
    /// Writing it: `done` bytes of `frame` are out.
    Writing { frame: [u8; 4], done: usize },
    /// Sent: the client side reads as ended and nothing more is written to it.
    Sent,
}

impl ClientConn {
    /// Wrap `inner`, holding `slot` (the client's connection limit) and `open` (the listener's
    /// gauge) until it closes. The first request head must arrive within `request_header`
    /// (HTTP/1.x); an HTTP/2 connection has no head deadline here.
    pub fn new(
        inner: Stream,
        request_header: Duration,
        slot: Option<ConnectionSlot>,
        open: Option<OpenConnection>,
    ) -> ClientConn {
        let h2 = matches!(inner.selected_alpn_proto(), Some(ALPN::H2));
        let (phase, since) = if h2 {
            (Phase::Proxying, None)
        } else {
            (Phase::AwaitingHeader, Some(Instant::now()))
        };
        ClientConn {
            inner,
            phase: AtomicU8::new(phase as u8),
            limit_ms: AtomicU64::new(request_header.as_millis() as u64),
            seen_phase: phase,
            since,
            timer: Box::pin(tokio::time::sleep_until(
                Instant::now() + Duration::from_secs(86400),
            )),
            timer_at: None,
            slot,
            open,
            linger: AtomicBool::new(false),
            frames: Frames::default(),
            closer: Arc::default(),
            close: Close::Open,
            head: (!h2).then(HeadScan::default),
            refusal: None,
            shared: None,
            replayed: None,
        }
    }

    /// Have the next reads return `bytes` before anything more from the client: a request
    /// (head and body) the edge has already read, handed to a new HTTP session.
    pub fn replay(&mut self, bytes: bytes::Bytes) {
        self.replayed = Some(bytes);
    }

    /// Count refused heads (414, 431) in `shared`'s metrics.
    pub fn counted_in(mut self, shared: Arc<Shared>) -> ClientConn {
        self.shared = Some(shared);
        self
    }

    /// The connection under a pingora stream, if the accept path made it.
    pub fn of(stream: &Stream) -> Option<&ClientConn> {
        stream.as_any().downcast_ref::<ClientConn>()
    }

    fn enter(&self, phase: Phase, limit: Duration) {
        self.limit_ms
            .store(limit.as_millis() as u64, Ordering::Relaxed);
        self.phase.store(phase as u8, Ordering::Release);
    }

    /// The request head is in: no head deadline while it is proxied.
    pub fn start_proxying(&self) {
        self.enter(Phase::Proxying, Duration::ZERO);
    }

    /// The request is over; the next head must arrive within `request_header` of its first byte.
    pub fn await_next_request(&self, request_header: Duration) {
        self.enter(Phase::AwaitingHeader, request_header);
    }

    /// Upgraded: closed after `idle` without a byte from the client.
    pub fn enter_websocket(&self, idle: Duration) {
        self.enter(Phase::WebSocket, idle);
    }

    /// The answer going out refuses a request whose body the client may still be sending:
    /// when this connection is dropped, read and drop what the client sends before closing
    /// (module doc).
    pub fn linger_on_close(&self) {
        self.linger.store(true, Ordering::Relaxed);
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// `Err` when the current deadline has passed; otherwise arms the timer for it.
    fn sync_phase(&mut self) -> Phase {
        let phase = self.phase();
        if phase != self.seen_phase {
            self.seen_phase = phase;
            // A new head is timed from its first byte; a new WebSocket from its upgrade.
            self.since = (phase == Phase::WebSocket).then(Instant::now);
            if phase == Phase::AwaitingHeader {
                if let Some(head) = self.head.as_mut() {
                    *head = HeadScan::default();
                }
            }
            if phase == Phase::WebSocket {
                self.frames = Frames::default();
            }
        }
        phase
    }

    /// The handle that asks this connection's WebSocket to close.
    pub fn closer(&self) -> &Arc<Closer> {
        &self.closer
    }

    /// Drive a requested close frame: `Ready(true)` once it is out.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        if self.seen_phase != Phase::WebSocket {
            return Poll::Ready(Ok(false));
        }
        if self.close == Close::Open {
            match self.closer.requested() {
                Some(code) if self.frames.at_boundary() => {
                    self.close = Close::Writing {
                        frame: close_frame(code),
                        done: 0,
                    };
                }
                _ => return Poll::Ready(Ok(false)),
            }
        }
        while let Close::Writing { frame, done } = self.close {
            if done == frame.len() {
                std::task::ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
                self.close = Close::Sent;
                break;
            }
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &frame[done..]))?;
            self.close = Close::Writing {
                frame,
                done: done + n,
            };
        }
        Poll::Ready(Ok(true))
    }

    fn check_deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let phase = self.sync_phase();
        let limit = Duration::from_millis(self.limit_ms.load(Ordering::Relaxed));
        let deadline = match (phase, self.since) {
            (Phase::Proxying, _) | (_, None) => return Ok(()),
            (_, Some(since)) => since + limit,
        };
        if self.timer_at != Some(deadline) {
            self.timer.as_mut().reset(deadline);
            self.timer_at = Some(deadline);
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            let what = match phase {
                Phase::WebSocket => "WebSocket idle timeout",
                _ => "request header timeout",
            };
            return Err(io::Error::new(io::ErrorKind::TimedOut, what));
        }
        Ok(())
    }
}

use std::future::Future as _;

impl ClientConn {
    /// Answer a refused head, then read and drop what the client still sends until it stops,
    /// [`LINGER`] passes or a megabyte is dropped; then the read fails and the connection ends.
    fn poll_refusal(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let refused = || io::Error::new(io::ErrorKind::InvalidData, "request head over the limits");
        loop {
            match self.refusal {
                Some(Refusal::Writing { answer, done }) if done < answer.len() => {
                    let n = std::task::ready!(
                        Pin::new(&mut self.inner).poll_write(cx, &answer[done..])
                    )?;
                    self.refusal = Some(Refusal::Writing {
                        answer,
                        done: done + n,
                    });
                }
                Some(Refusal::Writing { .. }) => {
                    std::task::ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
                    self.refusal = Some(Refusal::Lingering);
                    self.since = Some(Instant::now());
                    self.timer.as_mut().reset(Instant::now() + LINGER);
                    self.timer_at = None;
                }
                Some(Refusal::Lingering) => {
                    let mut dropped = 0usize;
                    let mut scratch = [0u8; 4096];
                    while dropped < 1 << 20 {
                        if self.timer.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Err(refused()));
                        }
                        let mut buf = ReadBuf::new(&mut scratch);
                        match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                            Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                                dropped += buf.filled().len()
                            }
                            Poll::Pending => return Poll::Pending,
                            _ => return Poll::Ready(Err(refused())),
                        }
                    }
                    return Poll::Ready(Err(refused()));
                }
                None => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl AsyncRead for ClientConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.refusal.is_some() {
            return self.poll_refusal(cx);
        }
        if let Some(replayed) = self.replayed.as_mut() {
            let n = replayed.len().min(buf.remaining());
            buf.put_slice(&replayed.split_to(n));
            if replayed.is_empty() {
                self.replayed = None;
            }
            return Poll::Ready(Ok(()));
        }
        if let Err(e) = self.check_deadline(cx) {
            return Poll::Ready(Err(e));
        }
        if self.seen_phase == Phase::WebSocket {
            self.closer.register(cx.waker());
            // Once the close frame is out, the client's side has ended.
            if std::task::ready!(self.poll_close(cx))? {
                return Poll::Ready(Ok(()));
            }
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            if buf.filled().len() > before {
                match self.seen_phase {
                    Phase::AwaitingHeader if self.since.is_none() => {
                        self.since = Some(Instant::now())
                    }
                    Phase::WebSocket => self.since = Some(Instant::now()),
                    _ => {}
                }
                if self.seen_phase == Phase::AwaitingHeader {
                    let this = &mut *self;
                    if let Some(Err(status)) = this
                        .head
                        .as_mut()
                        .map(|h| h.advance(&buf.filled()[before..]))
                    {
                        // Pingora sees nothing of this head: the answer is ours.
                        buf.set_filled(before);
                        if let Some(shared) = &this.shared {
                            shared
                                .metrics
                                .request(status, crate::route::Route::Api, "none", 0.0);
                        }
                        this.refusal = Some(Refusal::Writing {
                            answer: refusal_answer(status),
                            done: 0,
                        });
                        return this.poll_refusal(cx);
                    }
                }
            }
        }
        result
    }
}

impl AsyncWrite for ClientConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.sync_phase() != Phase::WebSocket {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        }
        // After the close frame nothing more goes to the client.
        if std::task::ready!(self.poll_close(cx))? {
            return Poll::Ready(Ok(buf.len()));
        }
        let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.frames.advance(&buf[..n]);
        if self.closer.requested().is_some() && self.frames.at_boundary() {
            // Wake the reader: it writes the close frame and ends the client's side.
            self.closer.wake();
        }
        Poll::Ready(Ok(n))
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for ClientConn {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for ClientConn {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for ClientConn {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for ClientConn {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for ClientConn {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for ClientConn {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for ClientConn {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

impl Drop for ClientConn {
    fn drop(&mut self) {
        if !*self.linger.get_mut() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // In its place, the same stand-in pingora's session keeps once a WebSocket's stream
        // has left it; nothing reads or writes it again.
        let stand_in = Box::new(crate::tunnel::Replay::new(bytes::Bytes::new(), &self.inner));
        let stream = std::mem::replace(&mut self.inner, stand_in);
        // The client's connection limit and the listener's gauge still count it meanwhile.
        let held = (self.slot.take(), self.open.take());
        runtime.spawn(linger(stream, held));
    }
}

/// Close `stream`'s side (TLS close_notify, then FIN), then read and drop what the client
/// sends until it closes, [`LINGER`] passes or [`LINGER_BYTES`] are dropped.
async fn linger(mut stream: Stream, held: (Option<ConnectionSlot>, Option<OpenConnection>)) {
    let drain = async {
        Shutdown::shutdown(&mut *stream).await;
        let mut scratch = [0u8; 4096];
        let mut dropped = 0;
        while dropped < LINGER_BYTES {
            match tokio::io::AsyncReadExt::read(&mut stream, &mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => dropped += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
    drop(held);
}

impl fmt::Debug for ClientConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConn")
            .field("phase", &self.phase())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_core::protocols::l4::stream::Stream as L4Stream;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connected pair: the edge's side wrapped in a `ClientConn`, and the client's socket.
    async fn pair(request_header: Duration) -> (ClientConn, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let stream: Stream = Box::new(L4Stream::from(server));
        (ClientConn::new(stream, request_header, None, None), client)
    }

    #[test]
    fn head_scan_limits_the_request_line_then_the_head() {
        let mut h = HeadScan::default();
        assert_eq!(
            h.advance(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\nbody after the head"),
            Ok(())
        );
        assert!(h.complete);
        let mut lf = HeadScan::default();
        assert_eq!(lf.advance(b"\r\nGET /x HTTP/1.1\nHost: a\n\n"), Ok(()));
        assert!(
            lf.complete,
            "bare LFs, and an empty line before the request line"
        );
        // Whatever follows the head is a body, not counted.
        assert_eq!(h.advance(&[b'x'; 100_000]), Ok(()));

        let mut long_target = HeadScan::default();
        let line = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(long_target.advance(line.as_bytes()), Err(414));

        let mut big_head = HeadScan::default();
        let head = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "b".repeat(MAX_HEAD_BYTES)
        );
        assert_eq!(big_head.advance(head.as_bytes()), Err(431));

        // Byte by byte, exactly at the limit: fine; one more: refused.
        let mut edge = HeadScan::default();
        let fits = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "c".repeat(MAX_HEAD_BYTES - 23)
        );
        assert_eq!(fits.len(), MAX_HEAD_BYTES);
        for b in fits.as_bytes() {
            assert_eq!(edge.advance(&[*b]), Ok(()));
        }
        assert!(edge.complete);
        let mut over = HeadScan::default();
        let too_big = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "c".repeat(MAX_HEAD_BYTES - 22)
        );
        assert_eq!(over.advance(too_big.as_bytes()), Err(431));

        let mut many = HeadScan::default();
        let mut head = String::from("GET / HTTP/1.1\r\n");
        for i in 0..MAX_HEADER_LINES {
            head.push_str(&format!("h{i}:1\r\n"));
        }
        assert_eq!(
            many.advance(head.as_bytes()),
            Err(431),
            "the request line and 200 headers"
        );
    }

    #[test]
    fn head_scan_gives_the_same_answer_however_the_reads_split() {
        // Heads of random lines (some empty, some CRLF, some long), in random reads.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..2_000 {
            let mut head = Vec::new();
            for _ in 0..next(40) {
                let len = [0, 1, 10, 300, 3000][next(5) as usize];
                head.extend(std::iter::repeat_n(b'a', len));
                head.extend_from_slice(if next(2) == 0 { b"\r\n" } else { b"\n" });
            }
            let mut whole = HeadScan::default();
            let expected = (whole.advance(&head), whole);
            let mut split = HeadScan::default();
            let mut got = Ok(());
            let mut rest = &head[..];
            while !rest.is_empty() && got.is_ok() {
                let n = (1 + next(700) as usize).min(rest.len());
                got = split.advance(&rest[..n]);
                rest = &rest[n..];
            }
            assert_eq!(got, expected.0);
            if got.is_ok() {
                assert_eq!(split, expected.1);
            }
        }
    }

    #[tokio::test]
    async fn replayed_bytes_come_before_the_clients() {
        let (mut conn, mut client) = pair(Duration::from_secs(10)).await;
        conn.start_proxying();
        conn.replay(bytes::Bytes::from_static(b"replayed "));
        client.write_all(b"then live").await.unwrap();
        drop(client);
        let mut all = Vec::new();
        conn.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"replayed then live");
    }

    #[tokio::test]
    async fn a_refused_body_is_read_and_dropped_before_the_connection_closes() {
        for linger in [true, false] {
            let (conn, mut client) = pair(Duration::from_secs(10)).await;
            if linger {
                conn.linger_on_close();
            }
            drop(conn);
            // The client is still sending its body after the answer went out.
            let sent = client.write_all(&vec![b'7'; 4 << 20]).await;
            let mut rest = Vec::new();
            let read = client.read_to_end(&mut rest).await;
            if linger {
                sent.unwrap();
                assert_eq!(read.unwrap(), 0, "a clean close, not a reset");
            } else {
                // What a client sees otherwise, and what lingering is for.
                assert!(sent.is_err() || read.is_err());
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_websocket_is_closed_after_its_own_timeout_only() {
        let (mut conn, mut client) = pair(Duration::from_secs(10)).await;
        conn.enter_websocket(Duration::from_secs(120));
        let mut buf = [0u8; 16];
        // Traffic at 100 s keeps it open past the first 120 s...
        tokio::time::sleep(Duration::from_secs(100)).await;
        client.write_all(b"x").await.unwrap();
        assert_eq!(conn.read(&mut buf).await.unwrap(), 1);
        let quiet_from = Instant::now();
        // ...and 120 s of silence after that closes it.
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let waited = quiet_from.elapsed();
        assert!(
            waited >= Duration::from_secs(120) && waited < Duration::from_secs(121),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_head_has_a_deadline_from_its_first_byte() {
        let (mut conn, mut client) = pair(Duration::from_secs(10)).await;
        let mut buf = [0u8; 16];
        // Bytes keep coming, one a second, but the head is never finished.
        let started = Instant::now();
        let err = loop {
            client.write_all(b"a").await.unwrap();
            match tokio::time::timeout(Duration::from_secs(1), conn.read(&mut buf)).await {
                Ok(Ok(_)) => tokio::time::sleep(Duration::from_secs(1)).await,
                Ok(Err(e)) => break e,
                Err(_) => {}
            }
            assert!(started.elapsed() < Duration::from_secs(60), "never cut off");
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() <= Duration::from_secs(11));

        // Proxying has no such deadline; the next head is timed from its first byte.
        conn.start_proxying();
        tokio::time::sleep(Duration::from_secs(30)).await;
        client.write_all(b"b").await.unwrap();
        assert!(conn.read(&mut buf).await.is_ok());
        conn.await_next_request(Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(30)).await;
        client.write_all(b"c").await.unwrap();
        assert!(
            conn.read(&mut buf).await.is_ok(),
            "idle time before a head is not the head's"
        );
    }
}

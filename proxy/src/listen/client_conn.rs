//! A player's connection as the edge holds it: the stream (TLS or TCP) hyper reads and
//! writes, with the deadlines hyper does not keep, the per-IP connection slot it occupies, and
//! a WebSocket's close frame.
//!
//! ```text
//!   phase            deadline on reads                                   entered by
//!   AwaitingHeader   nothing yet: http_idle after the last answer         accept; each answer's end
//!                    (a new connection: request_header after accept)
//!                    a head begun: request_header after its first byte
//!                    pipelined bytes: request_header after the last answer
//!   Proxying         none (the request path times the body and the node)  the request path
//!   WebSocket        websocket_idle after the last client byte            the upgrade
//! ```
//!
//! hyper parses every byte; its own header timer would also cut idle keep-alive connections,
//! so the edge keeps `request_header` and `http_idle` apart here. To tell an idle connection
//! from one holding the start of a pipelined request in hyper's buffer, this wrapper counts
//! the bytes it hands hyper and notes where each request head ends ([`HeadEnd`], which agrees
//! with hyper's parser on where a head ends; it is fuzzed against it): a request's message ends
//! at its head plus its body length, and bytes read past that end were pipelined. A client
//! whose bytes cannot be placed so (a chunked body, pipelining) is timed as pipelining from
//! then on: its next head has `request_header` from the end of each answer.
//!
//! A request refused before its body was read (413, 408, 400) marks the connection
//! ([`ConnState::linger_on_close`]); when hyper drops it, its stream goes to a task that closes
//! its side, then reads and drops what the client still sends ([`LINGER`], [`LINGER_BYTES`]).
//! Closing a socket with unread bytes sends a reset, and a client still writing its body then
//! reports the reset, not the answer it was sent.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::http::ws_close::{close_frame, Closer, Frames};
use crate::limits::ConnectionSlot;
use crate::listen::player_tls::PlayerTls;
use crate::ops::metrics::OpenConnection;

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

/// What the connection is doing, as far as its deadlines are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Waiting for (the rest of) a request head.
    AwaitingHeader = 0,
    /// A request is being proxied (and every HTTP/2 connection).
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

/// After a refused request, how long the rest of the client's bytes are read and dropped
/// before the connection closes.
pub const LINGER: Duration = Duration::from_secs(2);

/// At most this much of a refused request's body is read and dropped before its connection
/// closes anyway (a client that sends more is reset).
pub const LINGER_BYTES: usize = 16 << 20;

/// "Not known" in the stream offsets below.
const UNKNOWN: u64 = u64::MAX;

/// Where a request head ends: after the first empty line that follows a non-empty one. Lines
/// end in LF, with or without CR (RFC 9112 §2.2), and empty lines before the request line are
/// skipped, as hyper's parser (httparse) skips them. Only the deadlines use it; hyper parses
/// the head, and refuses what is not one.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HeadEnd {
    state: Scan,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// Before the request line: CRs and LFs are skipped.
    #[default]
    Start,
    /// Within a line.
    Line,
    /// Right after a line's LF.
    Lf,
    /// After a line's LF and a CR.
    LfCr,
    /// The head has ended.
    Done,
}

impl HeadEnd {
    /// Go over the next `bytes` of the stream: `Some(n)` when the head ends after the first `n`
    /// of them. Once it has, nothing more is looked at.
    pub fn find(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < bytes.len() {
            match self.state {
                Scan::Start => match bytes[i] {
                    b'\r' | b'\n' => i += 1,
                    _ => self.state = Scan::Line,
                },
                Scan::Line => match memchr::memchr(b'\n', &bytes[i..]) {
                    Some(at) => {
                        i += at + 1;
                        self.state = Scan::Lf;
                    }
                    None => return None,
                },
                Scan::Lf | Scan::LfCr => {
                    match (self.state, bytes[i]) {
                        (_, b'\n') => {
                            self.state = Scan::Done;
                            return Some(i + 1);
                        }
                        (Scan::Lf, b'\r') => self.state = Scan::LfCr,
                        _ => self.state = Scan::Line,
                    }
                    i += 1;
                }
                Scan::Done => return None,
            }
        }
        None
    }
}

/// How often an HTTP/1.x connection looks at its phase while a request is proxied: as often
/// as the idle deadline that follows an answer (a pipelined head's shorter one needs no look:
/// hyper reads the pipelined bytes it holds, and the head deadline is set then).
fn look(state: &ConnState) -> Duration {
    Duration::from_millis(state.http_idle_ms.load(Ordering::Relaxed))
}

/// What the request path and the connection share: the phase and the stream offsets that
/// tell an idle connection from a pipelining one, the lingering close, the WebSocket closer,
/// and (HTTP/2) the streams in flight.
#[derive(Debug)]
pub struct ConnState {
    phase: AtomicU8,
    /// Bumped at every phase change, so that the connection sees each one.
    turn: AtomicU32,
    /// The next head is timed from the end of the last answer.
    pipelined: AtomicBool,
    linger: AtomicBool,
    /// Bytes handed to hyper so far (HTTP/1.x).
    read: AtomicU64,
    /// Where the current request head ends in the stream.
    head_end: AtomicU64,
    /// Where the current request (head and body) ends in the stream.
    message_end: AtomicU64,
    /// The deadlines, in milliseconds: a head, an idle keep-alive connection, a WebSocket.
    request_header_ms: AtomicU64,
    http_idle_ms: AtomicU64,
    websocket_idle_ms: AtomicU64,
    /// HTTP/2 streams being answered, and when the last one ended ([`crate::nodes::pool`]'s clock).
    streams: AtomicU32,
    quiet_since_ms: AtomicU64,
    closer: Arc<Closer>,
    /// When the current phase began, in milliseconds after `base`.
    since_ms: AtomicU64,
    base: Instant,
}

/// The deadlines of a connection, from the config of the moment.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// A request head, from its first byte.
    pub request_header: Duration,
    /// An idle keep-alive connection (and an HTTP/2 connection with no stream).
    pub http_idle: Duration,
    /// A WebSocket with no byte from the client.
    pub websocket_idle: Duration,
}

impl Deadlines {
    /// The deadlines of `timeouts`.
    pub fn of(timeouts: &nakama_edge_config::Timeouts) -> Deadlines {
        Deadlines {
            request_header: timeouts.request_header,
            http_idle: timeouts.http_idle,
            websocket_idle: timeouts.websocket_idle,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ConnState {
    fn new(phase: Phase, deadlines: Deadlines) -> ConnState {
        let state = ConnState {
            phase: AtomicU8::new(phase as u8),
            turn: AtomicU32::new(0),
            // A new connection's first head has request_header from the accept.
            pipelined: AtomicBool::new(true),
            linger: AtomicBool::new(false),
            read: AtomicU64::new(0),
            head_end: AtomicU64::new(UNKNOWN),
            message_end: AtomicU64::new(UNKNOWN),
            request_header_ms: AtomicU64::new(0),
            http_idle_ms: AtomicU64::new(0),
            websocket_idle_ms: AtomicU64::new(0),
            streams: AtomicU32::new(0),
            quiet_since_ms: AtomicU64::new(crate::nodes::pool::now_millis()),
            closer: Arc::default(),
            since_ms: AtomicU64::new(0),
            base: Instant::now(),
        };
        state.set_deadlines(deadlines);
        state
    }

    fn set_deadlines(&self, d: Deadlines) {
        self.request_header_ms
            .store(millis(d.request_header), Ordering::Relaxed);
        self.http_idle_ms
            .store(millis(d.http_idle), Ordering::Relaxed);
        self.websocket_idle_ms
            .store(millis(d.websocket_idle), Ordering::Relaxed);
    }

    /// Enter `phase`, begun `at` (`None`: a phase with no deadline here).
    fn enter(&self, phase: Phase, at: Option<Instant>) {
        if let Some(at) = at {
            let since = at.saturating_duration_since(self.base);
            self.since_ms.store(millis(since), Ordering::Relaxed);
        }
        self.phase.store(phase as u8, Ordering::Relaxed);
        self.turn.fetch_add(1, Ordering::Release);
    }

    /// When the current phase began.
    fn since(&self) -> Instant {
        self.base + Duration::from_millis(self.since_ms.load(Ordering::Relaxed))
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    /// An HTTP/1.x request head is in, and its body is `body` bytes long (`None`: chunked):
    /// no deadline while it is proxied.
    pub fn start_request(&self, body: Option<u64>) {
        let head_end = self.head_end.load(Ordering::Relaxed);
        let end = match body {
            Some(n) if head_end != UNKNOWN => head_end.saturating_add(n),
            _ => UNKNOWN,
        };
        self.message_end.store(end, Ordering::Relaxed);
        self.enter(Phase::Proxying, None);
    }

    /// The answer ended `at`: the next head is awaited with `deadlines` (the request's
    /// config). Bytes read past this request's end were pipelined; so were any the stream
    /// could not place.
    pub fn request_done(&self, deadlines: Deadlines, at: Instant) {
        let end = self.message_end.load(Ordering::Relaxed);
        let pipelined = end == UNKNOWN || self.read.load(Ordering::Relaxed) != end;
        self.pipelined.store(pipelined, Ordering::Relaxed);
        self.head_end.store(UNKNOWN, Ordering::Relaxed);
        self.set_deadlines(deadlines);
        self.enter(Phase::AwaitingHeader, Some(at));
    }

    /// Upgraded: closed after `websocket_idle` without a byte from the client.
    pub fn enter_websocket(&self, websocket_idle: Duration) {
        self.websocket_idle_ms
            .store(millis(websocket_idle), Ordering::Relaxed);
        self.enter(Phase::WebSocket, Some(Instant::now()));
    }

    /// The answer going out refuses a request whose body the client may still be sending:
    /// when the connection is dropped, read and drop what the client sends before closing
    /// (module doc).
    pub fn linger_on_close(&self) {
        self.linger.store(true, Ordering::Relaxed);
    }

    /// The handle that asks this connection's WebSocket to close.
    pub fn closer(&self) -> &Arc<Closer> {
        &self.closer
    }

    /// An HTTP/2 stream is being answered.
    pub fn stream_opened(&self) {
        self.streams.fetch_add(1, Ordering::Relaxed);
    }

    /// An HTTP/2 stream's answer has ended.
    pub fn stream_closed(&self) {
        self.quiet_since_ms
            .store(crate::nodes::pool::now_millis(), Ordering::Relaxed);
        self.streams.fetch_sub(1, Ordering::Relaxed);
    }

    /// HTTP/2: `None` while a stream is answered; else how long no stream has been.
    pub fn quiet_for(&self) -> Option<Duration> {
        if self.streams.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let since = self.quiet_since_ms.load(Ordering::Relaxed);
        Some(Duration::from_millis(
            crate::nodes::pool::now_millis().saturating_sub(since),
        ))
    }

    /// How long an HTTP/2 connection may go without a stream.
    pub fn http_idle(&self) -> Duration {
        Duration::from_millis(self.http_idle_ms.load(Ordering::Relaxed))
    }
}

/// A refused request's stream, being drained before it closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// None requested, or waiting for a frame boundary.
    Open,
    /// Writing it: `done` bytes of `frame` are out.
    Writing { frame: [u8; 4], done: usize },
    /// Sent: the client side reads as ended and nothing more is written to it.
    Sent,
}

/// A player's connection. Built by the accept path; the request path reaches its shared
/// state through [`ClientConn::state`].
pub struct ClientConn {
    inner: Transport,
    state: Arc<ConnState>,
    seen_turn: u32,
    seen_phase: Phase,
    /// When the current phase's clock started: the last answer's end, the first byte of a
    /// head, or a WebSocket's last client byte.
    since: Instant,
    /// A head has begun (or pipelined bytes wait): `request_header` from `since`.
    head_begun: bool,
    timer: Pin<Box<Sleep>>,
    timer_at: Option<Instant>,
    /// The timer has been polled since it was last set: it will wake this task, so a look at
    /// whether it has elapsed is enough until it is set again.
    timer_polled: bool,
    /// Where the head being read ends (HTTP/1.x); `None` for HTTP/2.
    head: Option<HeadEnd>,
    /// Held until the connection closes, lingering included.
    slot: Option<ConnectionSlot>,
    open: Option<OpenConnection>,
    /// Server-to-client frame boundaries, once upgraded.
    frames: Frames,
    close: Close,
}

impl ClientConn {
    /// Wrap `inner`, holding `slot` (the client's connection limit) and `open` (the listener's
    /// gauge) until it closes. `h2`: an HTTP/2 connection, which has no head deadlines here.
    pub fn new(
        inner: Transport,
        h2: bool,
        deadlines: Deadlines,
        slot: Option<ConnectionSlot>,
        open: Option<OpenConnection>,
    ) -> ClientConn {
        let phase = if h2 {
            Phase::Proxying
        } else {
            Phase::AwaitingHeader
        };
        let now = Instant::now();
        ClientConn {
            inner,
            state: Arc::new(ConnState::new(phase, deadlines)),
            seen_turn: 0,
            seen_phase: phase,
            since: now,
            head_begun: true,
            timer: Box::pin(tokio::time::sleep_until(now + Duration::from_secs(86400))),
            timer_at: None,
            timer_polled: false,
            head: (!h2).then(HeadEnd::default),
            slot,
            open,
            frames: Frames::frames_only(),
            close: Close::Open,
        }
    }

    /// What the request path shares with this connection.
    pub fn state(&self) -> &Arc<ConnState> {
        &self.state
    }

    /// What the connection travels over.
    pub fn transport(&self) -> &Transport {
        &self.inner
    }

    /// Catch up with phase changes made by the request path.
    fn sync_phase(&mut self) -> Phase {
        let turn = self.state.turn.load(Ordering::Acquire);
        if turn == self.seen_turn {
            return self.seen_phase;
        }
        self.seen_turn = turn;
        let phase = self.state.phase();
        self.seen_phase = phase;
        // A new phase may be polled from another task (a WebSocket's splice).
        self.timer_polled = false;
        // Timed from the phase change itself: hyper may read again only later.
        self.since = self.state.since();
        match phase {
            Phase::AwaitingHeader => {
                self.head_begun = self.state.pipelined.load(Ordering::Relaxed);
                if let Some(head) = self.head.as_mut() {
                    *head = HeadEnd::default();
                }
            }
            Phase::WebSocket => self.frames = Frames::frames_only(),
            Phase::Proxying => {}
        }
        phase
    }

    /// The current deadline: `(when, strict)`. A strict deadline is an error once passed;
    /// a loose one only wakes the connection for a look (HTTP/1.x, while a request is
    /// proxied or its head is complete).
    fn deadline(&self, phase: Phase) -> Option<(Instant, bool)> {
        let ms = |a: &AtomicU64| Duration::from_millis(a.load(Ordering::Relaxed));
        let state = &self.state;
        let head_complete = self.head.is_some_and(|h| h.state == Scan::Done);
        Some(match phase {
            Phase::Proxying if self.head.is_none() => return None,
            Phase::Proxying => (self.since + look(state), false),
            Phase::AwaitingHeader if head_complete => (self.since + look(state), false),
            Phase::WebSocket => (self.since + ms(&state.websocket_idle_ms), true),
            Phase::AwaitingHeader if self.head_begun => {
                (self.since + ms(&state.request_header_ms), true)
            }
            Phase::AwaitingHeader => (self.since + ms(&state.http_idle_ms), true),
        })
    }

    /// `Err` when the current deadline has passed; otherwise arms the timer for it.
    ///
    /// While an HTTP/1.x request is proxied the timer is armed too, with no deadline behind
    /// it: hyper reads during a request (to notice a client leaving) and may not read again
    /// once the answer is out, so a timer must wake it to begin the idle deadline. That look
    /// keeps a timer already armed to fire by then (moving a timer earlier is what costs, a
    /// lock and the wheel): the idle deadline of the last answer always does.
    fn check_deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let phase = self.sync_phase();
        let Some((deadline, strict)) = self.deadline(phase) else {
            return Ok(());
        };
        let rearm = if strict {
            self.timer_at != Some(deadline)
        } else {
            self.timer_at.is_none_or(|at| at > deadline)
        };
        if rearm {
            self.timer.as_mut().reset(deadline);
            self.timer_at = Some(deadline);
            self.timer_polled = false;
        }
        let elapsed = if self.timer_polled {
            self.timer.is_elapsed()
        } else {
            self.timer_polled = true;
            self.timer.as_mut().poll(cx).is_ready()
        };
        if !elapsed {
            return Ok(());
        }
        if !strict {
            // Nothing is late: look again later.
            self.since = Instant::now();
            let next = self.since + look(&self.state);
            self.timer.as_mut().reset(next);
            self.timer_at = Some(next);
            self.timer_polled = self.timer.as_mut().poll(cx).is_pending();
            return Ok(());
        }
        let what = match phase {
            Phase::WebSocket => "WebSocket idle timeout",
            _ if self.head_begun => "request header timeout",
            _ => "idle keep-alive timeout",
        };
        Err(io::Error::new(io::ErrorKind::TimedOut, what))
    }

    /// Drive a requested close frame: `Ready(true)` once it is out.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        if self.close == Close::Open {
            match self.state.closer.requested() {
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

    /// Account for `bytes` handed to hyper: the stream offset, and where the head ends.
    fn account(&mut self, phase: Phase, bytes: &[u8]) {
        let Some(head) = self.head.as_mut() else {
            return;
        };
        let read = self.state.read.load(Ordering::Relaxed);
        if phase == Phase::AwaitingHeader {
            let begins = !self.head_begun;
            self.head_begun = true;
            let end = head.find(bytes);
            // A head complete in the read that began it needs no deadline of its own.
            if begins && end.is_none() {
                self.since = Instant::now();
            }
            if let Some(end) = end {
                self.state
                    .head_end
                    .store(read + end as u64, Ordering::Relaxed);
            }
        }
        self.state
            .read
            .store(read + bytes.len() as u64, Ordering::Relaxed);
    }
}

use std::future::Future as _;

impl AsyncRead for ClientConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Err(e) = self.check_deadline(cx) {
            return Poll::Ready(Err(e));
        }
        let phase = self.seen_phase;
        if phase == Phase::WebSocket {
            self.state.closer.register(cx.waker());
            // Once the close frame is out, the client's side has ended.
            if std::task::ready!(self.poll_close(cx))? {
                return Poll::Ready(Ok(()));
            }
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let this = &mut *self;
            let read = &buf.filled()[before..];
            if !read.is_empty() {
                match phase {
                    Phase::WebSocket => this.since = Instant::now(),
                    _ => this.account(phase, read),
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
        if self.state.closer.requested().is_some() && self.frames.at_boundary() {
            // Wake the reader: it writes the close frame and ends the client's side.
            self.state.closer.wake();
        }
        Poll::Ready(Ok(n))
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.sync_phase() == Phase::WebSocket {
            // Frame boundaries are tracked one buffer at a time.
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| b);
            return self.poll_write(cx, first);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Drop for ClientConn {
    fn drop(&mut self) {
        if !self.state.linger.load(Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let stream = std::mem::replace(&mut self.inner, Transport::Closed);
        // The client's connection limit and the listener's gauge still count it meanwhile.
        let held = (self.slot.take(), self.open.take());
        runtime.spawn(linger(stream, held));
    }
}

/// Close `stream`'s side (TLS close_notify, then FIN), then read and drop what the client
/// sends until it closes, [`LINGER`] passes or [`LINGER_BYTES`] are dropped.
async fn linger(mut stream: Transport, held: (Option<ConnectionSlot>, Option<OpenConnection>)) {
    let drain = async {
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
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
            .field("phase", &self.state.phase())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn deadlines(request_header: u64, http_idle: u64) -> Deadlines {
        Deadlines {
            request_header: Duration::from_secs(request_header),
            http_idle: Duration::from_secs(http_idle),
            websocket_idle: Duration::from_secs(120),
        }
    }

    /// A connected pair: the edge's side wrapped in a `ClientConn`, and the client's socket.
    async fn pair(d: Deadlines) -> (ClientConn, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let stream = Transport::Tcp(server);
        (ClientConn::new(stream, false, d, None, None), client)
    }

    fn end_of(bytes: &[u8]) -> Option<usize> {
        HeadEnd::default().find(bytes)
    }

    #[test]
    fn heads_end_at_their_first_empty_line() {
        assert_eq!(end_of(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"), Some(27));
        assert_eq!(end_of(b"GET / HTTP/1.1\nHost: a\n\n"), Some(24));
        assert_eq!(
            end_of(b"GET / HTTP/1.1\r\nHost: a\n\r\nGET"),
            Some(26),
            "LF CR LF"
        );
        assert_eq!(
            end_of(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"),
            Some(22),
            "leading empty lines"
        );
        assert_eq!(end_of(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(end_of(b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n"), Some(26));
        // Split anywhere, the end is found at the same place.
        let head = b"\r\nPOST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi";
        for split in 0..head.len() {
            let mut scan = HeadEnd::default();
            let end = match scan.find(&head[..split]) {
                Some(end) => end,
                None => split + scan.find(&head[split..]).unwrap(),
            };
            assert_eq!(end, head.len() - 2, "split at {split}");
        }
    }

    #[tokio::test]
    async fn a_request_with_its_body_leaves_nothing_pipelined_and_more_bytes_do() {
        for (sent, pipelined) in [
            (
                &b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"[..],
                false,
            ),
            (
                b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhiG",
                true,
            ),
        ] {
            let (mut conn, mut client) = pair(deadlines(10, 60)).await;
            client.write_all(sent).await.unwrap();
            let mut got = vec![0u8; sent.len()];
            conn.read_exact(&mut got).await.unwrap();
            let state = conn.state().clone();
            state.start_request(Some(2));
            state.request_done(deadlines(10, 60), Instant::now());
            assert_eq!(state.pipelined.load(Ordering::Relaxed), pipelined);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_has_http_idle_and_a_begun_head_request_header() {
        let (mut conn, mut client) = pair(deadlines(10, 60)).await;
        let state = conn.state().clone();
        let mut buf = [0u8; 64];
        // The first request, then its answer: the connection idles.
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let n = conn.read(&mut buf).await.unwrap();
        assert_eq!(n, 18);
        state.start_request(Some(0));
        state.request_done(deadlines(10, 60), Instant::now());
        // 50 s of silence is within http_idle...
        tokio::time::sleep(Duration::from_secs(50)).await;
        client.write_all(b"G").await.unwrap();
        assert_eq!(conn.read(&mut buf).await.unwrap(), 1);
        // ...and the head begun then has request_header.
        let begun = Instant::now();
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let waited = begun.elapsed();
        assert!(
            waited >= Duration::from_secs(9) && waited <= Duration::from_secs(11),
            "{waited:?}"
        );
    }

    /// A waker that notes when it was woken.
    struct Woken(std::sync::Mutex<Option<Instant>>);

    impl std::task::Wake for Woken {
        fn wake(self: Arc<Self>) {
            let mut at = self.0.lock().unwrap();
            at.get_or_insert_with(Instant::now);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_deadline_holds_when_nothing_reads_after_the_answer() {
        // http_idle (1 s) shorter than request_header (10 s): the timer armed for the first
        // head must not be what ends an idle connection.
        let (mut conn, mut client) = pair(deadlines(10, 1)).await;
        let state = conn.state().clone();
        let mut buf = [0u8; 64];
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(conn.read(&mut buf).await.unwrap(), 18);
        state.start_request(Some(0));
        // hyper reads during a request, to notice a client leaving, and is left waiting...
        let woken = Arc::new(Woken(std::sync::Mutex::new(None)));
        let waker = std::task::Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let read = conn.read(&mut buf);
        tokio::pin!(read);
        assert!(read.as_mut().poll(&mut cx).is_pending());
        // ...and reads again only when woken, once the answer is out.
        state.request_done(deadlines(10, 1), Instant::now());
        let answered = Instant::now();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let at = woken.0.lock().unwrap().expect("the connection was woken");
        assert!(
            at - answered <= Duration::from_secs(2),
            "{:?}",
            at - answered
        );
        let ended = read.as_mut().poll(&mut cx);
        assert!(
            matches!(&ended, Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::TimedOut),
            "{ended:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pipelined_bytes_have_request_header_from_the_answer() {
        let (mut conn, mut client) = pair(deadlines(10, 60)).await;
        let state = conn.state().clone();
        let mut buf = [0u8; 64];
        client.write_all(b"GET / HTTP/1.1\r\n\r\nG").await.unwrap();
        assert_eq!(conn.read(&mut buf).await.unwrap(), 19);
        state.start_request(Some(0));
        state.request_done(deadlines(10, 60), Instant::now());
        let answered = Instant::now();
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(answered.elapsed() <= Duration::from_secs(11));
    }

    #[tokio::test]
    async fn a_refused_body_is_read_and_dropped_before_the_connection_closes() {
        for linger in [true, false] {
            let (conn, mut client) = pair(deadlines(10, 60)).await;
            if linger {
                conn.state().linger_on_close();
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
        let (mut conn, mut client) = pair(deadlines(10, 60)).await;
        conn.state().enter_websocket(Duration::from_secs(120));
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
        let (mut conn, mut client) = pair(deadlines(10, 60)).await;
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

        // Proxying has no such deadline.
        conn.state().start_request(None);
        tokio::time::sleep(Duration::from_secs(30)).await;
        client.write_all(b"b").await.unwrap();
        assert!(conn.read(&mut buf).await.is_ok());
    }
}

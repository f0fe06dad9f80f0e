//! What the request path and the connection share ([`ConnState`], behind an `Arc`): the phase,
//! the stream offsets that tell an idle connection from a pipelining one, the deadlines of the
//! config of the moment, the lingering close, the WebSocket closer and HTTP/2's open streams.
//! The request path writes it; the connection reads it to keep its deadlines.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::http::ws_close::Closer;

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

/// "Not known"" in the stream offsets below.
const UNKNOWN: u64 = u64::MAX;

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
    pub(super) fn new(phase: Phase, deadlines: Deadlines) -> ConnState {
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
    pub(super) fn since(&self) -> Instant {
        self.base + Duration::from_millis(self.since_ms.load(Ordering::Relaxed))
    }

    /// Bumped at every phase change.
    pub(super) fn turn(&self) -> u32 {
        self.turn.load(Ordering::Acquire)
    }

    /// Whether the head now awaited is timed from the end of the last answer.
    pub(super) fn pipelined(&self) -> bool {
        self.pipelined.load(Ordering::Relaxed)
    }

    /// Whether the connection reads and drops the client's bytes before it closes.
    pub(super) fn lingers(&self) -> bool {
        self.linger.load(Ordering::Relaxed)
    }

    /// `n` more bytes were handed to hyper; the current head ends after the first `head_end`
    /// of them.
    pub(super) fn handed(&self, n: usize, head_end: Option<usize>) {
        let read = self.read.load(Ordering::Relaxed);
        if let Some(end) = head_end {
            self.head_end.store(read + end as u64, Ordering::Relaxed);
        }
        self.read.store(read + n as u64, Ordering::Relaxed);
    }

    /// The deadline of a request head, from its first byte.
    pub(super) fn request_header(&self) -> Duration {
        Duration::from_millis(self.request_header_ms.load(Ordering::Relaxed))
    }

    /// The deadline of a WebSocket with no byte from the client.
    pub(super) fn websocket_idle(&self) -> Duration {
        Duration::from_millis(self.websocket_idle_ms.load(Ordering::Relaxed))
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

    /// How long a keep-alive connection may idle (and an HTTP/2 connection go without a
    /// stream).
    pub fn http_idle(&self) -> Duration {
        Duration::from_millis(self.http_idle_ms.load(Ordering::Relaxed))
    }
}

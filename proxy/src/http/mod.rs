//! The HTTP layer: a player's HTTP/1.1 and HTTP/2 connections, framed by hyper, and the edge's
//! rules applied to each request on its way to a node and back.
//!
//! ```text
//!   accept::Entry ─► serve(ClientConn) ── hyper server: HTTP/1.1 (keep-alive, pipelining,
//!        │                                  upgrades) or HTTP/2 (ALPN h2)
//!        │  every request: request::handle
//!        │    head::admit ────────── 400/405/413/414/431 and close: a head framed or named badly
//!        │    edge's own answers ─── ACME HTTP-01, redirects to https (the http listener)
//!        │    request budget ─────── 429 (per user with a verified token, else per address)
//!        │    target::Target ─────── any node, or (shard mode) the node of the player's shard
//!        │    body::read_whole ───── the body, whole, within timeouts.request_body (408, 413)
//!        │    login budget ───────── 429 (failed logins per account)
//!        │    websocket::open ────── a WebSocket: sticky node, hyper's upgrade, then the splice
//!        │    forward::to_node ───── round-robin (gRPC, console), retries, upstream (hyper's client)
//!        │  ◄─ answer::Answer ────── the node's head less hop-by-hop headers, its body relayed as
//!        │                           it comes; counted and logged when it has ended
//!        └─ shutdown: `Connection: close` from then on; at half the grace period idle and
//!           partial connections close, and HTTP/2 connections get GOAWAY
//! ```
//!
//! hyper parses and frames every message on both sides; this layer never reads or writes a
//! byte of HTTP itself. What it decides is policy: which requests go on, where, and with which
//! headers.

mod answer;
mod body;
mod budget;
mod console;
mod forward;
pub mod head;
pub mod headers;
mod request;
pub mod route;
mod target;
pub mod tunnel;
mod websocket;
pub mod ws_close;

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use http::HeaderValue;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::http::route::{Listener, Route};
use crate::listen::client_conn::{ClientConn, ConnState};
use crate::listen::closing::Watcher;
use crate::state::Shared;

/// Request heads (HTTP/1.1) are read into a buffer of at most this size: hyper answers 431
/// past it; below it the edge answers 414 and 431 at Nakama's own limit.
const MAX_HEAD_BUFFER: usize = 16 * 1024;

/// Header lines per request (HTTP/1.1); hyper answers 431 past it.
const MAX_HEADERS: usize = 100;

/// HTTP/2 streams a player may have open at once.
const MAX_STREAMS: u32 = 128;

/// Who a request comes from: its connection's facts, shared by the connection's requests.
pub(crate) struct Player {
    pub shared: Arc<Shared>,
    pub listener: Listener,
    pub client: IpAddr,
    /// The client's address, as the edge's `X-Forwarded-For`.
    pub forwarded_for: HeaderValue,
    /// The TLS version, or `"none"`.
    pub tls: &'static str,
    pub h2: bool,
    pub conn: Arc<ConnState>,
}

impl Player {
    /// `https` or `http`: what `X-Forwarded-Proto` says.
    pub fn proto(&self) -> &'static str {
        match self.listener {
            Listener::Http => "http",
            Listener::Https | Listener::Console => "https",
        }
    }

    fn alpn(&self) -> &'static str {
        if self.h2 {
            "h2"
        } else {
            "http/1.1"
        }
    }
}

/// The HTTP server settings of a listener, made once.
pub struct Server {
    h1: http1::Builder,
}

impl Default for Server {
    fn default() -> Self {
        let mut h1 = http1::Builder::new();
        h1.max_buf_size(MAX_HEAD_BUFFER)
            .max_headers(MAX_HEADERS)
            // The head and idle deadlines are the connection's (client_conn), kept apart.
            .header_read_timeout(None)
            // A player that closes its side after a request still gets the answer, and the
            // request runs to its end at the node, as HAProxy does by default: hyper does not
            // read while a request is proxied. (Reading there, it took a fresh 8 KiB buffer
            // for every request, the head still holding the last one.)
            .half_close(true)
            // One buffer, one `send`: a `writev` costs the kernel about 0.3 µs more than a
            // `send` of the same bytes (BENCHMARKS.md), and an answer's head and body would
            // otherwise go as two slices. hyper copies the body in behind the head (a large
            // one a buffer's worth at a time).
            .writev(false);
        Server { h1 }
    }
}

/// The HTTP/2 settings of a connection whose streams run on `streams`.
fn h2_builder(streams: Streams) -> http2::Builder<Streams> {
    let mut h2 = http2::Builder::new(streams);
    h2.max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEAD_BUFFER as u32)
        // Nakama refuses bodies over 256 KiB: a stream's window covers one at once.
        .initial_stream_window_size(256 * 1024)
        .initial_connection_window_size(1024 * 1024);
    h2
}

type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The HTTP/2 streams of one connection, run by the connection's own task: hyper hands each
/// stream's future to this executor instead of spawning a task per request, whose creation,
/// scheduling and wake-ups cost more than most of a stream's own work (BENCHMARKS.md).
#[derive(Clone, Default)]
struct Streams(Arc<Mutex<FuturesUnordered<StreamFuture>>>);

impl<F> hyper::rt::Executor<F> for Streams
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        let streams = self.0.lock().unwrap_or_else(|e| e.into_inner());
        streams.push(Box::pin(stream));
    }
}

impl Streams {
    /// Run the streams that can go on, to their ends or until they wait: always `Pending`
    /// (each stream wakes this task when it can go on; the connection adds the next ones in
    /// its own poll, before this).
    fn poll_streams(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut streams = self.0.lock().unwrap_or_else(|e| e.into_inner());
        while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
        Poll::Pending
    }
}

/// Serve `conn`'s requests until it closes. `closing` is raised when idle and partial
/// connections are to close (the listener's cleanup, halfway through the grace period).
pub(crate) async fn serve(
    server: &Server,
    shared: Arc<Shared>,
    listener: Listener,
    client: IpAddr,
    conn: ClientConn,
    closing: Watcher,
) {
    let h2 = conn.transport().is_h2();
    let state = conn.state().clone();
    let player = Arc::new(Player {
        forwarded_for: forwarded_for(client),
        tls: conn.transport().tls_version(),
        shared,
        listener,
        client,
        h2,
        conn: state.clone(),
    });
    let metrics_player = player.clone();
    // The request's future is a few KiB of state: boxed once, every later move (into hyper's
    // dispatcher, into an HTTP/2 stream's task) is a pointer's.
    let service = service_fn(move |req| {
        let answer = Box::pin(request::handle(player.clone(), req));
        async move { Ok::<_, Infallible>(answer.await) }
    });
    let io = TokioIo::new(conn);
    let ended = if h2 {
        let streams = Streams::default();
        let conn = pin!(h2_builder(streams.clone()).serve_connection(io, service));
        drive(conn, Some(&streams), &closing, Some(&state), |c| {
            c.graceful_shutdown()
        })
        .await
    } else {
        let conn = pin!(server.h1.serve_connection(io, service).with_upgrades());
        // HTTP/1.1 runs its one request inside the connection's own future: no streams.
        drive(conn, None, &closing, None, |c| c.graceful_shutdown()).await
    };
    if let Err(e) = ended {
        refused_by_hyper(&metrics_player, &e);
    }
}

/// Poll `conn` (and the HTTP/2 `streams` it starts) to its end; on `closing`, or (HTTP/2,
/// `idle`) once no stream has been open for `http_idle`, ask it to close gracefully.
async fn drive<C>(
    mut conn: Pin<&mut C>,
    streams: Option<&Streams>,
    closing: &Watcher,
    idle: Option<&ConnState>,
    shutdown: impl Fn(Pin<&mut C>),
) -> hyper::Result<()>
where
    C: Future<Output = hyper::Result<()>>,
{
    let mut closed = false;
    let mut idle_check = pin!(tokio::time::sleep(
        idle.map_or(Duration::MAX / 4, ConnState::http_idle)
    ));
    loop {
        tokio::select! {
            // The connection first: the streams it starts in a poll run in the same one.
            biased;
            ended = conn.as_mut() => return ended,
            () = std::future::poll_fn(|cx| streams.map_or(Poll::Pending, |s| s.poll_streams(cx))), if streams.is_some() => {}
            () = std::future::poll_fn(|cx| closing.poll_raised(cx)), if !closed => {
                closed = true;
                shutdown(conn.as_mut());
            }
            _ = idle_check.as_mut(), if idle.is_some() && !closed => {
                let Some(state) = idle else { continue };
                let limit = state.http_idle();
                match state.quiet_for() {
                    Some(quiet) if quiet >= limit => {
                        closed = true;
                        shutdown(conn.as_mut());
                    }
                    quiet => {
                        let wait = limit.saturating_sub(quiet.unwrap_or_default());
                        idle_check.as_mut().reset(tokio::time::Instant::now() + wait);
                    }
                }
            }
        }
    }
}

/// Count what hyper refused itself, before the edge saw a request: heads it could not parse
/// (400) or that overran its buffer (431).
fn refused_by_hyper(player: &Player, e: &hyper::Error) {
    let status = if e.is_parse_too_large() {
        431
    } else if e.is_parse() || e.is_parse_status() {
        400
    } else {
        tracing::debug!(client = %player.client, error = %e, "player connection ended");
        return;
    };
    tracing::debug!(client = %player.client, error = %e, status, "request refused by the HTTP parser");
    player
        .shared
        .metrics
        .request(status, Route::Api, "none", 0.0);
}

fn forwarded_for(client: IpAddr) -> HeaderValue {
    let mut buf = [0u8; 48];
    let len = {
        use std::io::Write as _;
        let mut cursor = std::io::Cursor::new(&mut buf[..]);
        // An address is at most 45 characters.
        let _ = write!(cursor, "{client}");
        cursor.position() as usize
    };
    HeaderValue::from_bytes(&buf[..len]).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

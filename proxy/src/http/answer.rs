//! What goes back to a player: the answer's body ([`Answer`]: the edge's own bytes, or a
//! node's body relayed as it comes) and its books ([`Books`]: counters, the access-log line,
//! the node's in-flight count), closed when the answer has ended or been dropped.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use http::{Method, Response, StatusCode, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::Sleep;

use super::Player;
use crate::http::route::Route;
use crate::listen::client_conn::Deadlines;
use crate::nodes::pool::Counted;
use crate::nodes::upstream::Lease;
use crate::ops::logging;
use crate::ops::metrics::InFlight;
use crate::state::Snapshot;

/// Why an answer's body was cut off.
#[derive(Debug, thiserror::Error)]
pub enum Cut {
    /// The node's body failed (closed early, or framed badly).
    #[error("node's answer failed: {0}")]
    Node(#[from] hyper::Error),
    /// The node said nothing for `timeouts.upstream_read` mid-body.
    #[error("node silent mid-body past timeouts.upstream_read")]
    Silent,
}

/// An answer's body.
pub struct Answer {
    kind: Kind,
    books: Option<Books>,
}

enum Kind {
    /// The edge's own, whole.
    Own(Option<Bytes>),
    /// A node's, relayed as it arrives.
    Node(Relayed),
}

struct Relayed {
    body: Incoming,
    /// The node connection, kept for the next request once the body has ended whole.
    lease: Option<Lease>,
    silence: Duration,
    /// Armed when the node makes the player wait.
    timer: Option<Pin<Box<Sleep>>>,
}

impl Answer {
    /// The edge's own body.
    pub fn own(bytes: Bytes, books: Books) -> Answer {
        Answer {
            kind: Kind::Own((!bytes.is_empty()).then_some(bytes)),
            books: Some(books),
        }
    }

    /// A node's body; `lease` goes back once it has ended whole. A node silent for
    /// `silence` mid-body cuts it off.
    pub fn node(body: Incoming, lease: Option<Lease>, silence: Duration, books: Books) -> Answer {
        Answer {
            kind: Kind::Node(Relayed {
                body,
                lease,
                silence,
                timer: None,
            }),
            books: Some(books),
        }
    }

    fn sent(&mut self, n: usize) {
        if let Some(books) = self.books.as_mut() {
            books.sent += n;
        }
    }
}

impl Body for Answer {
    type Data = Bytes;
    type Error = Cut;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Cut>>> {
        let this = self.get_mut();
        let relayed = match &mut this.kind {
            Kind::Own(bytes) => {
                let frame = bytes.take();
                if let Some(b) = &frame {
                    let n = b.len();
                    this.sent(n);
                }
                return Poll::Ready(frame.map(|b| Ok(Frame::data(b))));
            }
            Kind::Node(relayed) => relayed,
        };
        match Pin::new(&mut relayed.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                relayed.timer = None;
                let n = frame.data_ref().map_or(0, Bytes::len);
                this.sent(n);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                relayed.lease = None;
                Poll::Ready(Some(Err(Cut::Node(e))))
            }
            Poll::Ready(None) => {
                if let Some(lease) = relayed.lease.take() {
                    lease.give_back();
                }
                Poll::Ready(None)
            }
            Poll::Pending => {
                let silence = relayed.silence;
                let timer = relayed
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(silence)));
                if timer.as_mut().poll(cx).is_ready() {
                    relayed.lease = None;
                    return Poll::Ready(Some(Err(Cut::Silent)));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Own(bytes) => bytes.is_none(),
            Kind::Node(relayed) => relayed.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Own(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Node(relayed) => relayed.body.size_hint(),
        }
    }
}

use std::future::Future as _;

impl Drop for Answer {
    fn drop(&mut self) {
        // A body hyper no longer polls because it knew it had ended (its length reached).
        if let Kind::Node(relayed) = &mut self.kind {
            if relayed.body.is_end_stream() {
                if let Some(lease) = relayed.lease.take() {
                    lease.give_back();
                }
            }
        }
    }
}

/// What a request's counters and access-log line are made of. Written when the books are
/// dropped: with the answer's body, or with the request if it never got one.
pub struct Books {
    player: Arc<Player>,
    snapshot: Arc<Snapshot>,
    started: Instant,
    pub route: Route,
    /// The request's method and target, for the access log (when it is on). Boxed: the books
    /// move with the request and its answer, and most edges log no request.
    logged: Option<Box<(Method, Uri)>>,
    /// The status the player got (0: none).
    pub status: u16,
    /// The node the request went to (last), by index in the snapshot's pool.
    pub node: Option<usize>,
    /// The node's in-flight count, held until the answer has ended.
    pub in_flight: Option<Counted>,
    /// Body bytes received and sent.
    pub received: usize,
    sent: usize,
    /// When the answer's head was decided (a WebSocket's duration ends there).
    answered: Option<Instant>,
    /// What follows on an HTTP/1.1 connection: the next request (`true`), or nothing (closed,
    /// or upgraded).
    pub next_request: bool,
    _counted: InFlight,
}

impl Books {
    /// The books of a request that began at `started`.
    pub(super) fn open(
        player: &Arc<Player>,
        snapshot: &Arc<Snapshot>,
        parts: &http::request::Parts,
        route: Route,
        started: Instant,
    ) -> Books {
        Books {
            player: player.clone(),
            snapshot: snapshot.clone(),
            started,
            route,
            logged: snapshot
                .config
                .log
                .access_log
                .then(|| Box::new((parts.method.clone(), parts.uri.clone()))),
            status: 0,
            node: None,
            in_flight: None,
            received: 0,
            sent: 0,
            answered: None,
            next_request: true,
            _counted: player.shared.metrics.request_started(),
        }
    }

    fn node_name(&self) -> &str {
        self.node
            .and_then(|i| self.snapshot.pool.nodes.get(i))
            .map_or("none", |n| n.config.name.as_str())
    }

    /// The answer's head is `status`.
    pub fn answered(&mut self, status: StatusCode) {
        self.status = status.as_u16();
        if self.route == Route::WebSocket {
            self.answered = Some(Instant::now());
        }
    }

    /// The snapshot the request is served with.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }
}

impl Drop for Books {
    fn drop(&mut self) {
        let player = &self.player;
        let now = Instant::now();
        // A WebSocket's duration is the time to its upgrade, not its lifetime.
        let end = match (self.route, self.answered) {
            (Route::WebSocket, Some(at)) => at,
            _ => now,
        };
        let metrics = &player.shared.metrics;
        let node = self.node_name();
        metrics.request(
            self.status,
            self.route,
            node,
            end.duration_since(self.started).as_secs_f64(),
        );
        metrics.bytes(self.route, self.received, self.sent);
        if let Some((method, uri)) = self.logged.as_deref() {
            logging::access(
                Some(player.client),
                method.as_str(),
                uri.path(),
                self.status,
                self.route.as_str(),
                node,
                logging::millis(now.duration_since(self.started)),
                self.received,
                self.sent,
                player.tls,
                player.alpn(),
            );
        }
        self.in_flight = None;
        if player.h2 {
            player.conn.stream_closed();
        } else if self.next_request {
            player
                .conn
                .request_done(Deadlines::of(&self.snapshot.config.timeouts), now.into());
        }
    }
}

/// What closes an HTTP/1.1 connection after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// The next request may follow.
    KeepAlive,
    /// The connection closes after the answer.
    Close,
    /// The connection closes after the answer, once the client's unread body has been read
    /// and dropped for a moment (it may still be sending it).
    CloseLingering,
}

/// An answer of the edge's own: `status`, no body, and what follows.
pub fn refusal(status: StatusCode, then: Then, books: Books) -> Response<Answer> {
    own(status, then, None, Bytes::new(), books)
}

/// 503 for a player whose shard has no node that takes its new work, saying why in Nakama's
/// error shape (`code` 14: unavailable).
pub fn shard_unavailable(reason: &str, then: Then, books: Books) -> Response<Answer> {
    let body = serde_json::json!({ "code": 14, "message": reason }).to_string();
    let mut response = own(
        StatusCode::SERVICE_UNAVAILABLE,
        then,
        None,
        Bytes::from(body),
        books,
    );
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// 429, with `Retry-After`.
pub fn too_many(retry_after: u64, then: Then, books: Books) -> Response<Answer> {
    own(
        StatusCode::TOO_MANY_REQUESTS,
        then,
        Some(retry_after),
        Bytes::new(),
        books,
    )
}

fn own(
    status: StatusCode,
    then: Then,
    retry_after: Option<u64>,
    body: Bytes,
    mut books: Books,
) -> Response<Answer> {
    books.answered(status);
    if then == Then::CloseLingering {
        books.player.conn.linger_on_close();
    }
    let close = then != Then::KeepAlive;
    if close {
        books.next_request = false;
    }
    let h2 = books.player.h2;
    let mut response = Response::new(Answer::own(body, books));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    match retry_after {
        Some(seconds) => {
            headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        None => {
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
        }
    }
    if close && !h2 {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

//! The HTTP/1.1 API path: a player's keep-alive API requests, carried by the edge itself
//! rather than by pingora's HTTP session, as WebSockets are past their upgrade ([`crate::tunnel`]).
//!
//! ```text
//!   accept::Entry ─► serve(connection)            per request, in stages:
//!     1. head      read and parsed (httparse); anything but a plain API request ──► pingora
//!     2. body      read in full first, within timeouts.request_body (else 408)
//!     3. limits    request budget, then failed logins (429 + Retry-After)
//!     4. node      round-robin; an idle connection (upstream_pool) or a new one; a refusing
//!                  node out of rotation and the next tried, within the retry budget
//!     5. request   head rewritten (headers::forwarded) and body, in one write
//!     6. response  head with hop-by-hop headers dropped, body relayed as framed (length,
//!                  chunked, or to the node's close); the node's connection back to the pool
//!     7. account   counters, access log; then the next head, within timeouts.http_idle
//! ```
//!
//! Why: pingora's HTTP/1 session costs about twice HAProxy's CPU per keep-alive request
//! (BENCHMARKS.md: a session, digest and boxes rebuilt per request, headers cloned into maps
//! and serialised again, a 64 KiB body buffer, a task per pooled connection). Here a request
//! allocates nothing once its connection's buffers have grown to fit: the head is parsed in
//! place, the node's head is written from the player's bytes, and buffers are reused.
//!
//! What stays with pingora (the connection is handed over with the bytes read so far, and stays
//! there): HTTP/2, the console listener, HTTP/1.0, the http listener's redirects and ACME
//! challenges, any `Upgrade` (WebSockets), `Transfer-Encoding` or `Expect` request, a body
//! over [`RETRY_BUFFER_BYTES`], and heads this path does not read plainly (an absolute-form
//! target, more than [`MAX_HEADERS`] headers, repeated or malformed `Content-Length`).
//! Pingora's path answers those as it always has.

use std::io;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use pingora_core::protocols::Ssl;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::client_conn::{ClientConn, MAX_HEAD_BYTES};
use crate::headers;
use crate::logging;
use crate::pool::Tried;
use crate::proxy::{
    connect_failed, login_budget, request_budget, within_retry_budget, RETRY_BUFFER_BYTES,
};
use crate::route::{Listener, Route, ACME_CHALLENGE_PREFIX};
use crate::state::{Shared, Snapshot};
use crate::upstream_pool;

/// Headers parsed per request or response head; a head with more goes to pingora (requests)
/// or is refused (responses).
pub const MAX_HEADERS: usize = 64;

/// The largest response head a node may send.
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// What became of a connection.
pub enum Served {
    /// It is over (closed by either side, or after a `Connection: close`).
    Done,
    /// Pingora's HTTP session carries it on from here; what was read of the current request
    /// is replayed to it.
    HandOver(Box<ClientConn>),
}

/// Where a connection comes from, for the request path.
pub struct Arrival {
    /// The listener (https, or http with `http_redirect = false`).
    pub listener: Listener,
    /// The client's address.
    pub client: IpAddr,
}

impl Arrival {
    fn proto(&self) -> &'static str {
        match self.listener {
            Listener::Http => "http",
            Listener::Https | Listener::Console => "https",
        }
    }
}

/// Serve `conn`'s HTTP/1.1 requests until it closes, or until one is not for this path.
/// `closing` turns true when idle connections are to be closed (the listener's cleanup).
pub async fn serve(
    shared: &Arc<Shared>,
    origin: &Arrival,
    mut conn: ClientConn,
    closing: &mut watch::Receiver<bool>,
) -> Served {
    let tls = conn
        .get_ssl_digest()
        .map_or("none", |d| logging::tls_version(&d));
    let mut from_client = BytesMut::with_capacity(CLIENT_BUFFER);
    let mut out = Vec::with_capacity(OUT_BUFFER);
    // More than this is needed for a head (1: any byte).
    let mut at_least = 1;
    // How long an idle connection waits for its next request (the last request's config).
    let mut idle = shared.snapshot().config.timeouts.http_idle;
    loop {
        // 1. The head.
        match read_head(&mut conn, &mut from_client, at_least, idle, closing).await {
            HeadRead::Complete => at_least = 1,
            HeadRead::Closed => return Served::Done,
        }
        let snapshot = shared.snapshot();
        let books = Books {
            shared,
            snapshot: &snapshot,
            origin,
            tls,
            started: Instant::now(),
        };
        out.clear();
        let redirect = snapshot.config.listeners.http_redirect;
        let head = match examine(&from_client, origin, redirect, &mut out) {
            Examined::Plain(head) => head,
            Examined::Partial => {
                at_least = from_client.len() + 1;
                continue;
            }
            Examined::NotHere => {
                conn.replay(from_client.freeze());
                return Served::HandOver(Box::new(conn));
            }
            Examined::TooLarge => {
                conn.linger_on_close();
                let _ = answer(&mut conn, Refusal::new(431).closing()).await;
                books.close(&from_client, None, 431, "none", 0, 0);
                return Served::Done;
            }
        };
        conn.start_proxying();
        let _counted = shared.metrics.request_started();
        let close_after = head.close || shared.shutting_down.load(Ordering::Relaxed);

        // 2. The body, in full.
        let body_end = head.len + head.body;
        if from_client.len() < body_end {
            let deadline = books.started + snapshot.config.timeouts.request_body;
            match read_to(&mut conn, &mut from_client, body_end, deadline).await {
                Ok(()) => {}
                Err(BodyRead::Late) => {
                    conn.linger_on_close();
                    let _ = answer(&mut conn, Refusal::new(408).closing()).await;
                    books.close(&from_client, Some(&head), 408, "none", 0, 0);
                    return Served::Done;
                }
                Err(BodyRead::Gone) => return Served::Done,
            }
        }
        let body = &from_client[head.len..body_end];

        // 3. Limits.
        let path = head.path(&from_client);
        let limited = request_budget(
            shared,
            &snapshot,
            path,
            head.query(&from_client),
            head.authorization(&from_client),
            origin.client,
        );
        let login = match limited {
            Some(limited) => Err(limited),
            None => login_budget(shared, &snapshot, path, body),
        };
        let login = match login {
            Ok(login) => login,
            Err(limited) => {
                let refusal = Refusal::new(429).retry_after(limited.retry_after);
                let refusal = if close_after {
                    refusal.closing()
                } else {
                    refusal
                };
                if answer(&mut conn, refusal).await.is_err() {
                    return Served::Done;
                }
                books.close(&from_client, Some(&head), 429, "none", head.body, 0);
                if close_after {
                    return Served::Done;
                }
                from_client.advance(body_end);
                conn.await_next_request(snapshot.config.timeouts.request_header);
                continue;
            }
        };

        // 4.–6. To a node and back.
        out.extend_from_slice(body);
        let exchange = Exchange {
            shared,
            snapshot: &snapshot,
            request: &out,
            idempotent: head.idempotent,
            head_request: head.is_head,
            close_after,
            login,
        };
        let mut from_node = node_buffer::take();
        let relayed = exchange.run(&mut conn, &mut from_node).await;
        node_buffer::give_back(from_node);

        // 7. Account.
        let node_name = relayed
            .node
            .and_then(|i| snapshot.pool.nodes.get(i))
            .map_or("none", |n| n.config.name.as_str());
        books.close(
            &from_client,
            Some(&head),
            relayed.status,
            node_name,
            head.body,
            relayed.body_sent,
        );
        if !relayed.keep_alive || close_after {
            let _ = tokio::time::timeout(CLOSE_NOTIFY, conn.shutdown()).await;
            return Served::Done;
        }
        from_client.advance(body_end);
        if from_client.is_empty() {
            // Back to the start of the buffer, so that it does not creep.
            from_client.clear();
        }
        conn.await_next_request(snapshot.config.timeouts.request_header);
        idle = snapshot.config.timeouts.http_idle;
    }
}

/// A connection's buffer for request heads and bodies, to begin with.
const CLIENT_BUFFER: usize = 2 * 1024;
/// A connection's buffer for what goes to the node, to begin with.
const OUT_BUFFER: usize = 1024;
/// How much of a node's body is read at once.
const NODE_READ: usize = 16 * 1024;
/// How long a closing connection waits for its TLS close to go out.
const CLOSE_NOTIFY: Duration = Duration::from_secs(1);

/// Buffers for nodes' responses, one per request in progress, kept per worker thread between
/// requests (an idle connection holds none).
mod node_buffer {
    use std::cell::RefCell;

    /// Buffers kept per thread.
    const KEPT: usize = 64;
    /// A buffer that grew past this (a large response) is let go.
    const KEPT_CAPACITY: usize = 64 * 1024;

    thread_local! {
        static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    }

    /// An empty buffer, with the capacity of an earlier one when there is one.
    pub fn take() -> Vec<u8> {
        FREE.with(|free| free.borrow_mut().pop())
            .unwrap_or_default()
    }

    /// `buf` is no longer needed.
    pub fn give_back(mut buf: Vec<u8>) {
        if buf.capacity() > KEPT_CAPACITY {
            return;
        }
        buf.clear();
        FREE.with(|free| {
            let mut free = free.borrow_mut();
            if free.len() < KEPT {
                free.push(buf);
            }
        });
    }
}

enum HeadRead {
    Complete,
    Closed,
}

/// Read until `buf` holds a complete head and at least `at_least` bytes (or already does). An idle connection waits
/// `idle` for the next request's first byte, and closes when `closing` turns true; a head
/// begun has `timeouts.request_header`, kept by [`ClientConn`], which also refuses heads
/// over [`MAX_HEAD_BYTES`] (414, 431).
async fn read_head(
    conn: &mut ClientConn,
    buf: &mut BytesMut,
    at_least: usize,
    idle: Duration,
    closing: &mut watch::Receiver<bool>,
) -> HeadRead {
    if buf.len() >= at_least && head_complete(buf) {
        return HeadRead::Complete;
    }
    if buf.is_empty() {
        if *closing.borrow() {
            return HeadRead::Closed;
        }
        let first = tokio::select! {
            biased;
            read = conn.read_buf(buf) => read,
            _ = tokio::time::sleep(idle) => return HeadRead::Closed,
            _ = closing.changed() => return HeadRead::Closed,
        };
        match first {
            Ok(0) | Err(_) => return HeadRead::Closed,
            Ok(_) => {}
        }
    }
    loop {
        if buf.len() >= at_least && head_complete(buf) {
            return HeadRead::Complete;
        }
        if buf.len() > MAX_HEAD_BYTES + RETRY_BUFFER_BYTES as usize {
            // ClientConn has refused it already; nothing more to read.
            return HeadRead::Closed;
        }
        match conn.read_buf(buf).await {
            Ok(0) | Err(_) => return HeadRead::Closed,
            Ok(_) => {}
        }
    }
}

/// Whether `buf` begins with a whole request head (an empty line ends it).
fn head_complete(buf: &[u8]) -> bool {
    memchr::memmem::find(buf, b"\r\n\r\n").is_some() || memchr::memmem::find(buf, b"\n\n").is_some()
}

enum BodyRead {
    /// Not complete by the deadline.
    Late,
    /// The client went away.
    Gone,
}

/// Read until `buf` holds `end` bytes, by `deadline`.
async fn read_to(
    conn: &mut ClientConn,
    buf: &mut BytesMut,
    end: usize,
    deadline: Instant,
) -> Result<(), BodyRead> {
    buf.reserve(end.saturating_sub(buf.len()));
    while buf.len() < end {
        let read = tokio::time::timeout_at(deadline.into(), conn.read_buf(buf)).await;
        match read {
            Err(_) => return Err(BodyRead::Late),
            Ok(Ok(0) | Err(_)) => return Err(BodyRead::Gone),
            Ok(Ok(_)) => {}
        }
    }
    Ok(())
}

/// A plain API request's head, as offsets into the connection's buffer (which keeps it until
/// the request is over).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Bytes of the head.
    pub len: usize,
    /// Bytes of the body (`Content-Length`).
    pub body: usize,
    method: (usize, usize),
    target: (usize, usize),
    authorization: Option<(usize, usize)>,
    /// GET, HEAD, PUT, DELETE, OPTIONS, TRACE: may be sent again to another node.
    pub idempotent: bool,
    /// A HEAD request: the answer has no body whatever its head says.
    pub is_head: bool,
    /// The client asked to close after this request.
    pub close: bool,
}

impl Head {
    fn slice(buf: &[u8], (at, len): (usize, usize)) -> &str {
        // httparse checked these are visible ASCII (target, method) or the value of a header
        // this path only compares byte-wise.
        std::str::from_utf8(&buf[at..at + len]).unwrap_or("")
    }
    /// The method.
    pub fn method<'b>(&self, buf: &'b [u8]) -> &'b str {
        Self::slice(buf, self.method)
    }
    /// The path, without the query.
    pub fn path<'b>(&self, buf: &'b [u8]) -> &'b str {
        let target = Self::slice(buf, self.target);
        target.split_once('?').map_or(target, |(path, _)| path)
    }
    /// The query, if any.
    pub fn query<'b>(&self, buf: &'b [u8]) -> Option<&'b str> {
        Self::slice(buf, self.target)
            .split_once('?')
            .map(|(_, q)| q)
    }
    /// The `Authorization` header's value.
    pub fn authorization<'b>(&self, buf: &'b [u8]) -> Option<&'b [u8]> {
        self.authorization.map(|(at, len)| &buf[at..at + len])
    }
}

/// What a buffer holds, for this path.
#[derive(Debug, PartialEq, Eq)]
pub enum Examined {
    /// A plain API request; its head for the node is written.
    Plain(Head),
    /// Not a whole head yet.
    Partial,
    /// A request for pingora's path.
    NotHere,
    /// A head over the limits (ClientConn answers most of these first).
    TooLarge,
}

fn offset(buf: &[u8], part: &[u8]) -> (usize, usize) {
    (part.as_ptr() as usize - buf.as_ptr() as usize, part.len())
}

/// Read the request head at the start of `buf`: whether this path carries it (`http_redirect`:
/// the http listener redirects every request), and if so, the head for the node, written to `out` (the request line as sent, the headers that cross the
/// edge, then `X-Forwarded-For` and `X-Forwarded-Proto`).
pub fn examine(buf: &[u8], origin: &Arrival, http_redirect: bool, out: &mut Vec<u8>) -> Examined {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => return Examined::TooLarge,
        Ok(httparse::Status::Partial) => return Examined::Partial,
        // Too many headers, or something pingora answers in its own words (400).
        Err(_) => return Examined::NotHere,
    };
    if len > MAX_HEAD_BYTES {
        return Examined::TooLarge;
    }
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Examined::NotHere;
    };
    if !target.starts_with('/') {
        return Examined::NotHere;
    }
    if origin.listener == Listener::Http
        && (http_redirect || target.starts_with(ACME_CHALLENGE_PREFIX))
    {
        return Examined::NotHere;
    }
    if origin.listener == Listener::Console {
        return Examined::NotHere;
    }
    let mut body = None;
    let mut authorization = None;
    let mut close = false;
    let mut connection_names: [&[u8]; 8] = [&[]; 8];
    let mut named = 0;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let Some(n) = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
            else {
                return Examined::NotHere;
            };
            if body.is_some() || n > RETRY_BUFFER_BYTES {
                return Examined::NotHere;
            }
            body = Some(n as usize);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("expect")
        {
            return Examined::NotHere;
        } else if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(offset(buf, h.value));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive") {
                    if named == connection_names.len() {
                        return Examined::NotHere;
                    }
                    connection_names[named] = token;
                    named += 1;
                }
            }
        }
    }
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in req.headers.iter() {
        let name = h.name;
        if !headers::crosses_edge(name)
            || connection_names[..named]
                .iter()
                .any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
        {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    headers::write_forwarded(out, Some(origin.client), origin.proto());
    let idempotent = matches!(
        method,
        "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "TRACE"
    );
    Examined::Plain(Head {
        len,
        body: body.unwrap_or(0),
        method: offset(buf, method.as_bytes()),
        target: offset(buf, target.as_bytes()),
        authorization,
        idempotent,
        is_head: method == "HEAD",
        close,
    })
}

/// An answer of the edge's own: a status, no body.
struct Refusal {
    status: u16,
    retry_after: Option<u64>,
    close: bool,
}

impl Refusal {
    fn new(status: u16) -> Refusal {
        Refusal {
            status,
            retry_after: None,
            close: false,
        }
    }
    fn closing(mut self) -> Refusal {
        self.close = true;
        self
    }
    fn retry_after(mut self, seconds: u64) -> Refusal {
        self.retry_after = Some(seconds);
        self
    }
    fn write(&self, out: &mut Vec<u8>) {
        use std::io::Write as _;
        let reason = http::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        // Writing into a Vec cannot fail.
        let _ = write!(out, "HTTP/1.1 {} {reason}\r\n", self.status);
        if let Some(seconds) = self.retry_after {
            let _ = write!(out, "retry-after: {seconds}\r\n");
        } else {
            out.extend_from_slice(b"cache-control: private, no-store\r\n");
        }
        out.extend_from_slice(b"content-length: 0\r\n");
        if self.close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

async fn answer(conn: &mut ClientConn, refusal: Refusal) -> io::Result<()> {
    let mut out = Vec::with_capacity(128);
    refusal.write(&mut out);
    conn.write_all(&out).await?;
    conn.flush().await
}

/// One request's way to a node and its answer's way back.
struct Exchange<'a> {
    shared: &'a Shared,
    snapshot: &'a Snapshot,
    /// The request for the node: head and body.
    request: &'a [u8],
    idempotent: bool,
    head_request: bool,
    close_after: bool,
    /// A login's account, to count a 401 against.
    login: Option<u64>,
}

/// How a request ended.
struct Relayed {
    /// The status the player got (0: none).
    status: u16,
    node: Option<usize>,
    body_sent: usize,
    /// The player's connection can carry another request.
    keep_alive: bool,
}

/// How one attempt at one node went.
enum Attempt {
    /// The node answered; the answer went (or was going) to the player.
    Answered(Relayed),
    /// An idle connection had gone stale: try again on a new one, to the same node.
    Stale,
    /// The node took no connection.
    Refused(io::Error),
    /// The node failed before answering.
    Failed(io::Error),
    /// The node said nothing within `timeouts.upstream_read`: it may still be working on the
    /// request, so it goes nowhere else.
    Silent,
}

impl Exchange<'_> {
    async fn run(&self, conn: &mut ClientConn, from_node: &mut Vec<u8>) -> Relayed {
        let pool = &self.snapshot.pool;
        self.shared.retry_budget.record_request();
        let mut tried = Tried::default();
        let mut last: Option<usize> = None;
        loop {
            if let Some(i) = last {
                self.shared
                    .metrics
                    .upstream_retry(pool.nodes.get(i).map_or("none", |n| &n.config.name));
            }
            let Some(i) = pool.pick_round_robin(tried) else {
                return self.refuse(conn, Refusal::new(503), last).await;
            };
            tried.insert(i);
            last = Some(i);
            let node = &pool.nodes[i];
            let _in_flight = node.runtime.start_request();
            let mut attempt = self.attempt(conn, from_node, i, true).await;
            if matches!(attempt, Attempt::Stale) {
                attempt = self.attempt(conn, from_node, i, false).await;
            }
            match attempt {
                Attempt::Answered(relayed) => return relayed,
                Attempt::Stale => {}
                Attempt::Refused(e) => {
                    connect_failed(self.shared, node, &e);
                    // Nothing reached the node: any request may go to another one.
                    if within_retry_budget(self.shared) {
                        continue;
                    }
                }
                Attempt::Failed(e) => {
                    tracing::debug!(node = %node.config.name, error = %e, "request failed at its node");
                    if self.idempotent && within_retry_budget(self.shared) {
                        continue;
                    }
                }
                Attempt::Silent => {
                    tracing::debug!(node = %node.config.name, "node silent past timeouts.upstream_read");
                    return self.refuse(conn, Refusal::new(504), last).await;
                }
            }
            return self.refuse(conn, Refusal::new(502), last).await;
        }
    }

    async fn refuse(
        &self,
        conn: &mut ClientConn,
        refusal: Refusal,
        node: Option<usize>,
    ) -> Relayed {
        let refusal = if self.close_after {
            refusal.closing()
        } else {
            refusal
        };
        let status = refusal.status;
        let keep_alive = answer(conn, refusal).await.is_ok();
        Relayed {
            status,
            node,
            body_sent: 0,
            keep_alive,
        }
    }

    /// Send the request to node `i` on an idle connection (`reuse`) or a new one, and relay
    /// its answer.
    async fn attempt(
        &self,
        conn: &mut ClientConn,
        from_node: &mut Vec<u8>,
        i: usize,
        reuse: bool,
    ) -> Attempt {
        let node = &self.snapshot.pool.nodes[i];
        let address = node.runtime.address;
        let (mut upstream, reused) = match reuse.then(|| upstream_pool::take(address)).flatten() {
            Some(stream) => (stream, true),
            None => {
                let timeout = self.snapshot.config.timeouts.upstream_connect;
                match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
                    Ok(Ok(stream)) => {
                        let _ = stream.set_nodelay(true);
                        (stream, false)
                    }
                    Ok(Err(e)) => return Attempt::Refused(e),
                    Err(_) => {
                        return Attempt::Refused(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "connect timed out",
                        ))
                    }
                }
            }
        };
        from_node.clear();
        let silence = self.snapshot.config.timeouts.upstream_read;
        let head = tokio::time::timeout(
            silence,
            send_and_read_head(&mut upstream, self.request, from_node),
        )
        .await;
        let head = match head {
            Ok(Ok(head)) => head,
            Ok(Err(_)) if reused && from_node.is_empty() => return Attempt::Stale,
            Ok(Err(e)) => return Attempt::Failed(e),
            Err(_) => return Attempt::Silent,
        };
        if let Some(account) = self.login {
            if head.status == 401 {
                self.snapshot.limits.logins.failed(account);
            }
        }
        let framing = if self.head_request || matches!(head.status, 204 | 304) {
            Framing::Length(0)
        } else {
            head.framing
        };
        // A shutdown that began while the node worked closes the connection after this answer
        // too, rather than leaving it idle until halfway through the grace period.
        let keep_client = !self.close_after
            && !self.shared.shutting_down.load(Ordering::Relaxed)
            && !matches!(framing, Framing::Close);
        // The player's head: the node's, less its hop-by-hop headers.
        let mut out = node_buffer::take();
        write_response_head(&from_node[..head.len], &mut out, !keep_client);
        let relayed = relay_body(
            conn,
            &mut upstream,
            from_node,
            head.len,
            framing,
            &mut out,
            silence,
        )
        .await;
        node_buffer::give_back(out);
        let (body_sent, body_end) = match relayed {
            Ok(relayed) => relayed,
            Err(e) => {
                tracing::debug!(node = %node.config.name, error = %e, "response cut off");
                return Attempt::Answered(Relayed {
                    status: head.status,
                    node: Some(i),
                    body_sent: 0,
                    keep_alive: false,
                });
            }
        };
        if head.reusable && body_end == from_node.len() {
            upstream_pool::put(address, upstream);
        }
        Attempt::Answered(Relayed {
            status: head.status,
            node: Some(i),
            body_sent,
            keep_alive: keep_client,
        })
    }
}

/// A node's response head, read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// Bytes of the head at the start of the buffer.
    pub len: usize,
    /// How its body ends.
    pub framing: Framing,
    /// HTTP/1.1 without `Connection: close`: the connection may carry another request.
    pub reusable: bool,
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// After this many bytes.
    Length(usize),
    /// In chunks, up to the last one and its trailers.
    Chunked,
    /// At the node's close.
    Close,
}

fn bad_answer(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// Send `request` and read the node's response head into `buf` (interim 1xx answers
/// dropped).
async fn send_and_read_head(
    upstream: &mut TcpStream,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> io::Result<ResponseHead> {
    upstream.write_all(request).await?;
    loop {
        buf.reserve(NODE_READ);
        if upstream.read_buf(buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "node closed before answering",
            ));
        }
        loop {
            match parse_response_head(buf)? {
                None if buf.len() > MAX_RESPONSE_HEAD => {
                    return Err(bad_answer("node's response head too large"))
                }
                None => break,
                Some(head) if (100..200).contains(&head.status) => {
                    if head.status == 101 {
                        return Err(bad_answer("101 to a request that asked no upgrade"));
                    }
                    buf.drain(..head.len);
                }
                Some(head) => return Ok(head),
            }
        }
    }
}

pub fn parse_response_head(buf: &[u8]) -> io::Result<Option<ResponseHead>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(bad_answer("node's response head does not parse")),
    };
    let status = resp
        .code
        .filter(|code| (100..1000).contains(code))
        .ok_or_else(|| bad_answer("no status, or one under 100"))?;
    let mut framing = Framing::Close;
    let mut reusable = resp.version == Some(1);
    let mut length = None;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| bad_answer("node's content-length does not parse"))?;
            if length.is_some_and(|m| m != n) {
                return Err(bad_answer("node sent two content-lengths"));
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            framing = match h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .map(<[u8]>::trim_ascii)
            {
                Some(last) if last.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
                _ => Framing::Close,
            };
        } else if h.name.eq_ignore_ascii_case("connection")
            && h.value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
        {
            reusable = false;
        }
    }
    let has_te = resp
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
    if !has_te {
        if let Some(n) = length {
            framing = Framing::Length(n);
        }
    } else if length.is_some() {
        // Both: Transfer-Encoding wins (RFC 9112 §6.3), and the connection is not reused.
        reusable = false;
    }
    if framing == Framing::Close {
        reusable = false;
    }
    Ok(Some(ResponseHead {
        status,
        len,
        framing,
        reusable,
    }))
}

/// The player's response head from the node's `head`: its status and reason, every header
/// but the hop-by-hop ones (`Connection` and those it names, `Keep-Alive`, ...), and
/// `Connection: close` when the player's connection ends after it.
pub fn write_response_head(head: &[u8], out: &mut Vec<u8>, close: bool) {
    use std::io::Write as _;
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    // Parsed once already.
    let _ = resp.parse(head);
    // The status line from its parts: the node's may follow empty lines, or lack a reason.
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\n",
        resp.code.unwrap_or(502),
        resp.reason.unwrap_or("")
    );
    let connection_names = resp
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"));
    for h in resp.headers.iter() {
        if headers::is_hop_by_hop(h.name)
            || connection_names.clone().any(|c| {
                c.value
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(h.name.as_bytes()))
            })
        {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Relay the body after the head (`from_node[head_len..]` holds its start) to the player,
/// `out` (the player's head) first, in the same write when the body is already here.
/// Returns the body bytes sent (a chunked body's framing included) and where the body ended
/// in `from_node`. A node silent for `silence` between two reads cuts the body off.
async fn relay_body(
    conn: &mut ClientConn,
    upstream: &mut TcpStream,
    from_node: &mut Vec<u8>,
    head_len: usize,
    framing: Framing,
    out: &mut Vec<u8>,
    silence: Duration,
) -> io::Result<(usize, usize)> {
    let mut chunks = ChunkScan::default();
    let mut sent = 0usize;
    let mut start = head_len;
    loop {
        let here = &from_node[start..];
        // How much of what is here belongs to the body, and whether it is complete.
        let (take, done) = match framing {
            Framing::Length(n) => {
                let take = (n - sent).min(here.len());
                (take, sent + take == n)
            }
            Framing::Chunked => match chunks.advance(here)? {
                Some(end) => (end, true),
                None => (here.len(), false),
            },
            Framing::Close => (here.len(), false),
        };
        if out.is_empty() {
            conn.write_all(&here[..take]).await?;
        } else {
            out.extend_from_slice(&here[..take]);
            conn.write_all(out).await?;
            out.clear();
        }
        sent += take;
        if done {
            conn.flush().await?;
            return Ok((sent, start + take));
        }
        // More to come from the node.
        from_node.clear();
        start = 0;
        from_node.reserve(NODE_READ);
        let read = tokio::time::timeout(silence, upstream.read_buf(from_node))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    "node silent mid-body past timeouts.upstream_read",
                )
            })?;
        if read? == 0 {
            if framing == Framing::Close {
                conn.flush().await?;
                return Ok((sent, 0));
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "node closed mid-body",
            ));
        }
    }
}

/// Where a chunked body ends, found as its bytes go by (RFC 9112 §7.1): chunk sizes
/// (extensions ignored), chunk data, the last chunk, trailers, the final empty line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ChunkScan {
    state: ChunkState,
    /// Bytes of chunk data still to come, or the size being read.
    remaining: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading the hex size.
    #[default]
    Size,
    /// After the size: an extension, up to the line's end.
    Extension,
    /// Chunk data.
    Data,
    /// The CRLF after chunk data.
    DataEnd,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Within a trailer line.
    Trailer,
    /// The final line's LF (after its CR).
    FinalLf,
}

impl ChunkScan {
    /// Go over `bytes`; `Ok(Some(n))`: the body ends after the first `n` of them.
    pub fn advance(&mut self, bytes: &[u8]) -> io::Result<Option<usize>> {
        let bad = || bad_answer("node's chunked body does not parse");
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match self.state {
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let digit = (b as char).to_digit(16).unwrap_or(0) as u64;
                        self.remaining = self
                            .remaining
                            .checked_mul(16)
                            .and_then(|r| r.checked_add(digit))
                            .filter(|&r| r < 1 << 40)
                            .ok_or_else(bad)?;
                    }
                    b';' | b' ' | b'\t' | b'\r' => self.state = ChunkState::Extension,
                    b'\n' => self.end_size_line(),
                    _ => return Err(bad()),
                },
                ChunkState::Extension => {
                    if b == b'\n' {
                        self.end_size_line();
                    }
                }
                ChunkState::Data => {
                    let n = (self.remaining as usize).min(bytes.len() - i);
                    self.remaining -= n as u64;
                    i += n;
                    if self.remaining == 0 {
                        self.state = ChunkState::DataEnd;
                    }
                    continue;
                }
                ChunkState::DataEnd => match b {
                    b'\r' => {}
                    b'\n' => self.state = ChunkState::Size,
                    _ => return Err(bad()),
                },
                ChunkState::TrailerStart => match b {
                    b'\r' => self.state = ChunkState::FinalLf,
                    b'\n' => return Ok(Some(i + 1)),
                    _ => self.state = ChunkState::Trailer,
                },
                ChunkState::Trailer => {
                    if b == b'\n' {
                        self.state = ChunkState::TrailerStart;
                    }
                }
                ChunkState::FinalLf => {
                    if b == b'\n' {
                        return Ok(Some(i + 1));
                    }
                    return Err(bad());
                }
            }
            i += 1;
        }
        Ok(None)
    }

    fn end_size_line(&mut self) {
        self.state = if self.remaining == 0 {
            ChunkState::TrailerStart
        } else {
            ChunkState::Data
        };
    }
}

/// What a request's counters and access-log line are made of, besides its outcome.
struct Books<'a> {
    shared: &'a Shared,
    snapshot: &'a Snapshot,
    origin: &'a Arrival,
    tls: &'static str,
    started: Instant,
}

impl Books<'_> {
    /// Count the request (per status code, route and node; bytes) and write its access-log
    /// line. `buf` holds its head, `head` says where (`None`: no head was read whole).
    fn close(
        &self,
        buf: &[u8],
        head: Option<&Head>,
        status: u16,
        node: &str,
        received: usize,
        sent: usize,
    ) {
        let elapsed = self.started.elapsed();
        let seconds = elapsed.as_secs_f64();
        let metrics = &self.shared.metrics;
        metrics.request(status, Route::Api, node, seconds);
        metrics.bytes(Route::Api, received, sent);
        if self.snapshot.config.log.access_log {
            let (method, path) = head.map_or(("-", "-"), |h| (h.method(buf), h.path(buf)));
            logging::access(
                Some(self.origin.client),
                method,
                path,
                status,
                Route::Api.as_str(),
                node,
                logging::millis(elapsed),
                received,
                sent,
                self.tls,
                "http/1.1",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_whole(body: &[u8]) -> io::Result<Option<usize>> {
        ChunkScan::default().advance(body)
    }

    #[test]
    fn chunked_bodies_end_where_their_last_chunk_and_trailers_do() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nNEXT";
        assert_eq!(scan_whole(body).unwrap(), Some(body.len() - 4));
        let trailers = b"3\r\nabc\r\n0\r\nx-trailer: 1\r\n\r\n";
        assert_eq!(scan_whole(trailers).unwrap(), Some(trailers.len()));
        let bare_lf = b"3\nabc\n0\n\n";
        assert_eq!(scan_whole(bare_lf).unwrap(), Some(bare_lf.len()));
        assert_eq!(scan_whole(b"5\r\nhel").unwrap(), None);
        assert!(scan_whole(b"zz\r\n").is_err());
        assert!(scan_whole(b"3\r\nabcX").is_err());
        assert!(scan_whole(b"ffffffffffffffffff\r\n").is_err());
        // Split anywhere, the end is found at the same place.
        for split in 0..body.len() {
            let mut scan = ChunkScan::default();
            let first = scan.advance(&body[..split]).unwrap();
            let end = match first {
                Some(end) => end,
                None => split + scan.advance(&body[split..]).unwrap().unwrap(),
            };
            assert_eq!(end, body.len() - 4, "split at {split}");
        }
    }

    #[test]
    fn response_heads_say_how_their_bodies_end() {
        let head = |text: &str| parse_response_head(text.as_bytes()).unwrap().unwrap();
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello");
        assert_eq!(
            (h.status, h.framing, h.reusable),
            (200, Framing::Length(5), true)
        );
        assert_eq!(h.len, 38);
        let h = head("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n");
        assert_eq!((h.framing, h.reusable), (Framing::Chunked, true));
        let h = head("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n");
        assert_eq!((h.framing, h.reusable), (Framing::Length(1), false));
        let h = head("HTTP/1.0 200 OK\r\n\r\n");
        assert_eq!((h.framing, h.reusable), (Framing::Close, false));
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n");
        assert_eq!((h.framing, h.reusable), (Framing::Chunked, false));
        assert!(parse_response_head(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n"
        )
        .is_err());
        assert!(parse_response_head(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n").is_err());
        assert!(parse_response_head(b"HTTP/1.1 000 OK\r\n\r\n").is_err());
        assert!(parse_response_head(b"HTTP/1.1 200 OK\r\n")
            .unwrap()
            .is_none());
    }

    #[test]
    fn the_players_head_keeps_the_status_line_and_loses_hop_by_hop_headers() {
        let mut out = Vec::new();
        write_response_head(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\nConnection: keep-alive, x-secret\r\nKeep-Alive: timeout=5\r\nX-Secret: 1\r\nGrpc-Status: 5\r\n\r\n",
            &mut out,
            false,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\nGrpc-Status: 5\r\n\r\n"
        );
        let mut out = Vec::new();
        // Empty lines before the status line (which httparse allows), and no reason phrase.
        write_response_head(b"\n\nHTTP/1.1 404\n\n", &mut out, false);
        assert_eq!(String::from_utf8(out).unwrap(), "HTTP/1.1 404 \r\n\r\n");
        let mut out = Vec::new();
        write_response_head(b"HTTP/1.1 200 OK\r\n\r\n", &mut out, true);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n"
        );
    }
}

//! The request path: pingora's `ProxyHttp` hooks, from a player's request to a Nakama node.
//!
//! ```text
//!   request_filter ── classify ──► Acme/Redirect: answered here
//!        │            WebSocket upgrade (HTTP/1.1): the edge's own path, see `tunnel`
//!        │            a body: read in full first, within timeouts.request_body (else 408),
//!        │            so that a slow client never holds a node connection
//!        │
//!   upstream_peer ── WebSocket: hash ring on the user id (else client IP)
//!        │           gRPC: round-robin over nodes with a gRPC address
//!        │           API: weighted round-robin
//!   upstream_request_filter ── X-Forwarded-For replaced, client-IP headers removed
//!        │
//!   fail_to_connect / error_while_proxy ── node out at once on refusal; retry elsewhere when
//!        │                                  nothing was answered yet
//!   upstream_response_filter ── 101: a WebSocket opens, counted on its node
//!        │
//!   logging ── per-status-code counters and durations
//! ```

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::header;
use nakama_edge_config::StickyKey;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{ProxyHttp, ProxyWarnLogContext, Session};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::client_conn::{ClientConn, MAX_HEAD_BYTES};
use crate::firewall::canonical;
use crate::headers;
use crate::limits::{client_key, is_auth_path, retry_after_secs, Limited, MessageBudget};
use crate::logging;
use crate::metrics::{InFlight, RejectReason};
use crate::pool::{Counted, Node, Tried};
use crate::route::{classify, Listener, Route, ACME_CHALLENGE_PREFIX};
use crate::state::{Shared, Snapshot};
use crate::token;
use crate::tunnel;
use crate::ws_close::{Frames, GOING_AWAY, POLICY_VIOLATION};

/// The proxy logic of one listener.
pub struct Edge {
    shared: Arc<Shared>,
    listener: Listener,
}

impl Edge {
    /// The proxy of `listener`.
    pub fn new(shared: Arc<Shared>, listener: Listener) -> Self {
        Edge { shared, listener }
    }
}

/// Per-request state.
pub struct Ctx {
    snapshot: Arc<Snapshot>,
    started: Instant,
    route: Route,
    node: Option<usize>,
    tried: Tried,
    in_flight: Option<Counted>,
    websocket: Option<Counted>,
    /// When the node's response header arrived: nothing is retried after it.
    answered_at: Option<Instant>,
    /// Where the request's body is.
    body: Body,
    /// Request body bytes seen so far.
    body_bytes: u64,
    /// The status the edge's own WebSocket path answered with (pingora's session did not).
    tunneled: Option<u16>,
    /// The account of a login, to count a failure (401) against.
    login: Option<u64>,
    _counted: InFlight,
}

/// Where a request's body is, as far as the edge is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// None, or not the edge's business (a route that is not proxied to a node).
    Untouched,
    /// Read in full before a node was picked; pingora sends it from memory.
    ReadFirst,
    /// Sent on to the node as it arrives, as it must be complete by `deadline`: an HTTP/2 body
    /// of unknown length or over [`RETRY_BUFFER_BYTES`], which pingora cannot hold.
    Streamed { deadline: Instant },
}

impl Ctx {
    fn node_name(&self) -> &str {
        self.node
            .and_then(|i| self.snapshot.pool.nodes.get(i))
            .map_or("none", |n| n.config.name.as_str())
    }
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| canonical(a.ip()))
}

fn status_error(code: u16, why: &'static str) -> Box<Error> {
    Error::explain(ErrorType::HTTPStatus(code), why)
}

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            snapshot: self.shared.snapshot(),
            started: Instant::now(),
            route: Route::Api,
            node: None,
            tried: Tried::default(),
            in_flight: None,
            websocket: None,
            answered_at: None,
            body: Body::Untouched,
            body_bytes: 0,
            tunneled: None,
            login: None,
            _counted: self.shared.metrics.request_started(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let snapshot = ctx.snapshot.clone();
        let config = &snapshot.config;
        ctx.route = classify(
            session.req_header(),
            self.listener,
            config.listeners.http_redirect,
            &config.routing.websocket_path,
        );
        if let Some(limited) = self.over_rate_limit(session, ctx) {
            return limited.respond(session).await;
        }
        if matches!(ctx.route, Route::Api | Route::Grpc | Route::Console) {
            read_body_first(session, ctx).await?;
            if let Some(limited) = self.over_login_failures(session, ctx) {
                return limited.respond(session).await;
            }
        }
        match ctx.route {
            Route::Acme => {
                let path = session.req_header().uri.path();
                let answer = self
                    .shared
                    .certs
                    .challenges()
                    .http01(path.trim_start_matches(ACME_CHALLENGE_PREFIX));
                match answer {
                    Some(key_authorization) => {
                        let body = Bytes::from(key_authorization);
                        let mut resp = ResponseHeader::build(200, Some(2))?;
                        resp.insert_header(header::CONTENT_TYPE, "application/octet-stream")?;
                        resp.insert_header(header::CONTENT_LENGTH, body.len())?;
                        session.write_response_header(Box::new(resp), false).await?;
                        session.write_response_body(Some(body), true).await?;
                        tracing::info!("HTTP-01 validation request answered");
                    }
                    None => session.respond_error(404).await?,
                }
                Ok(true)
            }
            Route::Redirect => {
                let https_port = config.listeners.https.map_or(443, |a| a.port());
                match redirect_location(session.req_header(), https_port) {
                    Some(location) => {
                        let mut resp = ResponseHeader::build(308, Some(2))?;
                        resp.insert_header(header::LOCATION, location)?;
                        resp.insert_header(header::CONTENT_LENGTH, "0")?;
                        session.write_response_header(Box::new(resp), true).await?;
                    }
                    None => session.respond_error(400).await?,
                }
                Ok(true)
            }
            Route::WebSocket if is_tunnelable(session) => {
                self.upgrade_websocket(session, ctx).await
            }
            _ => Ok(false),
        }
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let snapshot = ctx.snapshot.clone();
        let pool = &snapshot.pool;
        if ctx.node.is_some() {
            // A retry: the previous node failed this request.
            self.shared.metrics.upstream_retry(ctx.node_name());
        } else {
            self.shared.retry_budget.record_request();
        }
        let picked = match ctx.route {
            Route::WebSocket => pick_sticky(session, &snapshot, ctx.tried),
            Route::Grpc => pool.pick_grpc(ctx.tried),
            Route::Console => pool.pick_console(ctx.tried),
            _ => pool.pick_round_robin(ctx.tried),
        };
        let Some(i) = picked else {
            ctx.node = None;
            ctx.in_flight = None;
            return Err(status_error(503, "no routable Nakama node"));
        };
        let node = &pool.nodes[i];
        ctx.tried.insert(i);
        ctx.node = Some(i);
        ctx.in_flight = Some(node.runtime.start_request());
        let peer = match (ctx.route, &node.grpc_peer, &node.console_peer) {
            (Route::Grpc, Some(grpc), _) => grpc,
            (Route::Console, _, Some(console)) => console,
            _ => &node.http_peer,
        };
        Ok(Box::new(peer.clone()))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        headers::strip_request(upstream, ctx.route == Route::Grpc);
        if ctx.body == Body::ReadFirst {
            // The player was told to go on (100 Continue) and the body is here already.
            upstream.remove_header(&header::EXPECT);
        }
        if let Some(ip) = client_ip(session) {
            upstream.insert_header("x-forwarded-for", ip.to_string())?;
        }
        upstream.insert_header("x-forwarded-proto", self.forwarded_proto())?;
        // HTTP/2 clients send :authority instead of Host; an HTTP/1.1 node needs Host.
        if upstream.headers.get(header::HOST).is_none() {
            if let Some(authority) = upstream.uri.authority().map(|a| a.as_str().to_owned()) {
                upstream.insert_header(header::HOST, authority)?;
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.answered_at = Some(Instant::now());
        headers::strip_response(upstream);
        // A shutdown that began while the node worked closes this connection after the answer
        // (early_request_filter saw the process as it was when the request came).
        if self.shared.shutting_down.load(Ordering::Relaxed)
            && upstream.status != http::StatusCode::SWITCHING_PROTOCOLS
        {
            session.set_keepalive(None);
        }
        if let Some(account) = ctx.login {
            if upstream.status == http::StatusCode::UNAUTHORIZED {
                ctx.snapshot.limits.logins.failed(account);
            }
        }
        if upstream.status == http::StatusCode::SWITCHING_PROTOCOLS && ctx.route == Route::WebSocket
        {
            if let Some(node) = ctx.node.and_then(|i| ctx.snapshot.pool.nodes.get(i)) {
                ctx.websocket = Some(node.runtime.open_websocket());
            }
            if let Some(conn) = session.as_downstream().stream().and_then(ClientConn::of) {
                conn.enter_websocket(self.shared.snapshot().config.timeouts.websocket_idle);
                self.shared.websockets.add(conn.closer());
            }
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        match ctx.body {
            // Counted and bounded as it was read.
            Body::ReadFirst => {}
            _ if ctx.websocket.is_some() => {}
            Body::Streamed { deadline } if Instant::now() > deadline => {
                refuse_unread_body(session);
                return Err(status_error(
                    408,
                    "request body not complete within timeouts.request_body",
                ));
            }
            _ => {
                // Chunked bodies announce no length: count them as they stream.
                ctx.body_bytes += body.as_ref().map_or(0, |b| b.len() as u64);
                if ctx.body_bytes > MAX_BODY_BYTES {
                    return Err(status_error(413, "request body over 256 KiB"));
                }
            }
        }
        self.close_if_drain_expired(session, ctx)
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        if let Some(conn) = session.as_downstream().stream().and_then(ClientConn::of) {
            conn.start_proxying();
        }
        if let Err(code) = head_is_acceptable(session.req_header()) {
            refuse_unread_body(session);
            return Err(status_error(code, "request refused before proxying"));
        }
        // HTTP/1.1 keep-alive idle time (HTTP/2's is the server option h2_idle_timeout); none
        // once this process is shutting down or handing over: the answer says
        // `Connection: close`, and the client's next request goes to a new connection.
        if self.shared.shutting_down.load(Ordering::Relaxed) {
            session.set_keepalive(None);
        } else {
            session.set_keepalive(Some(
                ctx.snapshot.config.timeouts.http_idle.as_secs().max(1),
            ));
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        self.close_if_drain_expired(session, ctx).map(|()| None)
    }

    /// What pingora's own error lines say about a request: method and path, never the query
    /// (session tokens and `http_key` travel there) or a header.
    fn request_summary(&self, session: &Session, _ctx: &Ctx) -> String {
        let req = session.req_header();
        format!("{} {}", req.method, req.uri.path())
    }

    /// A request that ended on an error shows in the access log and the per-code counters; an
    /// operator acts on nodes, which the edge logs itself (refused, out of rotation). So the
    /// line is at debug, not pingora's ERROR.
    fn suppress_error_log(&self, session: &Session, ctx: &Ctx, error: &Error) -> bool {
        tracing::debug!(node = ctx.node_name(), request = %self.request_summary(session, ctx), %error, "request failed");
        true
    }

    /// A retry is counted (`nakama_edge_upstream_retries_total`): a debug line, not a warning.
    fn suppress_proxy_warn_log(
        &self,
        session: &Session,
        ctx: &Ctx,
        error: &Error,
        _context: ProxyWarnLogContext,
    ) -> bool {
        tracing::debug!(node = ctx.node_name(), request = %self.request_summary(session, ctx), %error, "request retried on another node");
        true
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(node) = ctx.node.and_then(|i| ctx.snapshot.pool.nodes.get(i)) {
            self.connect_failed(node, &e);
        }
        // Nothing reached the node, so any request may go to another one, budget permitting.
        e.set_retry(self.within_retry_budget());
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        _client_reused: bool,
    ) -> Box<Error> {
        if *e.etype() == ErrorType::ReadTimedout && *e.esource() == ErrorSource::Upstream {
            // The node may still be working on it: 504, and not sent to another node.
            let mut e = Error::because(
                ErrorType::HTTPStatus(504),
                format!(
                    "node {} silent past timeouts.upstream_read",
                    ctx.node_name()
                ),
                e,
            );
            e.set_retry(false);
            return e;
        }
        let mut e = e.more_context(format!("node {} at {peer}", ctx.node_name()));
        // A request may be sent again only if the node failed it (not the player, who may
        // have cancelled it or gone away) before it started answering, it is idempotent, its
        // body (if any) can be replayed in full, and the retry budget allows.
        let retry = *e.esource() == ErrorSource::Upstream
            && ctx.answered_at.is_none()
            && session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated()
            && self.within_retry_budget();
        e.set_retry(retry);
        e
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let code = ctx
            .tunneled
            .or_else(|| session.response_written().map(|r| r.status.as_u16()))
            .unwrap_or(0);
        // A WebSocket's duration is the time to its upgrade, not its lifetime.
        let end = match (ctx.route, ctx.answered_at) {
            (Route::WebSocket, Some(at)) => at,
            _ => Instant::now(),
        };
        let seconds = end.duration_since(ctx.started).as_secs_f64();
        let metrics = &self.shared.metrics;
        metrics.request(code, ctx.route, ctx.node_name(), seconds);
        let (received, sent) = (session.body_bytes_read(), session.body_bytes_sent());
        metrics.bytes(ctx.route, received, sent);
        if ctx.websocket.is_some() {
            if let Some(upgraded) = ctx.answered_at {
                metrics.websocket_closed(upgraded.elapsed().as_secs_f64());
            }
        }
        if ctx.snapshot.config.log.access_log {
            let req = session.req_header();
            let tls = session
                .digest()
                .and_then(|d| d.ssl_digest.as_ref())
                .map_or("none", |d| logging::tls_version(d));
            let alpn = if session.is_http2() { "h2" } else { "http/1.1" };
            logging::access(
                client_ip(session),
                req.method.as_str(),
                req.uri.path(),
                code,
                ctx.route.as_str(),
                ctx.node_name(),
                logging::millis(ctx.started.elapsed()),
                received,
                sent,
                tls,
                alpn,
            );
        }
        ctx.websocket = None;
        ctx.in_flight = None;
        if let Some(conn) = session.as_downstream().stream().and_then(ClientConn::of) {
            conn.await_next_request(ctx.snapshot.config.timeouts.request_header);
        }
    }
}

impl Edge {
    /// WebSockets on a draining node are closed once `routing.drain_timeout` has passed. The
    /// check runs on every frame in either direction; Nakama pings every 15 s, so an expired
    /// socket is closed within seconds of its deadline.
    fn close_if_drain_expired(&self, session: &Session, ctx: &Ctx) -> Result<()> {
        let Some(_) = ctx.websocket else {
            return Ok(());
        };
        let Some(node) = ctx.node.and_then(|i| ctx.snapshot.pool.nodes.get(i)) else {
            return Ok(());
        };
        let drain_timeout = self.shared.snapshot().config.routing.drain_timeout;
        if node.runtime.drain_expired(drain_timeout) {
            // A close frame ("going away"), so the client reconnects at once, to a node that
            // is not draining.
            match session.as_downstream().stream().and_then(ClientConn::of) {
                Some(conn) => conn.closer().request(GOING_AWAY),
                None => {
                    return Err(Error::explain(
                        ErrorType::ConnectionClosed,
                        "node drained: drain_timeout passed",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// How long a node has to answer a WebSocket upgrade once connected.
const UPGRADE_ANSWER: Duration = Duration::from_secs(10);

/// The node for a WebSocket: the hash ring on the session's user id, else on the client IP.
fn pick_sticky(session: &Session, snapshot: &Snapshot, tried: Tried) -> Option<usize> {
    let req = session.req_header();
    let user = match snapshot.config.routing.sticky_key {
        StickyKey::User => token::session_token(
            req.uri.query(),
            req.headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()),
        )
        .and_then(token::user_id),
        StickyKey::ClientIp => None,
    };
    match user {
        Some(uid) => snapshot.pool.pick_sticky(uid.as_bytes(), tried),
        None => {
            let mut buf = [0u8; 16];
            snapshot
                .pool
                .pick_sticky(ip_key(client_ip(session), &mut buf), tried)
        }
    }
}

/// An HTTP/1.1 upgrade with no body: what the edge's own WebSocket path carries. Anything else
/// on the WebSocket route (HTTP/2, a body) goes through pingora's proxy.
fn is_tunnelable(session: &Session) -> bool {
    let req = session.req_header();
    !session.is_http2()
        && !req.headers.contains_key(header::CONTENT_LENGTH)
        && !req.headers.contains_key(header::TRANSFER_ENCODING)
}

impl Edge {
    fn forwarded_proto(&self) -> &'static str {
        match self.listener {
            Listener::Https | Listener::Console => "https",
            Listener::Http => "http",
        }
    }

    fn within_retry_budget(&self) -> bool {
        within_retry_budget(&self.shared)
    }

    fn connect_failed(&self, node: &Node, e: &dyn std::fmt::Display) {
        connect_failed(&self.shared, node, e)
    }

    /// A WebSocket upgrade, carried by the edge's own path (`tunnel.rs`) rather than by
    /// pingora's proxy session, which would hold ~80 KiB per idle socket. The node is picked
    /// as `upstream_peer` would; a node that refuses the connection, or fails before answering,
    /// is passed over for the next. A refusal (any answer but 101) is answered through the
    /// session; a 101 hands the client's stream to a splice task. `Ok(true)`: answered.
    async fn upgrade_websocket(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let snapshot = ctx.snapshot.clone();
        let client = client_ip(session);
        let head = tunnel::request_head(session.req_header(), client, self.forwarded_proto());
        self.shared.retry_budget.record_request();
        let (i, mut stream, mut answer) = loop {
            if ctx.node.is_some() {
                if !self.within_retry_budget() {
                    return Err(status_error(502, "the retry budget is spent"));
                }
                self.shared.metrics.upstream_retry(ctx.node_name());
            }
            let Some(i) = pick_sticky(session, &snapshot, ctx.tried) else {
                ctx.node = None;
                ctx.in_flight = None;
                return Err(status_error(503, "no routable Nakama node"));
            };
            let node = &snapshot.pool.nodes[i];
            ctx.tried.insert(i);
            ctx.node = Some(i);
            ctx.in_flight = Some(node.runtime.start_request());
            let connect = TcpStream::connect(node.runtime.address);
            let mut stream = match tokio::time::timeout(
                snapshot.config.timeouts.upstream_connect,
                connect,
            )
            .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    self.connect_failed(node, &e);
                    continue;
                }
                Err(_) => {
                    self.connect_failed(node, &"connect timed out");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let asked = async {
                stream.write_all(&head).await?;
                tunnel::read_answer(&mut stream).await
            };
            match tokio::time::timeout(UPGRADE_ANSWER, asked).await {
                Ok(Ok(answer)) => break (i, stream, answer),
                Ok(Err(e)) => {
                    tracing::warn!(node = %node.config.name, error = %e, "node failed a WebSocket upgrade before answering; trying another");
                }
                Err(_) => {
                    tracing::warn!(node = %node.config.name, "node did not answer a WebSocket upgrade in time; trying another");
                }
            }
        };
        ctx.answered_at = Some(Instant::now());
        let node = &snapshot.pool.nodes[i];

        if answer.status != 101 {
            let body = answer.body(&mut stream).await.map_err(|e| {
                Error::explain(
                    ErrorType::HTTPStatus(502),
                    format!("node {}: {e}", node.config.name),
                )
            })?;
            session.set_keepalive(None);
            headers::strip_response(&mut answer.header);
            session
                .write_response_header(Box::new(answer.header), false)
                .await?;
            session.write_response_body(Some(body), true).await?;
            return Ok(true);
        }

        let mut client_stream = take_client_stream(session).await?;
        ctx.tunneled = Some(101);
        // Upgraded before the 101 goes out: the connection's frame tracker reads the head
        // first, and finds frame boundaries (where a close frame may go) only after it.
        let closer = ClientConn::of(&client_stream).map(|conn| {
            conn.enter_websocket(snapshot.config.timeouts.websocket_idle);
            self.shared.websockets.add(conn.closer());
            conn.closer().clone()
        });
        let opened = async {
            client_stream.write_all(&answer.raw_head).await?;
            client_stream.write_all(&answer.after_head).await?;
            client_stream.flush().await?;
            Ok::<_, std::io::Error>(())
        };
        if let Err(e) = opened.await {
            tracing::debug!(error = %e, "player left during the WebSocket upgrade");
            return Ok(true);
        }
        let websocket = node.runtime.open_websocket();
        let in_flight = ctx.in_flight.take();
        let runtime = node.runtime.clone();
        let shared = self.shared.clone();
        let limits = &snapshot.config.rate_limit;
        let mut budget = MessageBudget::new(
            limits.websocket_messages_per_second,
            limits.websocket_message_burst,
        );
        tokio::spawn(async move {
            let since = Instant::now();
            let drain_check = || {
                // WebSockets on a draining node close once routing.drain_timeout has passed;
                // checked on every frame either way (Nakama pings every 15 s).
                let drain_timeout = shared.snapshot().config.routing.drain_timeout;
                if runtime.drain_expired(drain_timeout) {
                    if let Some(closer) = &closer {
                        closer.request(GOING_AWAY);
                    }
                }
            };
            // The client's messages, counted as their frames begin, on their way through: over
            // the budget, the socket closes with 1008 and nothing more reaches the node.
            let mut frames = Frames::frames_only();
            let mut flooding = false;
            let admit = |data: &[u8]| {
                if flooding {
                    return false;
                }
                let began = frames.advance(data);
                if began == 0 || budget.spend(began, std::time::Instant::now()) {
                    return true;
                }
                flooding = true;
                shared.metrics.rejected(RejectReason::WebsocketFlood);
                tracing::debug!("a WebSocket sent more messages than its budget: closed with 1008");
                if let Some(closer) = &closer {
                    closer.request(POLICY_VIOLATION);
                }
                false
            };
            let (carried, ended) = tunnel::splice(client_stream, stream, drain_check, admit).await;
            if let Err(e) = ended {
                tracing::debug!(error = %e, "WebSocket ended on an error");
            }
            let metrics = &shared.metrics;
            metrics.websocket_closed(since.elapsed().as_secs_f64());
            metrics.bytes(
                Route::WebSocket,
                usize::try_from(carried.to_node).unwrap_or(usize::MAX),
                usize::try_from(carried.to_client).unwrap_or(usize::MAX),
            );
            drop((websocket, in_flight));
        });
        Ok(true)
    }
}

/// Whether a failed request may go to another node: within the retry budget (counted when
/// not).
pub(crate) fn within_retry_budget(shared: &Shared) -> bool {
    let within = shared.retry_budget.try_retry();
    if !within {
        shared.metrics.retry_over_budget();
    }
    within
}

/// A node refused (or did not take) a connection: counted, and out of rotation at once.
pub(crate) fn connect_failed(shared: &Shared, node: &Node, e: &dyn std::fmt::Display) {
    shared.metrics.upstream_connect_failure(&node.config.name);
    if node.runtime.mark_refused() {
        tracing::warn!(node = %node.config.name, error = %e, "node refused a connection: out of rotation until it passes health checks");
    }
}

/// Take the client's stream out of pingora's session, leaving a [`tunnel::Replay`] of the same
/// request in its place, so that pingora finishes and logs the request as usual.
async fn take_client_stream(session: &mut Session) -> Result<Stream> {
    let raw = session.as_downstream().to_h1_raw();
    let Some(stream) = session.as_downstream().stream() else {
        return Err(status_error(500, "no client stream to upgrade"));
    };
    let replay: Stream = Box::new(tunnel::Replay::new(raw, stream));
    let mut stand_in = ServerSession::new_http1(replay);
    stand_in.read_request().await?;
    stand_in.set_keepalive(None);
    let taken = std::mem::replace(&mut session.downstream_session, Box::new(stand_in));
    match *taken {
        ServerSession::H1(v1) => Ok(v1.into_inner()),
        other => {
            *session.downstream_session = other;
            Err(status_error(500, "only HTTP/1.1 upgrades are carried"))
        }
    }
}

/// The answer about to go out refuses a request whose body has not been read in full: the
/// connection closes after it, reading and dropping the rest of the body first so that the
/// client reads the answer rather than a reset ([`ClientConn::linger_on_close`]).
fn refuse_unread_body(session: &mut Session) {
    session.set_keepalive(None);
    if let Some(conn) = session.as_downstream().stream().and_then(ClientConn::of) {
        conn.linger_on_close();
    }
}

/// Nakama refuses bodies over 256 KiB; the edge refuses them first, with 413.
pub(crate) const MAX_BODY_BYTES: u64 = 256 * 1024;

/// The body pingora's session keeps for a retry and sends from memory (its private
/// `BODY_BUF_LIMIT`). Bodies up to this size are read first on HTTP/1.1 and HTTP/2 alike.
pub(crate) const RETRY_BUFFER_BYTES: u64 = 64 * 1024;

/// Read a request's body in full before a node is picked, as nginx buffers requests: a client
/// that trickles its body holds no node connection, and must finish within
/// `timeouts.request_body` (else 408, and the connection closes). HTTP/1.1 bodies of any size
/// (up to 256 KiB) and HTTP/2 bodies of a declared length up to [`RETRY_BUFFER_BYTES`] are read
/// here; other HTTP/2 bodies stream to the node under the same deadline ([`Body::Streamed`]).
async fn read_body_first(session: &mut Session, ctx: &mut Ctx) -> Result<()> {
    if session.as_downstream_mut().is_body_empty() {
        return Ok(());
    }
    let deadline = Instant::now() + ctx.snapshot.config.timeouts.request_body;
    let req = session.req_header();
    let length = req
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let fits_retry_buffer = length.is_some_and(|n| n <= RETRY_BUFFER_BYTES);
    if session.is_http2() && !fits_retry_buffer {
        ctx.body = Body::Streamed { deadline };
        return Ok(());
    }
    let expects_continue = req
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let downstream = session.as_downstream_mut();
    if expects_continue && !downstream.is_http2() {
        downstream
            .write_response_header(Box::new(ResponseHeader::build(100, Some(0))?))
            .await?;
    }
    downstream.enable_retry_buffering();
    // What pingora's retry buffer cannot hold is kept here, to be replayed to a new session.
    // It grows with what arrives: a declared length is a claim, not memory to hand out.
    let mut kept = (!fits_retry_buffer).then(BytesMut::new);
    let too_slow = || {
        status_error(
            408,
            "request body not complete within timeouts.request_body",
        )
    };
    loop {
        let read = tokio::time::timeout_at(
            tokio::time::Instant::from_std(deadline),
            session.as_downstream_mut().read_request_body(),
        )
        .await;
        let chunk = match read {
            Ok(chunk) => chunk?,
            Err(_) => {
                refuse_unread_body(session);
                return Err(too_slow());
            }
        };
        let Some(chunk) = chunk else { break };
        ctx.body_bytes += chunk.len() as u64;
        if ctx.body_bytes > MAX_BODY_BYTES {
            refuse_unread_body(session);
            return Err(status_error(413, "request body over 256 KiB"));
        }
        if let Some(kept) = kept.as_mut() {
            kept.extend_from_slice(&chunk);
        }
    }
    ctx.body = Body::ReadFirst;
    match kept {
        Some(body) if ctx.body_bytes > RETRY_BUFFER_BYTES => {
            replay_request(session, body.freeze()).await
        }
        _ => Ok(()),
    }
}

/// Hand pingora a new HTTP/1.1 session that reads this request (head and the body already
/// read) from memory, then the client's stream. The connection closes after the answer: any
/// pipelined request the old session had read ahead is not carried over.
async fn replay_request(session: &mut Session, body: Bytes) -> Result<()> {
    let chunked = session
        .req_header()
        .headers
        .contains_key(header::TRANSFER_ENCODING);
    let head = session.as_downstream().to_h1_raw();
    let mut replayed = BytesMut::with_capacity(head.len() + body.len() + 32);
    replayed.extend_from_slice(&head);
    if chunked {
        // One chunk, then the last.
        replayed.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
        replayed.extend_from_slice(&body);
        replayed.extend_from_slice(b"\r\n0\r\n\r\n");
    } else {
        replayed.extend_from_slice(&body);
    }
    let Some(stream) = session.as_downstream().stream() else {
        return Err(status_error(500, "no client stream to replay"));
    };
    let placeholder = ServerSession::new_http1(Box::new(tunnel::Replay::new(Bytes::new(), stream)));
    let taken = std::mem::replace(&mut *session.downstream_session, placeholder);
    let ServerSession::H1(v1) = taken else {
        *session.downstream_session = taken;
        return Err(status_error(500, "only HTTP/1.1 bodies are replayed"));
    };
    let mut conn = v1
        .into_inner()
        .into_any()
        .downcast::<ClientConn>()
        .map_err(|_| status_error(500, "the client stream is not the edge's"))?;
    conn.replay(replayed.freeze());
    let mut fresh = ServerSession::new_http1(conn);
    fresh.read_request().await?;
    fresh.set_keepalive(None);
    *session.downstream_session = fresh;
    Ok(())
}

/// Whether a request head may be proxied: within Nakama's size limits, and framed in one
/// unambiguous way (the request-smuggling vectors: Content-Length beside Transfer-Encoding,
/// Content-Length values that disagree, a Transfer-Encoding other than chunked).
fn head_is_acceptable(req: &RequestHeader) -> Result<(), u16> {
    let head: usize = req.raw_path().len()
        + req.method.as_str().len()
        + req
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    // HTTP/1.x heads are measured as they arrive (client_conn::HeadScan); this catches
    // HTTP/2's, whose size is known only once decoded.
    if req.raw_path().len() > MAX_HEAD_BYTES {
        return Err(414);
    }
    if head > MAX_HEAD_BYTES {
        return Err(431);
    }
    let mut lengths = req.headers.get_all(header::CONTENT_LENGTH).iter();
    let length = match lengths.next() {
        None => None,
        Some(first) => {
            if lengths.any(|other| other != first) {
                return Err(400);
            }
            Some(
                first
                    .to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or(400u16)?,
            )
        }
    };
    let mut encodings = req.headers.get_all(header::TRANSFER_ENCODING).iter();
    if let Some(te) = encodings.next() {
        if length.is_some()
            || encodings.next().is_some()
            || !te.as_bytes().eq_ignore_ascii_case(b"chunked")
        {
            return Err(400);
        }
    }
    if length.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(413);
    }
    Ok(())
}

/// A request held back by the rate limits.
pub(crate) struct RateLimited {
    /// Seconds, for `Retry-After`.
    pub(crate) retry_after: u64,
}

impl RateLimited {
    async fn respond(self, session: &mut Session) -> Result<bool> {
        let mut resp = ResponseHeader::build(429, Some(3))?;
        resp.insert_header(header::RETRY_AFTER, self.retry_after)?;
        resp.insert_header(header::CONTENT_LENGTH, "0")?;
        session.write_response_header(Box::new(resp), true).await?;
        Ok(true)
    }
}

impl Edge {
    /// The request budget of a player's request (see [`request_budget`]).
    fn over_rate_limit(&self, session: &Session, ctx: &Ctx) -> Option<RateLimited> {
        if !matches!(ctx.route, Route::Api | Route::WebSocket | Route::Grpc) {
            return None;
        }
        let req = session.req_header();
        request_budget(
            &self.shared,
            &ctx.snapshot,
            req.uri.path(),
            req.uri.query(),
            req.headers.get(header::AUTHORIZATION).map(|h| h.as_bytes()),
            client_ip(session)?,
        )
    }

    /// A login over its account's failed logins (see [`login_budget`]).
    fn over_login_failures(&self, session: &Session, ctx: &mut Ctx) -> Option<RateLimited> {
        if ctx.route != Route::Api {
            return None;
        }
        let path = session.req_header().uri.path();
        let body = session.as_downstream().get_retry_buffer()?;
        match login_budget(&self.shared, &ctx.snapshot, path, &body) {
            Ok(account) => {
                ctx.login = account;
                None
            }
            Err(limited) => Some(limited),
        }
    }
}

/// The request budget: players' routes only (not ACME, redirects or the console). A request
/// whose session token verifies spends its user's budget; any other (logins, `http_key`
/// calls, unverifiable tokens) its address's. Rejections are counted.
pub(crate) fn request_budget(
    shared: &Shared,
    snapshot: &Snapshot,
    path: &str,
    query: Option<&str>,
    authorization: Option<&[u8]>,
    client: IpAddr,
) -> Option<RateLimited> {
    let limits = &snapshot.limits;
    let user = snapshot.verifier.as_ref().and_then(|v| {
        let token = token::session_token(query, authorization)?;
        v.verify(token, unix_now())
    });
    let (result, reason) = match user {
        Some(uid) => (limits.check_user(uid.key()), RejectReason::User),
        None => (
            limits.check_request(client_key(client), is_auth_path(path)),
            RejectReason::RateLimit,
        ),
    };
    match result {
        Ok(()) => None,
        Err(Limited::Rate(wait)) => {
            shared.metrics.rejected(reason);
            Some(RateLimited {
                retry_after: retry_after_secs(wait),
            })
        }
        Err(Limited::Connections) => None,
    }
}

/// A login (its body read first, `body`) for an account over its failed logins gets 429 until
/// its window ends; otherwise `Ok(Some(account))`: the account to count a 401 against.
/// `Ok(None)`: not a login, or no identifier in its body.
pub(crate) fn login_budget(
    shared: &Shared,
    snapshot: &Snapshot,
    path: &str,
    body: &[u8],
) -> Result<Option<u64>, RateLimited> {
    if !path.starts_with("/v2/account/authenticate/") {
        return Ok(None);
    }
    let logins = &snapshot.limits.logins;
    let Some(account) = logins.identifier(path, body) else {
        return Ok(None);
    };
    match logins.check(account) {
        Ok(()) => Ok(Some(account)),
        Err(wait) => {
            shared.metrics.rejected(RejectReason::Login);
            Err(RateLimited {
                retry_after: retry_after_secs(wait),
            })
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn ip_key(ip: Option<IpAddr>, buf: &mut [u8; 16]) -> &[u8] {
    match ip {
        Some(IpAddr::V4(v4)) => {
            buf[..4].copy_from_slice(&v4.octets());
            &buf[..4]
        }
        Some(IpAddr::V6(v6)) => {
            buf.copy_from_slice(&v6.octets());
            &buf[..]
        }
        None => &buf[..0],
    }
}

/// `https://host[:port]/path?query` for a plain-HTTP request, or `None` when the request
/// names no usable host.
fn redirect_location(req: &RequestHeader, https_port: u16) -> Option<String> {
    let host = req
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))?;
    let authority: http::uri::Authority = host.parse().ok()?;
    let name = authority.host();
    if name.is_empty() || authority.as_str().contains('@') {
        return None;
    }
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    Some(if https_port == 443 {
        format!("https://{name}{path}")
    } else {
        format!("https://{name}:{https_port}{path}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(path: &str, host: Option<&str>) -> RequestHeader {
        let mut r = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
        if let Some(h) = host {
            r.insert_header("host", h).unwrap();
        }
        r
    }

    #[test]
    fn redirects_keep_path_and_query_and_drop_the_port() {
        assert_eq!(
            redirect_location(&req("/v2/rpc/x?a=1", Some("play.example.com:80")), 443).as_deref(),
            Some("https://play.example.com/v2/rpc/x?a=1")
        );
        assert_eq!(
            redirect_location(&req("/", Some("127.0.0.1:8080")), 8443).as_deref(),
            Some("https://127.0.0.1:8443/")
        );
        assert_eq!(
            redirect_location(&req("/", Some("[::1]:8080")), 8443).as_deref(),
            Some("https://[::1]:8443/")
        );
        assert_eq!(redirect_location(&req("/", None), 443), None);
        assert_eq!(redirect_location(&req("/", Some("evil@host")), 443), None);
        assert_eq!(redirect_location(&req("/", Some("a b")), 443), None);
    }
}

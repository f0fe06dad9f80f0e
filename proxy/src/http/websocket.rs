//! A player's WebSocket: the node picked by the user id in the session token (else the
//! client's address; in shard mode, the node of the player's shard, [`super::target`]), the upgrade asked of it on a fresh connection, and once it answers 101,
//! both connections handed over by hyper ([`hyper::upgrade`]) to the edge's splice
//! ([`crate::http::tunnel`]), which counts the client's messages and closes with a close frame.
//!
//! A node that refuses the connection, or fails before answering, is passed over for the next
//! (the upgrade is a GET with no body). Any answer but 101 goes to the player as it came.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use nakama_edge_config::StickyKey;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::answer::{refusal, Answer, Books, Then};
use super::forward::{connect_failed, no_node_left, refuse, within_retry_budget};
use super::head::{for_node, Toward};
use super::request::then;
use super::target::Target;
use super::Player;
use crate::http::headers::{self, Keep};
use crate::http::route::Route;
use crate::http::tunnel;
use crate::http::ws_close::{Closer, Frames, GOING_AWAY, POLICY_VIOLATION};
use crate::limits::token;
use crate::limits::MessageBudget;
use crate::listen::client_conn::ClientConn;
use crate::nodes::pool::{Counted, NodeRuntime, Tried};
use crate::ops::metrics::{OpenShardSocket, RejectReason};
use crate::state::{Shared, Snapshot};

/// How long a node has to answer a WebSocket upgrade once connected.
const UPGRADE_ANSWER: Duration = Duration::from_secs(10);

/// Open the WebSocket `parts` asks for.
pub(super) async fn open(
    player: &Arc<Player>,
    mut parts: http::request::Parts,
    mut books: Books,
    target: Target,
) -> Response<Answer> {
    let snapshot = books.snapshot().clone();
    let Some(upgraded) = parts.extensions.remove::<OnUpgrade>() else {
        return refusal(StatusCode::BAD_REQUEST, Then::Close, books);
    };
    let key = sticky_key(&parts, &snapshot, player);
    let toward = Toward::Http1(Keep {
        te_trailers: false,
        upgrade: true,
    });
    if let Err(status) = for_node(&mut parts, toward, &player.forwarded_for, player.proto()) {
        return refusal(status, Then::Close, books);
    }
    let shared = &player.shared;
    let timeouts = &snapshot.config.timeouts;
    shared.retry_budget.record_request();
    let mut tried = Tried::default();
    let mut shard;
    let (i, mut response) = loop {
        if let Some(last) = books.node.and_then(|i| snapshot.pool.nodes.get(i)) {
            if !within_retry_budget(shared) {
                return refusal(
                    StatusCode::BAD_GATEWAY,
                    then(player, Then::KeepAlive),
                    books,
                );
            }
            shared.metrics.upstream_retry(&last.config.name);
        }
        shard = target.shard(&snapshot, tried);
        let picked = target.pick(&snapshot, tried, || {
            snapshot.pool.pick_sticky(key.as_bytes(), tried)
        });
        let Some(i) = picked else {
            let status = no_node_left(books.node.is_some());
            return refuse(status, target, then(player, Then::KeepAlive), books);
        };
        tried.insert(i);
        books.node = Some(i);
        let node = &snapshot.pool.nodes[i];
        books.in_flight = Some(node.runtime.start_request());
        let mut sender = match crate::nodes::upstream::connect_upgradable(
            node.config.address,
            timeouts.upstream_connect,
        )
        .await
        {
            Ok(sender) => sender,
            Err(e) => {
                connect_failed(shared, node, &e);
                continue;
            }
        };
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = parts.uri.clone();
        *request.headers_mut() = parts.headers.clone();
        match tokio::time::timeout(UPGRADE_ANSWER, sender.send_request(request)).await {
            Ok(Ok(response)) => break (i, response),
            Ok(Err(e)) => {
                tracing::warn!(node = %node.config.name, error = %e, "node failed a WebSocket upgrade before answering; trying another");
            }
            Err(_) => {
                tracing::warn!(node = %node.config.name, "node did not answer a WebSocket upgrade in time; trying another");
            }
        }
    };
    let node = &snapshot.pool.nodes[i];
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        // Refused (a bad token, most often): the answer goes to the player as it came.
        return super::forward::relay(player, response, None, false, None, books);
    }
    let from_node = hyper::upgrade::on(&mut response);
    let (mut head, _) = response.into_parts();
    headers::to_player(&mut head.headers, head.status);
    books.answered(StatusCode::SWITCHING_PROTOCOLS);
    books.next_request = false;
    // Counted from the upgrade; the request itself is over once the 101 is out.
    let open = node.runtime.open_websocket();
    let session = Session {
        shared: shared.clone(),
        runtime: node.runtime.clone(),
        _shard: shard
            .and_then(|s| snapshot.shards.as_ref()?.get(s))
            .map(|s| s.series.open_websocket()),
        websocket_idle: timeouts.websocket_idle,
        rate: snapshot.config.rate_limit.websocket_messages_per_second,
        burst: snapshot.config.rate_limit.websocket_message_burst,
    };
    tokio::spawn(session.run(upgraded, from_node, open));
    Response::from_parts(head, Answer::own(Bytes::new(), books))
}

/// What a WebSocket's splice needs once both sides are handed over.
struct Session {
    shared: Arc<Shared>,
    runtime: Arc<NodeRuntime>,
    /// Counts the socket in its shard's gauge (shard mode) while it is open.
    _shard: Option<OpenShardSocket>,
    websocket_idle: Duration,
    rate: u32,
    burst: u32,
}

impl Session {
    async fn run(self, player: OnUpgrade, node: hyper::upgrade::OnUpgrade, open: Counted) {
        let (player, node) = tokio::join!(player, node);
        let (player, node) = match (player, node) {
            (Ok(player), Ok(node)) => (player, node),
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(error = %e, "WebSocket upgrade not completed");
                return;
            }
        };
        let (Some((client, early_client)), Some((mut upstream, early_node))) =
            (as_client(player), as_node(node))
        else {
            tracing::debug!("WebSocket upgrade over an unexpected stream");
            return;
        };
        // Boxed: a player's connection is over a KiB (its TLS state is inline), and each await
        // below would otherwise hold a copy of it for the socket's whole life.
        let mut client = Box::new(client);
        let closer = client.state().closer().clone();
        client.state().enter_websocket(self.websocket_idle);
        self.shared.websockets.add(&closer);
        // What either side sent along with the upgrade goes first.
        let early = async {
            if !early_node.is_empty() {
                client.write_all(&early_node).await?;
                client.flush().await?;
            }
            if !early_client.is_empty() {
                upstream.write_all(&early_client).await?;
            }
            Ok::<_, std::io::Error>(())
        };
        let sent = early.await;
        // They are views of hyper's read buffers (8 KiB and more each): kept for the socket's
        // life, they were most of an idle WebSocket's memory.
        drop((early_client, early_node));
        if let Err(e) = sent {
            tracing::debug!(error = %e, "WebSocket ended as it opened");
            return;
        }
        self.splice(client, upstream, closer, open).await;
    }

    async fn splice(
        self,
        client: Box<ClientConn>,
        node: TcpStream,
        closer: Arc<Closer>,
        open: Counted,
    ) {
        let since = Instant::now();
        let Session {
            shared,
            runtime,
            rate,
            burst,
            ..
        } = self;
        let mut budget = MessageBudget::new(rate, burst);
        let drain_check = || {
            // WebSockets on a draining node close once routing.drain_timeout has passed;
            // checked on every frame either way (Nakama pings every 15 s).
            let drain_timeout = shared.snapshot().config.routing.drain_timeout;
            if runtime.drain_expired(drain_timeout) {
                closer.request(GOING_AWAY);
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
            closer.request(POLICY_VIOLATION);
            false
        };
        let (carried, ended) = tunnel::splice(client, node, drain_check, admit).await;
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
        drop(open);
    }
}

fn as_client(upgraded: Upgraded) -> Option<(ClientConn, Bytes)> {
    let parts = upgraded.downcast::<TokioIo<ClientConn>>().ok()?;
    Some((parts.io.into_inner(), parts.read_buf))
}

fn as_node(upgraded: Upgraded) -> Option<(TcpStream, Bytes)> {
    let parts = upgraded.downcast::<TokioIo<TcpStream>>().ok()?;
    Some((parts.io.into_inner(), parts.read_buf))
}

/// What a WebSocket sticks to: the user id in the session token (`routing.sticky_key =
/// "user"`), else the client's address.
fn sticky_key(parts: &http::request::Parts, snapshot: &Snapshot, player: &Player) -> StickyBytes {
    if snapshot.config.routing.sticky_key == StickyKey::User {
        let token = token::session_token(
            parts.uri.query(),
            parts.headers.get(AUTHORIZATION).map(|v| v.as_bytes()),
        );
        if let Some(uid) = token.and_then(token::user_id) {
            return StickyBytes::from_slice(uid.as_bytes());
        }
    }
    match player.client {
        std::net::IpAddr::V4(v4) => StickyBytes::from_slice(&v4.octets()),
        std::net::IpAddr::V6(v6) => StickyBytes::from_slice(&v6.octets()),
    }
}

/// A sticky key's bytes, on the stack.
struct StickyBytes {
    buf: [u8; 64],
    len: usize,
}

impl StickyBytes {
    fn from_slice(bytes: &[u8]) -> StickyBytes {
        let mut buf = [0u8; 64];
        let len = bytes.len().min(buf.len());
        buf[..len].copy_from_slice(&bytes[..len]);
        StickyBytes { buf, len }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

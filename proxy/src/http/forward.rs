//! A request's way to a node and its answer's way back: the node picked (round-robin over the
//! routable nodes, those with a gRPC address for gRPC; an operator's own console node,
//! [`super::console`]; in shard mode the node of the player's shard, [`super::target`]), the request sent
//! ([`crate::nodes::upstream`]), and when that fails, another node within the rules below.
//!
//! **When a request goes to another node.** A request that never reached its node (the node
//! refused the connection, or a kept connection was found closed before a byte was written)
//! may go to any other node, whatever its method. One that may have reached its node goes
//! again only if its method is idempotent (RFC 9110 §9.2.2: GET, HEAD, PUT, DELETE, OPTIONS,
//! TRACE): a POST, which is how Nakama's authentication and RPCs travel, is never sent twice.
//! A node silent past `timeouts.upstream_read` gets the player a 504 and the request goes
//! nowhere else (it may still be running). Every retry spends the retry budget.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, SET_COOKIE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use super::answer::{refusal, shard_unavailable, Answer, Books, Then};
use super::console::Operator;
use super::head::{for_node, for_player, Toward};
use super::request::then;
use super::target::Target;
use super::Player;
use crate::http::headers::Keep;
use crate::http::route::Route;
use crate::nodes::pool::{Node, Tried};
use crate::nodes::upstream::{self, Failure, OutBody};
use crate::state::Shared;

/// Send the request (`parts`, its whole `body`) to a node and relay the answer. `login`: the
/// account a 401 counts against.
pub(super) async fn to_node(
    player: &Arc<Player>,
    mut parts: http::request::Parts,
    body: Bytes,
    login: Option<u64>,
    mut books: Books,
    target: Target,
) -> Response<Answer> {
    let toward = match books.route {
        Route::Grpc => Toward::H2c,
        _ => Toward::Http1(Keep::default()),
    };
    // Boxed: only console requests have one, and every request's future would carry it.
    let operator =
        (books.route == Route::Console).then(|| Box::new(Operator::of(&parts, player.client)));
    if let Err(status) = for_node(&mut parts, toward, &player.forwarded_for, player.proto()) {
        return refusal(status, Then::Close, books);
    }
    let head_request = parts.method == Method::HEAD;
    // Boxed: the request goes down through a few futures, and a box moves as a pointer.
    let request = Box::new(Request::from_parts(parts, Full::new(body)));
    match send(player, &mut books, request, operator.as_deref(), target).await {
        Ok((response, lease)) => {
            // An operator's console pick, kept for the console's next requests.
            let cookie = operator.as_deref().and_then(|o| {
                let node = books.snapshot().pool.nodes.get(books.node?)?;
                o.cookie(&node.config.name)
            });
            let mut answer = relay(player, response, lease, head_request, login, books);
            if let Some(cookie) = cookie {
                answer.headers_mut().append(SET_COOKIE, cookie);
            }
            answer
        }
        Err(status) => refuse(status, target, then(player, Then::KeepAlive), books),
    }
}

/// The player's answer when no node answered: `status`, with the reason when it is a
/// shard's (no node takes its new work).
pub(super) fn refuse(
    status: StatusCode,
    target: Target,
    then: Then,
    books: Books,
) -> Response<Answer> {
    match target.unavailable(books.snapshot(), status) {
        Some(reason) => {
            tracing::debug!(%reason, "request refused");
            shard_unavailable(&reason, then, books)
        }
        None => refusal(status, then, books),
    }
}

/// The answer to `request` of the first node that gives one, within the rules of the module
/// doc; `Err`: the status the player gets instead. `books` learns the node and holds its
/// in-flight count. `operator`: who asks, on the console listener.
async fn send(
    player: &Player,
    books: &mut Books,
    mut request: Box<Request<OutBody>>,
    operator: Option<&Operator>,
    target: Target,
) -> Result<(Response<Incoming>, Option<upstream::Lease>), StatusCode> {
    let snapshot = books.snapshot().clone();
    let route = books.route;
    let pool = &snapshot.pool;
    let shared = &player.shared;
    let timeouts = &snapshot.config.timeouts;
    let idempotent = request.method().is_idempotent();
    shared.retry_budget.record_request();
    let mut tried = Tried::default();
    loop {
        if let Some(last) = books.node.and_then(|i| pool.nodes.get(i)) {
            shared.metrics.upstream_retry(&last.config.name);
        }
        let picked = target.pick(&snapshot, tried, || match route {
            Route::Grpc => pool.pick_grpc(tried),
            Route::Console => pool.pick_console(
                operator.map_or(&[][..], Operator::key),
                operator.and_then(Operator::wanted),
                tried,
            ),
            _ => pool.pick_round_robin(tried),
        });
        let Some(i) = picked else {
            return Err(no_node_left(books.node.is_some()));
        };
        tried.insert(i);
        let node = &pool.nodes[i];
        books.node = Some(i);
        books.in_flight = Some(node.runtime.start_request());
        // A copy for a retry after the node may have seen it: idempotent requests only.
        let copy = idempotent.then(|| copy_of(&request));
        let address = match route {
            Route::Grpc => node.config.grpc,
            Route::Console => node.config.console,
            _ => Some(node.config.address),
        };
        let sent = match (route, address) {
            (_, None) => Err(Failure::Unsent(request)),
            // Boxed: an h2c exchange's state is large, and every request's future would
            // carry it.
            (Route::Grpc, Some(address)) => Box::pin(upstream::send_h2(
                address,
                request,
                timeouts.upstream_connect,
                timeouts.upstream_read,
            ))
            .await
            .map(|r| (r, None)),
            (_, Some(address)) => upstream::send_h1(
                address,
                request,
                timeouts.upstream_connect,
                timeouts.upstream_read,
            )
            .await
            .map(|(r, lease)| (r, Some(lease))),
        };
        let back = match sent {
            Ok(answer) => return Ok(answer),
            Err(Failure::Refused(e, back)) => {
                connect_failed(shared, node, &e);
                // Nothing reached the node: any request may go to another one.
                Some(back)
            }
            Err(Failure::Unsent(back)) => Some(back),
            Err(Failure::Failed(e)) => {
                tracing::debug!(node = %node.config.name, error = %e, "request failed at its node");
                copy
            }
            Err(Failure::Silent) => {
                tracing::debug!(node = %node.config.name, "node silent past timeouts.upstream_read");
                return Err(StatusCode::GATEWAY_TIMEOUT);
            }
        };
        match back {
            Some(back) if within_retry_budget(shared) => request = back,
            _ => return Err(StatusCode::BAD_GATEWAY),
        }
    }
}

/// The same request again, for another node.
fn copy_of(request: &Request<OutBody>) -> Box<Request<OutBody>> {
    let mut copy = Request::new(request.body().clone());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    Box::new(copy)
}

/// The node's answer, on its way to the player.
pub(super) fn relay(
    player: &Player,
    response: Response<hyper::body::Incoming>,
    lease: Option<upstream::Lease>,
    head_request: bool,
    login: Option<u64>,
    mut books: Books,
) -> Response<Answer> {
    let (mut parts, body) = response.into_parts();
    if let Err(why) = for_player(&mut parts, head_request) {
        let node = books
            .node
            .and_then(|i| books.snapshot().pool.nodes.get(i))
            .map_or("none", |n| n.config.name.as_str());
        tracing::debug!(node, why = why.0, "node's answer refused");
        // Dropping the body and the lease closes the node connection.
        return refusal(
            StatusCode::BAD_GATEWAY,
            then(player, Then::KeepAlive),
            books,
        );
    }
    if let Some(account) = login {
        if parts.status == StatusCode::UNAUTHORIZED {
            books.snapshot().limits.logins.failed(account);
        }
    }
    // A shutdown closes every HTTP/1.1 connection after its answer (the rule is `then`'s).
    if !player.h2 && then(player, Then::KeepAlive) == Then::Close {
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("close"));
        books.next_request = false;
    }
    books.answered(parts.status);
    let silence = books.snapshot().config.timeouts.upstream_read;
    Response::from_parts(parts, Answer::node(body, lease, silence, books))
}

/// The answer when no node is left to try: 503 when none was routable at all; 502 when one
/// was tried (`tried_one`) and failed.
pub(super) fn no_node_left(tried_one: bool) -> StatusCode {
    if tried_one {
        StatusCode::BAD_GATEWAY
    } else {
        StatusCode::SERVICE_UNAVAILABLE
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

//! One request, from its head to its answer: the stages of [`super`]'s diagram, in order.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE, HOST, LOCATION};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::answer::{refusal, too_many, Answer, Books, Then};
use super::body::{read_whole, BodyRead};
use super::budget::{login_budget, request_budget};
use super::head::{admit, BodyLength};
use super::target::{session, Target};
use super::{forward, websocket, Player};
use crate::http::route::{classify, Route, ACME_CHALLENGE_PREFIX};

/// Answer `req`.
pub(super) async fn handle(player: Arc<Player>, req: Request<Incoming>) -> Response<Answer> {
    let started = Instant::now();
    let snapshot = player.shared.snapshot();
    let (parts, body) = req.into_parts();
    let config = &snapshot.config;
    let route = classify(
        &parts,
        player.listener,
        config.listeners.http_redirect,
        &config.routing.websocket_path,
    );
    let admitted = admit(&parts, player.h2);
    if player.h2 {
        player.conn.stream_opened();
    } else {
        player.conn.start_request(match admitted {
            Ok(BodyLength::Known(n)) => Some(n),
            _ => None,
        });
    }
    let mut books = Books::open(&player, &snapshot, &parts, route, started);

    // 1. The head.
    if let Err(status) = admitted {
        return refusal(status, Then::CloseLingering, books);
    }
    // What follows an answer given before the body is read: with no body, the next request;
    // else the connection closes, reading the unsent rest of the body first.
    let unread = if hyper::body::Body::is_end_stream(&body) {
        Then::KeepAlive
    } else {
        Then::CloseLingering
    };

    // 2. The edge's own answers.
    match route {
        Route::Acme => return acme(&player, &parts, unread, books),
        Route::Redirect => return redirect(&player, &parts, unread, books),
        _ => {}
    }

    // 3. The request budget (the session token verified once, for it and the shard).
    let mut target = Target::Any;
    if matches!(route, Route::Api | Route::WebSocket | Route::Grpc) {
        let session = session(&player.shared, &snapshot, &parts);
        let limited = request_budget(
            &player.shared,
            &snapshot,
            parts.uri.path(),
            session.map(|s| s.user),
            player.client,
        );
        if let Some(limited) = limited {
            return too_many(limited.retry_after, then(&player, unread), books);
        }
        target = Target::of(&snapshot, session.as_ref());
    }

    // 4. WebSockets: no body, a node of their own.
    if route == Route::WebSocket {
        if unread != Then::KeepAlive {
            return refusal(StatusCode::BAD_REQUEST, unread, books);
        }
        // Boxed: an upgrade's state is large, and every API request's future would carry it.
        return Box::pin(websocket::open(&player, parts, books, target)).await;
    }

    // 5. The body, whole.
    let deadline = tokio::time::Instant::from_std(started + config.timeouts.request_body);
    let body = match read_whole(body, deadline).await {
        BodyRead::Whole(body) => body,
        BodyRead::TooLarge => {
            return refusal(StatusCode::PAYLOAD_TOO_LARGE, Then::CloseLingering, books)
        }
        BodyRead::Late => return refusal(StatusCode::REQUEST_TIMEOUT, Then::CloseLingering, books),
        BodyRead::Broken => return refusal(StatusCode::BAD_REQUEST, Then::Close, books),
    };
    books.received = body.len();

    // 6. Failed logins per account.
    let login = if route == Route::Api {
        match login_budget(&player.shared, &snapshot, parts.uri.path(), &body) {
            Ok(account) => account,
            Err(limited) => {
                return too_many(limited.retry_after, then(&player, Then::KeepAlive), books)
            }
        }
    } else {
        None
    };

    // 7. To a node and back.
    forward::to_node(&player, parts, body, login, books, target).await
}

/// What follows an answer the edge gives itself: `then`, or a close once the process is
/// shutting down.
pub(super) fn then(player: &Player, then: Then) -> Then {
    if then == Then::KeepAlive && player.shared.shutting_down.load(Ordering::Relaxed) {
        Then::Close
    } else {
        then
    }
}

/// An ACME HTTP-01 validation request: the key authorization of a pending challenge, else 404.
fn acme(
    player: &Player,
    parts: &http::request::Parts,
    then_: Then,
    mut books: Books,
) -> Response<Answer> {
    let token = parts.uri.path().trim_start_matches(ACME_CHALLENGE_PREFIX);
    let Some(key_authorization) = player.shared.certs.challenges().http01(token) else {
        return refusal(StatusCode::NOT_FOUND, then(player, then_), books);
    };
    tracing::info!("HTTP-01 validation request answered");
    books.answered(StatusCode::OK);
    let mut response = Response::new(Answer::own(Bytes::from(key_authorization), books));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    close_if(&mut response, then(player, then_), player.h2);
    response
}

/// The http listener's redirect to https: 308 to the same host and target (400 when the
/// request names no usable host).
fn redirect(
    player: &Player,
    parts: &http::request::Parts,
    unread: Then,
    mut books: Books,
) -> Response<Answer> {
    let https_port = books
        .snapshot()
        .config
        .listeners
        .https
        .map_or(443, |a| a.port());
    let Some(location) =
        redirect_location(parts, https_port).and_then(|l| HeaderValue::from_str(&l).ok())
    else {
        return refusal(StatusCode::BAD_REQUEST, Then::CloseLingering, books);
    };
    books.answered(StatusCode::PERMANENT_REDIRECT);
    let mut response = Response::new(Answer::own(Bytes::new(), books));
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    response.headers_mut().insert(LOCATION, location);
    close_if(&mut response, then(player, unread), player.h2);
    response
}

fn close_if(response: &mut Response<Answer>, then: Then, h2: bool) {
    if then != Then::KeepAlive && !h2 {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
}

/// `https://host[:port]/path?query` for a plain-HTTP request, or `None` when the request
/// names no usable host.
fn redirect_location(parts: &http::request::Parts, https_port: u16) -> Option<String> {
    let host = parts
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))?;
    let authority: http::uri::Authority = host.parse().ok()?;
    let name = authority.host();
    if name.is_empty() || authority.as_str().contains('@') {
        return None;
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    Some(if https_port == 443 {
        format!("https://{name}{path}")
    } else {
        format!("https://{name}:{https_port}{path}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(path: &str, host: Option<&str>) -> http::request::Parts {
        let mut r = http::Request::builder().uri(path);
        if let Some(h) = host {
            r = r.header("host", h);
        }
        r.body(()).unwrap().into_parts().0
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

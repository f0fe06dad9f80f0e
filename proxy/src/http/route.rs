//! The routing decision: what kind of request this is, made from its head alone.

use http::request::Parts;
use http::{header, Method};

/// What a request is, for routing and for the `route` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Nakama's HTTP API: round-robin.
    Api,
    /// The realtime socket: sticky by user.
    WebSocket,
    /// gRPC over HTTP/2: round-robin over nodes with a gRPC address.
    Grpc,
    /// ACME HTTP-01 challenge, answered by the edge.
    Acme,
    /// Plain HTTP redirected to https.
    Redirect,
    /// The console listener.
    Console,
}

impl Route {
    /// Every route, in label order.
    pub const ALL: [Route; 6] = [
        Route::Api,
        Route::WebSocket,
        Route::Grpc,
        Route::Acme,
        Route::Redirect,
        Route::Console,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Api => "api",
            Route::WebSocket => "websocket",
            Route::Grpc => "grpc",
            Route::Acme => "acme",
            Route::Redirect => "redirect",
            Route::Console => "console",
        }
    }

    /// Index into per-route arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The path prefix reserved for ACME HTTP-01 on the http listener.
pub const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Which listener a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// TLS: players.
    Https,
    /// Plain HTTP: ACME and redirects (or proxying when `http_redirect = false`).
    Http,
    /// TLS, to the nodes' consoles, for `firewall.console_allow` only.
    Console,
}

impl Listener {
    /// The service name.
    pub fn name(self) -> &'static str {
        match self {
            Listener::Https => "https",
            Listener::Http => "http",
            Listener::Console => "console",
        }
    }
}

/// Classify a request by its head.
pub fn classify(
    req: &Parts,
    listener: Listener,
    http_redirect: bool,
    websocket_path: &str,
) -> Route {
    let path = req.uri.path();
    if listener == Listener::Console {
        return Route::Console;
    }
    if listener == Listener::Http {
        if path.starts_with(ACME_CHALLENGE_PREFIX) {
            return Route::Acme;
        }
        if http_redirect {
            return Route::Redirect;
        }
    }
    if is_grpc(req) {
        return Route::Grpc;
    }
    if path == websocket_path && req.method == Method::GET && is_websocket_upgrade(req) {
        return Route::WebSocket;
    }
    Route::Api
}

fn is_grpc(req: &Parts) -> bool {
    req.version == http::Version::HTTP_2
        && req
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

fn is_websocket_upgrade(req: &Parts) -> bool {
    req.headers
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> Parts {
        let mut r = http::Request::builder().method(method).uri(path);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(()).unwrap().into_parts().0
    }

    #[test]
    fn classifies() {
        let ws = req(
            "GET",
            "/ws?token=x",
            &[("upgrade", "WebSocket"), ("connection", "upgrade")],
        );
        assert_eq!(
            classify(&ws, Listener::Https, true, "/ws"),
            Route::WebSocket
        );
        assert_eq!(classify(&ws, Listener::Https, true, "/socket"), Route::Api);
        assert_eq!(
            classify(&req("GET", "/ws", &[]), Listener::Https, true, "/ws"),
            Route::Api
        );
        assert_eq!(
            classify(&req("GET", "/v2/rpc/x", &[]), Listener::Https, true, "/ws"),
            Route::Api
        );
        assert_eq!(
            classify(&req("GET", "/v2/rpc/x", &[]), Listener::Http, true, "/ws"),
            Route::Redirect
        );
        assert_eq!(
            classify(&req("GET", "/v2/rpc/x", &[]), Listener::Http, false, "/ws"),
            Route::Api
        );
        assert_eq!(
            classify(
                &req("GET", "/.well-known/acme-challenge/t", &[]),
                Listener::Http,
                false,
                "/ws"
            ),
            Route::Acme
        );
        let mut grpc = req(
            "POST",
            "/nakama.api.Nakama/Healthcheck",
            &[("content-type", "application/grpc+proto")],
        );
        assert_eq!(
            classify(&grpc, Listener::Https, true, "/ws"),
            Route::Api,
            "gRPC needs HTTP/2"
        );
        grpc.version = http::Version::HTTP_2;
        assert_eq!(classify(&grpc, Listener::Https, true, "/ws"), Route::Grpc);
    }
}

//! The headers that cross the edge, and the two rules that stop some of them.
//!
//! ```text
//!   player ──► request head ──► strip_request: address claims, hop-by-hop ──► node
//!                                 + X-Forwarded-For (the address the edge saw), X-Forwarded-Proto
//!   player ◄── response head ◄── strip_response: hop-by-hop (Upgrade kept on a 101) ◄── node
//! ```
//!
//! * **Address claims** ([`claims_address`]): every header a player could use to claim a client
//!   address to Nakama or to anything behind it. Matched without regard to case or to `_`
//!   against `-`, because some servers and frameworks fold `X_Forwarded_For` into
//!   `X-Forwarded-For`. The edge writes `X-Forwarded-For` itself.
//! * **Hop-by-hop** ([`is_hop_by_hop`], RFC 9110 §7.6.1): `Connection` and every header it
//!   names, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Upgrade`. They describe one
//!   connection, not the message. (`Transfer-Encoding` is framing, which pingora rewrites for
//!   each side itself.) gRPC's `TE: trailers` is the one exception, kept for h2 nodes.
//!
//! Both run on every request, so they allocate nothing when there is nothing to remove.

use http::header::{HeaderMap, HeaderName, CONNECTION, TE};
use pingora_http::{RequestHeader, ResponseHeader};

/// Headers that carry a client address, dashed and lowercase (`_` spellings match too).
pub const ADDRESS_CLAIMS: [&str; 22] = [
    "x-forwarded-for",
    "x-real-ip",
    "forwarded",
    "forwarded-for",
    "x-forwarded",
    "x-original-forwarded-for",
    "cf-connecting-ip",
    "true-client-ip",
    "fastly-client-ip",
    "client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "x-proxyuser-ip",
    "x-envoy-external-address",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "x-real-client-ip",
    "proxy-client-ip",
    "wl-proxy-client-ip",
    "x-appengine-user-ip",
    "cf-pseudo-ipv4",
];

/// Hop-by-hop headers (RFC 9110 §7.6.1), lowercase.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// `name` equals `lower` (lowercase, dashed) but for case and `_` in place of `-`.
fn same_name(name: &[u8], lower: &str) -> bool {
    name.len() == lower.len()
        && name.iter().zip(lower.as_bytes()).all(|(&n, &l)| {
            let n = match n {
                b'_' => b'-',
                n => n.to_ascii_lowercase(),
            };
            n == l
        })
}

/// Whether a header named `name` claims a client address.
pub fn claims_address(name: &str) -> bool {
    ADDRESS_CLAIMS.iter().any(|c| same_name(name.as_bytes(), c))
}

/// Whether a header named `name` is hop-by-hop by itself (not counting the ones `Connection`
/// names).
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Whether a request header named `name` goes to the node as the player sent it: not an
/// address claim, not hop-by-hop by itself, not `X-Forwarded-Proto` (the edge writes both
/// forwarded headers itself, [`write_forwarded`]). Headers that `Connection` names are the
/// caller's to drop.
pub fn crosses_edge(name: &str) -> bool {
    !(claims_address(name) || is_hop_by_hop(name) || name.eq_ignore_ascii_case("x-forwarded-proto"))
}

/// Append the edge's `X-Forwarded-For` (the client's address) and `X-Forwarded-Proto` header
/// lines, and the empty line that ends a head, to an HTTP/1.1 head in `out`.
pub fn write_forwarded(out: &mut Vec<u8>, client: Option<std::net::IpAddr>, proto: &str) {
    use std::io::Write as _;
    if let Some(ip) = client {
        // Writing into a Vec cannot fail.
        let _ = write!(out, "x-forwarded-for: {ip}\r\n");
    }
    out.extend_from_slice(b"x-forwarded-proto: ");
    out.extend_from_slice(proto.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}

/// Whether the `Connection` headers of `headers` name `name`.
fn named_by_connection(headers: &HeaderMap, name: &str) -> bool {
    named_by(&headers.get_all(CONNECTION), name)
}

/// Whether `connection` (the values of `Connection`) names `name`.
fn named_by(connection: &http::header::GetAll<'_, http::HeaderValue>, name: &str) -> bool {
    connection.iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
    })
}

/// What a request to a node carries from the player: no address claims and no hop-by-hop
/// headers (`keep_te_trailers`: gRPC's `TE: trailers` stays, for an h2 node).
pub fn strip_request(req: &mut RequestHeader, keep_te_trailers: bool) {
    let doomed = |headers: &HeaderMap, name: &str| {
        if claims_address(name) {
            return true;
        }
        if keep_te_trailers && name == TE.as_str() {
            return !headers
                .get_all(TE)
                .iter()
                .all(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        }
        is_hop_by_hop(name) || named_by_connection(headers, name)
    };
    if nothing_else_doomed(&req.headers, keep_te_trailers) {
        // The usual request: at most a Connection header to drop, in one lookup.
        req.remove_header(&CONNECTION);
        return;
    }
    while let Some(name) = other_than_connection(&req.headers, doomed) {
        req.remove_header(&name);
    }
    req.remove_header(&CONNECTION);
}

/// Whether no header but `Connection` must leave a request: one pass, no removal, the
/// `Connection` values looked up once.
fn nothing_else_doomed(headers: &HeaderMap, keep_te_trailers: bool) -> bool {
    let connection = headers.get_all(CONNECTION);
    let has_connection = connection.iter().next().is_some();
    headers.keys().all(|name| {
        let name = name.as_str();
        name == CONNECTION.as_str()
            || !(claims_address(name)
                || (is_hop_by_hop(name) && !(keep_te_trailers && name == TE.as_str()))
                || (keep_te_trailers
                    && name == TE.as_str()
                    && !headers
                        .get_all(TE)
                        .iter()
                        .all(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers")))
                || (has_connection && named_by(&connection, name)))
    })
}

/// What a player gets of a node's response head: no hop-by-hop headers, but a 101's
/// `Upgrade` and `Connection`.
pub fn strip_response(resp: &mut ResponseHeader) {
    let upgrade = resp.status == http::StatusCode::SWITCHING_PROTOCOLS;
    let doomed = |headers: &HeaderMap, name: &str| {
        !(upgrade && name == "upgrade")
            && (is_hop_by_hop(name) || named_by_connection(headers, name))
    };
    while let Some(name) = other_than_connection(&resp.headers, doomed) {
        resp.remove_header(&name);
    }
    if !upgrade {
        resp.remove_header(&CONNECTION);
    }
}

/// The first header but `Connection` that `doomed` says must go.
fn other_than_connection(
    headers: &HeaderMap,
    doomed: impl Fn(&HeaderMap, &str) -> bool,
) -> Option<HeaderName> {
    headers
        .keys()
        .find(|name| **name != CONNECTION && doomed(headers, name.as_str()))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/v2/rpc/x", None).unwrap();
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).unwrap();
        }
        req
    }

    fn names(headers: &HeaderMap) -> Vec<String> {
        let mut v: Vec<String> = headers.keys().map(|k| k.as_str().to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn address_claims_match_any_case_and_underscores() {
        for name in [
            "X-Forwarded-For",
            "x_forwarded_for",
            "CF_Connecting_IP",
            "Fastly-Client-IP",
            "X-ProxyUser-Ip",
            "X_Envoy_External_Address",
        ] {
            assert!(claims_address(name), "{name}");
        }
        for name in [
            "x-forwarded-proto",
            "authorization",
            "x-forwarded-fo",
            "forwarded-forx",
        ] {
            assert!(!claims_address(name), "{name}");
        }
    }

    #[test]
    fn requests_lose_claims_and_hop_by_hop_headers_only() {
        let mut req = request(&[
            ("host", "play.example.com"),
            ("authorization", "Bearer t"),
            ("x_forwarded_for", "203.0.113.7"),
            ("client-ip", "203.0.113.7"),
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("trailer", "x-sum"),
            ("upgrade", "h2c"),
            ("content-type", "application/json"),
        ]);
        strip_request(&mut req, false);
        assert_eq!(
            names(&req.headers),
            ["authorization", "content-type", "host"]
        );
    }

    #[test]
    fn grpc_keeps_te_trailers_only() {
        let mut req = request(&[("te", "trailers"), ("content-type", "application/grpc")]);
        strip_request(&mut req, true);
        assert_eq!(names(&req.headers), ["content-type", "te"]);
        let mut req = request(&[("te", "gzip")]);
        strip_request(&mut req, true);
        assert!(req.headers.is_empty());
    }

    #[test]
    fn responses_lose_hop_by_hop_headers_but_a_101_keeps_its_upgrade() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        for (k, v) in [
            ("keep-alive", "timeout=5"),
            ("connection", "x-hop-secret"),
            ("x-hop-secret", "1"),
            ("upgrade", "h2c"),
            ("content-length", "2"),
        ] {
            resp.append_header(k.to_string(), v).unwrap();
        }
        strip_response(&mut resp);
        assert_eq!(names(&resp.headers), ["content-length"]);

        let mut switching = ResponseHeader::build(101, None).unwrap();
        switching.append_header("upgrade", "websocket").unwrap();
        switching.append_header("connection", "Upgrade").unwrap();
        switching.append_header("keep-alive", "timeout=5").unwrap();
        strip_response(&mut switching);
        assert_eq!(names(&switching.headers), ["connection", "upgrade"]);
    }
}

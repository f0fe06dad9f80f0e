//! The headers that cross the edge, and the two rules that stop some of them.
//!
//! ```text
//!   player ──► request head ──► to_node: address claims, hop-by-hop, framing ──► node
//!                                 + X-Forwarded-For (the address the edge saw), X-Forwarded-Proto
//!   player ◄── response head ◄── to_player: hop-by-hop (Upgrade kept on a 101), framing ◄── node
//! ```
//!
//! * **Address claims** ([`claims_address`]): every header a player could use to claim a client
//!   address to Nakama or to anything behind it. Matched without regard to case or to `_`
//!   against `-`, because some servers and frameworks fold `X_Forwarded_For` into
//!   `X-Forwarded-For`. The edge writes `X-Forwarded-For` itself.
//! * **Hop-by-hop** ([`is_hop_by_hop`], RFC 9110 §7.6.1): `Connection` and every header it
//!   names, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Upgrade`. They describe one
//!   connection, not the message. gRPC's `TE: trailers` is kept for h2 nodes, and a
//!   WebSocket upgrade's `Upgrade`.
//! * **Framing** (`Content-Length`, `Transfer-Encoding`): each side's is written by hyper from
//!   the body the edge actually sends, never copied from the other side, so that a message
//!   can only ever be framed one way. `Host` and the framing headers are never removed
//!   because `Connection` names them.
//!
//! Both run on every request, and remove in one pass what must go.

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, EXPECT, HOST, TE,
    TRANSFER_ENCODING, UPGRADE,
};

/// `X-Forwarded-For`: the client's address, as the edge saw it.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`: `https` or `http`, the listener the request came to.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

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

/// The lengths of the address claims, one bit each.
const CLAIM_LENGTHS: u32 = {
    let mut bits = 0u32;
    let mut i = 0;
    while i < ADDRESS_CLAIMS.len() {
        bits |= 1 << ADDRESS_CLAIMS[i].len();
        i += 1;
    }
    bits
};

/// Whether some address claim is `len` long and ends in `last`: a cheap first look, which
/// every common header name fails.
fn may_claim(len: usize, last: u8) -> bool {
    len < 32
        && CLAIM_LENGTHS & (1 << len) != 0
        && ADDRESS_CLAIMS
            .iter()
            .any(|c| c.len() == len && c.as_bytes()[len - 1] == last.to_ascii_lowercase())
}

/// Whether a header named `name` claims a client address.
pub fn claims_address(name: &str) -> bool {
    let bytes = name.as_bytes();
    let Some(&last) = bytes.last() else {
        return false;
    };
    may_claim(bytes.len(), last) && ADDRESS_CLAIMS.iter().any(|c| same_name(bytes, c))
}

/// Whether a header named `name` is hop-by-hop by itself (not counting the ones `Connection`
/// names).
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// [`is_hop_by_hop`] for a header name as hyper gives it: lowercase already.
fn is_hop_by_hop_name(name: &HeaderName) -> bool {
    name == CONNECTION
        || name == TE
        || name == UPGRADE
        || name == http::header::TRAILER
        || matches!(name.as_str(), "keep-alive" | "proxy-connection")
}

/// What a request to a node keeps of the connection-level headers a player sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keep {
    /// gRPC's `TE: trailers`, for an h2 node.
    pub te_trailers: bool,
    /// A WebSocket upgrade's `Upgrade` (and the edge writes `Connection: upgrade`).
    pub upgrade: bool,
}

/// Headers the edge frames or writes itself: never taken from a player (nor removed by a
/// `Connection` option, for `Host`).
fn is_framing(name: &HeaderName) -> bool {
    name == CONTENT_LENGTH || name == TRANSFER_ENCODING || name == HOST
}

/// Whether `connection` (the values of `Connection`) names `name`.
fn named_by(connection: &http::header::GetAll<'_, http::HeaderValue>, name: &str) -> bool {
    connection.iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
    })
}

/// Whether `headers`' `Connection` names any header besides the hop-by-hop ones removed
/// anyway (`keep-alive`, `upgrade`) and `close`: then each header is looked up in it.
fn connection_names_others(headers: &HeaderMap) -> bool {
    headers.get_all(CONNECTION).iter().any(|v| {
        v.as_bytes().split(|&b| b == b',').any(|token| {
            let token = token.trim_ascii();
            !(token.is_empty()
                || token.eq_ignore_ascii_case(b"keep-alive")
                || token.eq_ignore_ascii_case(b"close")
                || token.eq_ignore_ascii_case(b"upgrade"))
        })
    })
}

/// Remove every header of `headers` (but `Connection` itself) that `doomed` says must go. The
/// usual message has nothing or one or two to remove: a look over the names, then one removal
/// per name found (each removal may move the names, so the look starts again).
fn remove_doomed(headers: &mut HeaderMap, doomed: impl Fn(&HeaderMap, &HeaderName) -> bool) {
    while let Some(name) = headers
        .keys()
        .find(|name| *name != CONNECTION && doomed(headers, name))
        .cloned()
    {
        headers.remove(&name);
    }
}

/// Make a player's request headers the node's: without address claims, hop-by-hop headers
/// (`Connection` and what it names; `keep` says which the node still gets), `Expect` (the body
/// is read already), the framing headers (the edge frames the body it read itself) and a
/// client's `X-Forwarded-Proto`; then the edge's own `X-Forwarded-For` and
/// `X-Forwarded-Proto`. `Host` stays, whatever `Connection` names.
pub fn to_node(
    headers: &mut HeaderMap,
    keep: Keep,
    forwarded_for: &HeaderValue,
    proto: &'static str,
) {
    let has_connection = headers.contains_key(CONNECTION);
    let names_others = has_connection && connection_names_others(headers);
    let doomed = |headers: &HeaderMap, name: &HeaderName| {
        let s = name.as_str();
        if name == HOST {
            return false;
        }
        if is_framing(name) || name == EXPECT || claims_address(s) || name == X_FORWARDED_PROTO {
            return true;
        }
        if name == TE && keep.te_trailers {
            return !headers
                .get_all(TE)
                .iter()
                .all(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        }
        if name == UPGRADE && keep.upgrade {
            return false;
        }
        is_hop_by_hop_name(name) || (names_others && named_by(&headers.get_all(CONNECTION), s))
    };
    remove_doomed(headers, doomed);
    if keep.upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else if has_connection {
        headers.remove(CONNECTION);
    }
    headers.insert(X_FORWARDED_FOR, forwarded_for.clone());
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
}

/// Make a node's response headers the player's: without hop-by-hop headers (a 101 keeps its
/// `Upgrade` and `Connection`) and `Transfer-Encoding` (the edge frames the body as it relays
/// it). `Content-Length` stays: hyper checked it against the body it reads; it goes for the
/// statuses that have no body (204, 304).
pub fn to_player(headers: &mut HeaderMap, status: http::StatusCode) {
    let upgrade = status == http::StatusCode::SWITCHING_PROTOCOLS;
    let bodiless =
        status == http::StatusCode::NO_CONTENT || status == http::StatusCode::NOT_MODIFIED;
    let has_connection = headers.contains_key(CONNECTION);
    let names_others = has_connection && connection_names_others(headers);
    let doomed = |headers: &HeaderMap, name: &HeaderName| {
        if name == TRANSFER_ENCODING || (bodiless && name == CONTENT_LENGTH) {
            return true;
        }
        if is_framing(name) || (upgrade && name == UPGRADE) {
            return false;
        }
        is_hop_by_hop_name(name)
            || (names_others && named_by(&headers.get_all(CONNECTION), name.as_str()))
    };
    remove_doomed(headers, doomed);
    if !upgrade && has_connection {
        headers.remove(CONNECTION);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(headers: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn names(headers: &HeaderMap) -> Vec<String> {
        let mut v: Vec<String> = headers.keys().map(|k| k.as_str().to_string()).collect();
        v.sort();
        v
    }

    fn xff() -> HeaderValue {
        HeaderValue::from_static("127.0.0.2")
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
    fn requests_lose_claims_hop_by_hop_and_framing_and_get_the_edges_forwarded_headers() {
        let mut h = map(&[
            ("host", "play.example.com"),
            ("authorization", "Bearer t"),
            ("x_forwarded_for", "203.0.113.7"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "http"),
            ("client-ip", "203.0.113.7"),
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("trailer", "x-sum"),
            ("upgrade", "h2c"),
            ("expect", "100-continue"),
            ("content-length", "2"),
            ("content-type", "application/json"),
        ]);
        to_node(&mut h, Keep::default(), &xff(), "https");
        assert_eq!(
            names(&h),
            [
                "authorization",
                "content-type",
                "host",
                "x-forwarded-for",
                "x-forwarded-proto"
            ]
        );
        assert_eq!(h["x-forwarded-for"], "127.0.0.2");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn connection_cannot_remove_host_and_framing_is_the_edges() {
        let mut h = map(&[
            ("host", "a"),
            ("connection", "host, content-length, transfer-encoding"),
            ("content-length", "69"),
            ("transfer-encoding", "chunked"),
        ]);
        to_node(&mut h, Keep::default(), &xff(), "http");
        assert_eq!(names(&h), ["host", "x-forwarded-for", "x-forwarded-proto"]);
    }

    #[test]
    fn grpc_keeps_te_trailers_and_websockets_their_upgrade() {
        let mut h = map(&[("te", "trailers"), ("content-type", "application/grpc")]);
        let grpc = Keep {
            te_trailers: true,
            upgrade: false,
        };
        to_node(&mut h, grpc, &xff(), "https");
        assert!(h.contains_key("te"));
        let mut h = map(&[("te", "gzip")]);
        to_node(&mut h, grpc, &xff(), "https");
        assert!(!h.contains_key("te"));

        let mut h = map(&[
            ("upgrade", "websocket"),
            ("connection", "Upgrade, x-hop"),
            ("x-hop", "1"),
            ("sec-websocket-key", "k"),
        ]);
        let ws = Keep {
            te_trailers: false,
            upgrade: true,
        };
        to_node(&mut h, ws, &xff(), "https");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert!(!h.contains_key("x-hop"));
    }

    #[test]
    fn however_many_headers_must_go_all_go() {
        let many: Vec<String> = (0..40).map(|i| format!("x-{i}")).collect();
        let mut pairs: Vec<(&str, &str)> = many.iter().map(|n| (n.as_str(), "1")).collect();
        let joined = many.join(",");
        pairs.push(("connection", &joined));
        pairs.push(("host", "a"));
        let mut h = map(&pairs);
        to_node(&mut h, Keep::default(), &xff(), "https");
        assert_eq!(names(&h), ["host", "x-forwarded-for", "x-forwarded-proto"]);
    }

    #[test]
    fn responses_lose_hop_by_hop_headers_and_chunking_but_a_101_keeps_its_upgrade() {
        let mut h = map(&[
            ("keep-alive", "timeout=5"),
            ("connection", "x-hop-secret, content-length"),
            ("x-hop-secret", "1"),
            ("upgrade", "h2c"),
            ("transfer-encoding", "chunked"),
            ("content-length", "2"),
        ]);
        to_player(&mut h, http::StatusCode::OK);
        assert_eq!(names(&h), ["content-length"]);

        let mut h = map(&[("content-length", "20")]);
        to_player(&mut h, http::StatusCode::NOT_MODIFIED);
        assert!(h.is_empty(), "no length where there is no body");

        let mut h = map(&[
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("keep-alive", "timeout=5"),
        ]);
        to_player(&mut h, http::StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(names(&h), ["connection", "upgrade"]);
    }
}

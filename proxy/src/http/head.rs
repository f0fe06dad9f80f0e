//! Request and response heads at the edge: which request heads go on at all
//! ([`admit`], RFC 9112 and 9110's rules on framing and `Host`, and Nakama's size limits), and
//! the heads the node and the player get ([`for_node`], [`for_player`]).
//!
//! hyper has parsed the head and refused what does not parse (400), whose length is invalid
//! or repeated with different values (400), whose `Transfer-Encoding` does not end in
//! `chunked` (400), or that overruns its buffer (431). It reads a body framed by both
//! `Transfer-Encoding` and `Content-Length` as chunked and closes the connection after the
//! answer (RFC 9112 §6.3); the length never reaches the node, which gets the body the edge
//! read, framed by the edge.

use http::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::request::Parts;
use http::{Method, StatusCode, Uri, Version};

use crate::http::headers::{self, Keep};

/// Nakama refuses request heads over 5 KiB; the edge refuses them first: 431 for a head, 414
/// for a target that alone is over it.
pub const MAX_HEAD_BYTES: usize = 5 * 1024;

/// Nakama refuses bodies over 256 KiB; the edge refuses them first, with 413.
pub const MAX_BODY_BYTES: u64 = 256 * 1024;

/// How a request's body is framed, as far as the connection's deadlines care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// This many bytes (0: none).
    Known(u64),
    /// Chunked: known once read.
    Chunked,
}

/// Whether a request head may go on; `Err` is the status it gets before the connection closes.
pub fn admit(parts: &Parts, h2: bool) -> Result<BodyLength, StatusCode> {
    if parts.method == Method::CONNECT {
        return Err(StatusCode::METHOD_NOT_ALLOWED);
    }
    // Origin-form (or absolute-form, HTTP/1.1): a path from the root.
    if !parts.uri.path().starts_with('/') {
        return Err(StatusCode::BAD_REQUEST);
    }
    let target = parts.uri.path_and_query().map_or(0, |p| p.as_str().len());
    if target > MAX_HEAD_BYTES {
        return Err(StatusCode::URI_TOO_LONG);
    }
    // One pass over the headers: the head's size, and the fields that frame or route it.
    let mut head = parts.method.as_str().len() + target;
    let (mut hosts, mut authorizations, mut codings, mut lengths) = (0u32, 0u32, 0u32, 0u32);
    let mut host = None;
    for (name, value) in &parts.headers {
        head += name.as_str().len() + value.len() + 4;
        if name == HOST {
            hosts += 1;
            host = Some(value);
        } else if name == AUTHORIZATION {
            authorizations += 1;
        } else if name == TRANSFER_ENCODING {
            codings += 1;
        } else if name == CONTENT_LENGTH {
            lengths += 1;
        }
    }
    if head > MAX_HEAD_BYTES {
        return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
    // RFC 9112 §3.2: an HTTP/1.1 request has one Host, of valid form; none repeats it.
    match hosts {
        0 if parts.version == Version::HTTP_11 => return Err(StatusCode::BAD_REQUEST),
        0 => {}
        1 if host.is_some_and(valid_host) => {}
        _ => return Err(StatusCode::BAD_REQUEST),
    }
    // Nakama reads the first Authorization, the edge's limits would read one too: no
    // request may make them read different ones.
    if authorizations > 1 {
        return Err(StatusCode::BAD_REQUEST);
    }
    if codings > 0 {
        // Only `chunked` alone: the edge does not decode other transfer codings, and a body
        // must reach the node as the edge read it.
        let chunked = parts
            .headers
            .get(TRANSFER_ENCODING)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
        if h2 || codings > 1 || !chunked {
            return Err(StatusCode::BAD_REQUEST);
        }
        return Ok(BodyLength::Chunked);
    }
    let length = if lengths == 0 {
        0
    } else {
        content_length(parts)?
    };
    if length > MAX_BODY_BYTES {
        return Err(StatusCode::PAYLOAD_TOO_LARGE);
    }
    Ok(BodyLength::Known(length))
}

/// The request's `Content-Length`, or 0 without one: digits only, the same in every field
/// (hyper checked an HTTP/1.1 head already; the h2 codec checks the data against it).
fn content_length(parts: &Parts) -> Result<u64, StatusCode> {
    let mut length = None;
    for value in parts.headers.get_all(CONTENT_LENGTH) {
        let bytes = value.as_bytes();
        if bytes.is_empty() || bytes.len() > 18 || !bytes.iter().all(u8::is_ascii_digit) {
            return Err(StatusCode::BAD_REQUEST);
        }
        let n = bytes.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if length.is_some_and(|m| m != n) {
            return Err(StatusCode::BAD_REQUEST);
        }
        length = Some(n);
    }
    Ok(length.unwrap_or(0))
}

/// The characters of a reg-name (RFC 3986 §3.2.2: unreserved, sub-delims, `%` of a
/// percent-encoding), by byte value.
const REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        b += 1;
    }
    table
};

/// A `Host` value: empty, or `host[:port]` (RFC 3986 §3.2.2: a reg-name or an IP literal,
/// no user info), by the characters it may hold.
fn valid_host(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    let (host, port) = match bytes.iter().rposition(|&b| b == b':') {
        // An IPv6 literal's colons are inside its brackets.
        Some(at) if !bytes[at..].contains(&b']') => (&bytes[..at], Some(&bytes[at + 1..])),
        _ => (bytes, None),
    };
    let port_ok = port.is_none_or(|p| p.len() <= 5 && p.iter().all(u8::is_ascii_digit));
    let host_ok = match host {
        [] => bytes.is_empty(),
        [b'[', literal @ .., b']'] => {
            !literal.is_empty()
                && literal
                    .iter()
                    .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        }
        name => name.iter().all(|&b| REG_NAME[usize::from(b)]),
    };
    host_ok && port_ok
}

/// What a request becomes on its way to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toward {
    /// HTTP/1.1 (the API, the console; a WebSocket upgrade with `Keep::upgrade`).
    Http1(Keep),
    /// h2c (gRPC).
    H2c,
}

/// Make `parts` the head the node gets: origin-form target (h2c: absolute, as the h2 codec
/// asks), `Host` (from the target's authority when the client sent none, or sent an
/// absolute-form target), the headers that cross the edge ([`headers::to_node`]).
pub fn for_node(
    parts: &mut Parts,
    toward: Toward,
    forwarded_for: &HeaderValue,
    proto: &'static str,
) -> Result<(), StatusCode> {
    if let Some(authority) = parts.uri.authority() {
        // HTTP/2's :authority, or an absolute-form target: the host the client named.
        if parts.version != Version::HTTP_2 || !parts.headers.contains_key(HOST) {
            let host =
                HeaderValue::from_str(authority.as_str()).map_err(|_| StatusCode::BAD_REQUEST)?;
            parts.headers.insert(HOST, host);
        }
    }
    let keep = match toward {
        Toward::Http1(keep) => keep,
        Toward::H2c => Keep {
            te_trailers: true,
            upgrade: false,
        },
    };
    headers::to_node(&mut parts.headers, keep, forwarded_for, proto);
    match toward {
        Toward::Http1(_) => {
            if parts.uri.scheme().is_some() {
                parts.uri = match parts.uri.path_and_query() {
                    Some(path) => Uri::from(path.clone()),
                    None => Uri::from_static("/"),
                };
            }
            parts.version = Version::HTTP_11;
        }
        Toward::H2c => {
            let authority = parts
                .headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .filter(|h| !h.is_empty())
                .unwrap_or("nakama");
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            parts.uri = Uri::builder()
                .scheme("http")
                .authority(authority)
                .path_and_query(path)
                .build()
                .map_err(|_| StatusCode::BAD_REQUEST)?;
            parts.headers.remove(HOST);
            parts.version = Version::HTTP_2;
        }
    }
    parts.extensions.clear();
    Ok(())
}

/// Why a node's answer is not relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadAnswer(pub &'static str);

/// Make a node's response head the player's: framed by one length only, no hop-by-hop
/// headers ([`headers::to_player`]); `head_request`: the answer to a HEAD keeps the length it
/// announces, when it is one.
pub fn for_player(parts: &mut http::response::Parts, head_request: bool) -> Result<(), BadAnswer> {
    let headers = &parts.headers;
    if headers.contains_key(TRANSFER_ENCODING) && headers.contains_key(CONTENT_LENGTH) {
        // RFC 9112 §6.3: a sign of response splitting; hyper read it as chunked, but the edge
        // relays nothing framed two ways.
        return Err(BadAnswer("both Transfer-Encoding and Content-Length"));
    }
    if head_request {
        let mut lengths = headers.get_all(CONTENT_LENGTH).iter();
        let valid = match (lengths.next(), lengths.next()) {
            (Some(v), None) => {
                !v.is_empty() && v.len() <= 18 && v.as_bytes().iter().all(u8::is_ascii_digit)
            }
            (None, _) => true,
            _ => false,
        };
        if !valid {
            return Err(BadAnswer(
                "a HEAD answer's Content-Length is not one length",
            ));
        }
    }
    headers::to_player(&mut parts.headers, parts.status);
    parts.version = Version::HTTP_11;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(version: Version, target: &str, headers: &[(&str, &str)]) -> Parts {
        let mut req = http::Request::builder()
            .method("POST")
            .uri(target)
            .version(version);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap().into_parts().0
    }

    fn h1(headers: &[(&str, &str)]) -> Parts {
        parts(Version::HTTP_11, "/v2/rpc/x", headers)
    }

    #[test]
    fn an_http11_request_has_exactly_one_valid_host() {
        assert_eq!(
            admit(&h1(&[("host", "a")]), false),
            Ok(BodyLength::Known(0))
        );
        assert_eq!(admit(&h1(&[]), false), Err(StatusCode::BAD_REQUEST));
        assert_eq!(
            admit(&h1(&[("host", "a"), ("host", "b")]), false),
            Err(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            admit(&h1(&[("host", "a b")]), false),
            Err(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            admit(&h1(&[("host", "u@a")]), false),
            Err(StatusCode::BAD_REQUEST)
        );
        assert_eq!(admit(&h1(&[("host", "")]), false), Ok(BodyLength::Known(0)));
        for good in [
            "a:80",
            "play.example.com",
            "[::1]:8443",
            "127.0.0.1:7350",
            "xn--bcher-kva.ch",
        ] {
            assert_eq!(
                admit(&h1(&[("host", good)]), false),
                Ok(BodyLength::Known(0)),
                "{good}"
            );
        }
        for bad in [
            ":80", "a:8x", "a:123456", "[]", "[::1", "a/b", "a\\b", "[zz]:1",
        ] {
            assert_eq!(
                admit(&h1(&[("host", bad)]), false),
                Err(StatusCode::BAD_REQUEST),
                "{bad}"
            );
        }
        assert_eq!(
            admit(&parts(Version::HTTP_10, "/", &[]), false),
            Ok(BodyLength::Known(0)),
            "HTTP/1.0 needs none"
        );
    }

    #[test]
    fn lengths_are_digits_and_agree() {
        let with = |v: &str| admit(&h1(&[("host", "a"), ("content-length", v)]), false);
        assert_eq!(with("69"), Ok(BodyLength::Known(69)));
        assert_eq!(with("+69"), Err(StatusCode::BAD_REQUEST));
        assert_eq!(with("0x10"), Err(StatusCode::BAD_REQUEST));
        assert_eq!(with("262145"), Err(StatusCode::PAYLOAD_TOO_LARGE));
        assert_eq!(
            admit(
                &h1(&[
                    ("host", "a"),
                    ("content-length", "2"),
                    ("content-length", "3")
                ]),
                false
            ),
            Err(StatusCode::BAD_REQUEST)
        );
        let chunked = |v: &str| admit(&h1(&[("host", "a"), ("transfer-encoding", v)]), false);
        assert_eq!(chunked("chunked"), Ok(BodyLength::Chunked));
        assert_eq!(chunked("gzip, chunked"), Err(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn two_authorizations_and_oversized_heads_are_refused() {
        assert_eq!(
            admit(
                &h1(&[
                    ("host", "a"),
                    ("authorization", "Bearer a"),
                    ("authorization", "Bearer b")
                ]),
                false
            ),
            Err(StatusCode::BAD_REQUEST)
        );
        let long = format!("/{}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(
            admit(&parts(Version::HTTP_11, &long, &[("host", "a")]), false),
            Err(StatusCode::URI_TOO_LONG)
        );
        let big = "b".repeat(MAX_HEAD_BYTES);
        assert_eq!(
            admit(&h1(&[("host", "a"), ("x-big", &big)]), false),
            Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
    }

    #[test]
    fn the_node_gets_an_origin_form_target_and_the_clients_host() {
        let xff = HeaderValue::from_static("127.0.0.2");
        let mut p = parts(
            Version::HTTP_11,
            "http://play.example.com/v2/rpc/x?a=1",
            &[("host", "other"), ("content-length", "2")],
        );
        for_node(&mut p, Toward::Http1(Keep::default()), &xff, "https").unwrap();
        assert_eq!(p.uri, "/v2/rpc/x?a=1");
        assert_eq!(p.headers["host"], "play.example.com");
        assert!(!p.headers.contains_key("content-length"));

        let mut p = parts(
            Version::HTTP_2,
            "https://play.example.com/nakama.api.Nakama/X",
            &[],
        );
        for_node(&mut p, Toward::H2c, &xff, "https").unwrap();
        assert_eq!(p.uri, "http://play.example.com/nakama.api.Nakama/X");
        assert_eq!(p.version, Version::HTTP_2);
    }

    #[test]
    fn a_nodes_answer_framed_two_ways_is_not_relayed() {
        let answer = |headers: &[(&str, &str)]| {
            let mut r = http::Response::builder().status(200);
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.body(()).unwrap().into_parts().0
        };
        let mut p = answer(&[("content-length", "2"), ("transfer-encoding", "chunked")]);
        assert!(for_player(&mut p, false).is_err());
        let mut p = answer(&[("content-length", "+2")]);
        assert!(for_player(&mut p, true).is_err());
        let mut p = answer(&[
            ("transfer-encoding", "chunked"),
            ("connection", "x-a"),
            ("x-a", "1"),
        ]);
        for_player(&mut p, false).unwrap();
        assert!(p.headers.is_empty());
    }
}

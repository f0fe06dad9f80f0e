//! The head rules (`http::head`) on whatever heads hyper's parser (httparse) would hand the
//! edge: never a panic; a request head that is admitted becomes a node's head with no framing,
//! hop-by-hop or address-claiming header of the player's, the edge's one X-Forwarded-For, and
//! its Host; a node's answer becomes the player's with no chunking or hop-by-hop header.
#![no_main]
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri, Version};
use libfuzzer_sys::fuzz_target;
use nakama_edge::exposed::head::{admit, for_node, for_player, Toward};
use nakama_edge::exposed::headers::{claims_address, is_hop_by_hop, Keep};

fn headers_of(parsed: &[httparse::Header<'_>]) -> Option<HeaderMap> {
    let mut map = HeaderMap::new();
    for h in parsed {
        map.append(
            HeaderName::from_bytes(h.name.as_bytes()).ok()?,
            HeaderValue::from_bytes(h.value).ok()?,
        );
    }
    Some(map)
}

fn request(bytes: &[u8], version: Version) -> Option<http::request::Parts> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(bytes) else {
        return None;
    };
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = Method::from_bytes(req.method?.as_bytes()).ok()?;
    parts.uri = req.path?.parse::<Uri>().ok()?;
    parts.version = version;
    parts.headers = headers_of(req.headers)?;
    Some(parts)
}

fn response(bytes: &[u8]) -> Option<http::response::Parts> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = resp.parse(bytes) else {
        return None;
    };
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = StatusCode::from_u16(resp.code?).ok()?;
    parts.headers = headers_of(resp.headers)?;
    Some(parts)
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, bytes)) = data.split_first() else {
        return;
    };
    let xff = HeaderValue::from_static("127.0.0.9");
    let version = [Version::HTTP_10, Version::HTTP_11, Version::HTTP_2][usize::from(choice % 3)];
    let h2 = version == Version::HTTP_2;
    if let Some(parts) = request(bytes, version) {
        if admit(&parts, h2).is_ok() {
            let host = parts.headers.get(http::header::HOST).cloned();
            for toward in [Toward::Http1(Keep::default()), Toward::H2c] {
                let Some(mut node) = request(bytes, version) else {
                    continue;
                };
                if for_node(&mut node, toward, &xff, "https").is_err() {
                    continue;
                }
                for name in node.headers.keys() {
                    let s = name.as_str();
                    assert!(s != "content-length" && s != "transfer-encoding" && s != "expect");
                    assert!(
                        !is_hop_by_hop(s) || (s == "te" && toward == Toward::H2c),
                        "{s}"
                    );
                    assert!(!claims_address(s) || s == "x-forwarded-for", "{s}");
                }
                assert_eq!(node.headers.get_all("x-forwarded-for").iter().count(), 1);
                assert_eq!(node.headers.get("x-forwarded-for"), Some(&xff));
                match toward {
                    Toward::Http1(_) => {
                        assert!(node.uri.scheme().is_none(), "{}", node.uri);
                        if host.is_some() && parts.uri.authority().is_none() {
                            assert_eq!(node.headers.get(http::header::HOST), host.as_ref());
                        }
                    }
                    Toward::H2c => assert!(node.uri.authority().is_some()),
                }
            }
        }
    }
    if let Some(mut answer) = response(bytes) {
        let upgrade = answer.status == StatusCode::SWITCHING_PROTOCOLS;
        if for_player(&mut answer, choice & 1 == 1).is_ok() {
            for name in answer.headers.keys() {
                let s = name.as_str();
                assert!(s != "transfer-encoding");
                assert!(
                    !is_hop_by_hop(s) || (upgrade && (s == "upgrade" || s == "connection")),
                    "{s}"
                );
            }
        }
    }
});

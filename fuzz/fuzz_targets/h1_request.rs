//! A player's HTTP/1.1 request head on the edge's API path (`h1_api::examine`): never a panic,
//! and what goes to the node is one well-formed head with the same method and target, the
//! edge's own X-Forwarded-For and X-Forwarded-Proto once each, and no address claim or
//! hop-by-hop header of the player's.
#![no_main]
use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use nakama_edge::h1_api::{examine, Arrival, Examined};
use nakama_edge::headers::{claims_address, is_hop_by_hop};
use nakama_edge::route::Listener;

fuzz_target!(|data: &[u8]| {
    let arrival = Arrival {
        listener: Listener::Https,
        client: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
    };
    let mut out = Vec::new();
    let Examined::Plain(head) = examine(data, &arrival, false, &mut out) else {
        return;
    };
    assert!(head.len <= data.len());
    assert!(head.body <= 64 * 1024);
    let mut theirs = [httparse::EMPTY_HEADER; 64];
    let mut sent = httparse::Request::new(&mut theirs);
    let mut ours = [httparse::EMPTY_HEADER; 80];
    let mut to_node = httparse::Request::new(&mut ours);
    assert!(sent.parse(data).unwrap().is_complete());
    let parsed = to_node.parse(&out).expect("the node's head parses");
    assert_eq!(parsed, httparse::Status::Complete(out.len()), "one head, nothing after it");
    assert_eq!(to_node.method, sent.method);
    assert_eq!(to_node.path, sent.path);
    let count = |name: &str| to_node.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).count();
    assert_eq!(count("x-forwarded-for"), 1);
    assert_eq!(count("x-forwarded-proto"), 1);
    for h in to_node.headers.iter() {
        if h.name.eq_ignore_ascii_case("x-forwarded-for") {
            assert_eq!(h.value, b"203.0.113.7");
        } else if h.name.eq_ignore_ascii_case("x-forwarded-proto") {
            assert_eq!(h.value, b"https");
        } else {
            assert!(!claims_address(h.name) && !is_hop_by_hop(h.name), "{} crossed", h.name);
        }
    }
    // The body the node is told of is the one the player declared.
    let length = |headers: &[httparse::Header<'_>]| {
        headers.iter().filter(|h| h.name.eq_ignore_ascii_case("content-length")).map(|h| h.value.to_vec()).collect::<Vec<_>>()
    };
    assert_eq!(length(to_node.headers), length(sent.headers));
    assert!(count("transfer-encoding") == 0);
});

//! A node's response on the edge's HTTP/1.1 API path: its head (`parse_response_head`,
//! `write_response_head`) and a chunked body's end (`ChunkScan`): never a panic; the player's
//! head is one well-formed head with the node's status and no hop-by-hop header; a chunked
//! body ends at the same byte however its bytes arrive.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nakama_edge::h1_api::{parse_response_head, write_response_head, ChunkScan, Framing};
use nakama_edge::headers::is_hop_by_hop;

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let Ok(Some(head)) = parse_response_head(data) else {
        return;
    };
    assert!(head.len <= data.len());
    for close in [false, true] {
        let mut out = Vec::new();
        write_response_head(&data[..head.len], &mut out, close);
        let mut headers = [httparse::EMPTY_HEADER; 80];
        let mut resp = httparse::Response::new(&mut headers);
        let parsed = resp.parse(&out).expect("the player's head parses");
        assert_eq!(parsed, httparse::Status::Complete(out.len()));
        assert_eq!(resp.code, Some(head.status));
        for h in resp.headers.iter() {
            assert!(
                !is_hop_by_hop(h.name) || (close && h.name == "connection"),
                "{} reached the player",
                h.name
            );
        }
    }
    if head.framing == Framing::Chunked {
        let body = &data[head.len..];
        let whole = ChunkScan::default().advance(body);
        let at = usize::from(split).min(body.len());
        let mut scan = ChunkScan::default();
        let in_two = match scan.advance(&body[..at]) {
            Ok(Some(end)) => Ok(Some(end)),
            Ok(None) => scan.advance(&body[at..]).map(|end| end.map(|e| e + at)),
            Err(e) => Err(e),
        };
        match (whole, in_two) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(_), Err(_)) => {}
            (a, b) => panic!("{a:?} whole, {b:?} in two"),
        }
    }
});

//! Where a request head ends (`client_conn::HeadEnd`, which times the head and idle deadlines):
//! the same place however the reads split the bytes, and the place hyper's parser (httparse)
//! ends the head whenever it parses one whole.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nakama_edge::exposed::client_conn::HeadEnd;

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    let whole = HeadEnd::default().find(bytes);
    let mut pieces = HeadEnd::default();
    let mut offset = 0;
    let mut found = None;
    for chunk in bytes.chunks(usize::from(split).max(1)) {
        if let Some(end) = pieces.find(chunk) {
            found = Some(offset + end);
            break;
        }
        offset += chunk.len();
    }
    assert_eq!(whole, found);
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    if let Ok(httparse::Status::Complete(len)) = req.parse(bytes) {
        assert_eq!(whole, Some(len), "httparse ends the head at {len}");
    }
});

//! The routing decision fed arbitrary methods, paths, query strings and headers.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nakama_edge::route::{classify, Listener};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let method = lines.next().unwrap_or("GET");
    let path = lines.next().unwrap_or("/");
    let Ok(mut req) = pingora_http::RequestHeader::build(method, path.as_bytes(), None) else { return };
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let _ = req.insert_header(name.trim().to_string(), value.trim());
        }
    }
    for listener in [Listener::Https, Listener::Http, Listener::Console] {
        let _ = classify(&req, listener, true, "/ws");
        let _ = classify(&req, listener, false, "/ws");
    }
});

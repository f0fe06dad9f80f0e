//! The routing decision fed arbitrary methods, paths, query strings and headers.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nakama_edge::exposed::route::{classify, Listener};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let method = lines.next().unwrap_or("GET");
    let path = lines.next().unwrap_or("/");
    let mut req = http::Request::builder().method(method).uri(path);
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            req = req.header(name.trim(), value.trim());
        }
    }
    let Ok(req) = req.body(()) else { return };
    let (mut parts, ()) = req.into_parts();
    for version in [http::Version::HTTP_11, http::Version::HTTP_2] {
        parts.version = version;
        for listener in [Listener::Https, Listener::Http, Listener::Console] {
            let _ = classify(&parts, listener, true, "/ws");
            let _ = classify(&parts, listener, false, "/ws");
        }
    }
});

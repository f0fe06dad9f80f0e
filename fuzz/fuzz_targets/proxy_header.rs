//! The PROXY protocol v1/v2 parser: never a panic, and a parsed header is never longer than
//! the input.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((_, len))) = nakama_edge::exposed::proxy_protocol::parse(data) {
        assert!(len <= data.len());
    }
});

//! The session-token reader and verifier (and the CIDR and duration parsers it shares a target with):
//! arbitrary query strings, Authorization headers and tokens.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (query, auth) = text.split_once('\n').unwrap_or((&text, ""));
    if let Some(token) =
        nakama_edge::exposed::token::session_token(Some(query), Some(auth.as_bytes()))
    {
        if let Some(uid) = nakama_edge::exposed::token::user_id(token) {
            assert!(!uid.as_bytes().is_empty() && uid.as_bytes().len() <= 64);
        }
    }
    let _ = nakama_edge::exposed::token::user_id(&text);
    if let Some(verifier) = nakama_edge::exposed::token::Verifier::new(["fuzz-key"]) {
        // Whatever the bytes: a verdict, never a panic.
        let _ = verifier.verify(&text, 1_900_000_000, Some("shard"));
    }
    let _ = nakama_edge_config::parse_duration(&text);
    let _ = text.parse::<nakama_edge_config::IpNet>();
});

//! The config parser: any text gives a config or problems with positions, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(nakama_edge_config::ConfigError::Invalid { problems, .. }) =
            nakama_edge_config::Config::parse(text, "fuzz")
        {
            for p in problems {
                assert!(p.line >= 1 && p.column >= 1);
            }
        }
    }
});

//! The WebSocket frame tracker (`ws_close::Frames`) reads the node's bytes to find where a
//! close frame may go: never a panic, and the same bytes give the same boundaries however the
//! reads split them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nakama_edge::ws_close::Frames;

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    // Whole, then in reads of `split` bytes (at least one): same state at the end.
    let mut whole = Frames::default();
    whole.advance(bytes);
    let mut pieces = Frames::default();
    for chunk in bytes.chunks(usize::from(split).max(1)) {
        pieces.advance(chunk);
    }
    assert_eq!(whole.at_boundary(), pieces.at_boundary());
    assert_eq!(format!("{whole:?}"), format!("{pieces:?}"));
});

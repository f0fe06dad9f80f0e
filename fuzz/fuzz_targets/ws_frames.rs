//! The WebSocket frame tracker (`ws_close::Frames`) reads the node's bytes to find where a
//! close frame may go, and counts a client's frames for its message budget: never a panic,
//! and the same bytes give the same boundaries and the same count however the reads split
//! them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nakama_edge::exposed::ws_close::Frames;

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    // Whole, then in reads of `split` bytes (at least one): same state at the end.
    for start in [Frames::default(), Frames::frames_only()] {
        let mut whole = start.clone();
        let counted = whole.advance(bytes);
        let mut pieces = start;
        let mut counted_in_pieces = 0u32;
        for chunk in bytes.chunks(usize::from(split).max(1)) {
            counted_in_pieces += pieces.advance(chunk);
        }
        assert_eq!(counted, counted_in_pieces);
        assert!(counted as usize <= bytes.len());
        assert_eq!(whole.at_boundary(), pieces.at_boundary());
        assert_eq!(format!("{whole:?}"), format!("{pieces:?}"));
    }
});

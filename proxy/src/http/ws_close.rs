//! Ending a proxied WebSocket properly: a close frame to the client, written between two
//! frames of the node's, instead of a bare TCP close that players see as error 1006.
//!
//! ```text
//!   node ─► tunnel::splice ─► ClientConn::poll_write ─► Frames (where does a frame end?) ─► client
//!                                         ▲
//!   shutdown / upgrade ─► Closer::request(1001) ─┘ at the next frame boundary: close frame,
//!                                                  then the client side reads as ended
//! ```

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Waker;

/// "Going away" (RFC 6455): the server is shutting down or restarting.
pub const GOING_AWAY: u16 = 1001;
/// "Policy violation" (RFC 6455): here, a client sending more messages than its budget.
pub const POLICY_VIOLATION: u16 = 1008;

/// Where the server-to-client byte stream is, frame-wise.
#[derive(Debug, Clone)]
pub enum Frames {
    /// Still in the HTTP response head (`HTTP/1.1 101 ...`); `matched` bytes of CRLFCRLF seen.
    Head { matched: u8 },
    /// In a frame header: `have` bytes of it so far.
    Header { buf: [u8; 14], have: usize },
    /// In a frame's payload: `left` bytes to go.
    Payload { left: u64 },
}

impl Default for Frames {
    fn default() -> Self {
        Frames::Head { matched: 0 }
    }
}

/// Header length and payload length once enough of a header is in.
fn parse_header(h: &[u8]) -> Option<(usize, u64)> {
    if h.len() < 2 {
        return None;
    }
    let masked = h[1] & 0x80 != 0;
    let (len_bytes, short) = match h[1] & 0x7f {
        126 => (2, None),
        127 => (8, None),
        n => (0, Some(u64::from(n))),
    };
    let total = 2 + len_bytes + if masked { 4 } else { 0 };
    if h.len() < total {
        return None;
    }
    let payload = short.unwrap_or_else(|| {
        h[2..2 + len_bytes]
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
    });
    Some((total, payload))
}

impl Frames {
    /// A stream that starts with a frame (a client's, after the upgrade).
    pub fn frames_only() -> Frames {
        Frames::Header {
            buf: [0; 14],
            have: 0,
        }
    }

    /// Account for `bytes` of the stream; how many frames began in them (each frame, control
    /// frames and fragments included, counts once, as its first byte passes).
    pub fn advance(&mut self, mut bytes: &[u8]) -> u32 {
        let mut began = 0u32;
        while let Some((&b, rest)) = bytes.split_first() {
            match self {
                Frames::Head { matched } => {
                    let expected = b"\r\n\r\n"[*matched as usize];
                    *matched = if b == expected {
                        *matched + 1
                    } else if b == b'\r' {
                        1
                    } else {
                        0
                    };
                    if *matched == 4 {
                        *self = Frames::Header {
                            buf: [0; 14],
                            have: 0,
                        };
                    }
                    bytes = rest;
                }
                Frames::Header { buf, have } => {
                    if *have == 0 {
                        began = began.saturating_add(1);
                    }
                    buf[*have] = b;
                    *have += 1;
                    bytes = rest;
                    if let Some((len, payload)) = parse_header(&buf[..*have]) {
                        if *have == len {
                            *self = if payload == 0 {
                                Frames::Header {
                                    buf: [0; 14],
                                    have: 0,
                                }
                            } else {
                                Frames::Payload { left: payload }
                            };
                        }
                    }
                }
                Frames::Payload { left } => {
                    let n = (*left).min(bytes.len() as u64) as usize;
                    *left -= n as u64;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        *self = Frames::Header {
                            buf: [0; 14],
                            have: 0,
                        };
                    }
                }
            }
        }
        began
    }

    /// Whether a frame may be inserted now: between frames, after the response head.
    pub fn at_boundary(&self) -> bool {
        matches!(self, Frames::Header { have: 0, .. })
    }
}

/// A close frame from the server (unmasked) with `code`.
pub fn close_frame(code: u16) -> [u8; 4] {
    let [hi, lo] = code.to_be_bytes();
    [0x88, 0x02, hi, lo]
}

/// The handle through which a WebSocket is asked to close.
#[derive(Debug, Default)]
pub struct Closer {
    code: AtomicU16,
    waker: Mutex<Option<Waker>>,
}

impl Closer {
    /// Ask for a close frame with `code`.
    pub fn request(&self, code: u16) {
        self.code.store(code, Ordering::Release);
        if let Some(w) = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            w.wake();
        }
    }

    /// The requested close code, if any.
    pub fn requested(&self) -> Option<u16> {
        match self.code.load(Ordering::Acquire) {
            0 => None,
            code => Some(code),
        }
    }

    /// Wake the registered task.
    pub fn wake(&self) {
        if let Some(w) = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            w.wake();
        }
    }

    /// Wake this task when a close is requested.
    pub fn register(&self, waker: &Waker) {
        *self.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(waker.clone());
    }
}

/// Every open WebSocket's closer.
#[derive(Debug, Default)]
pub struct OpenWebSockets {
    closers: Mutex<Vec<Weak<Closer>>>,
}

impl OpenWebSockets {
    /// Track `closer` while its WebSocket lives.
    pub fn add(&self, closer: &Arc<Closer>) {
        let mut closers = self.closers.lock().unwrap_or_else(|e| e.into_inner());
        closers.retain(|c| c.strong_count() > 0);
        closers.push(Arc::downgrade(closer));
    }

    /// The WebSockets still open.
    pub fn live(&self) -> Vec<Arc<Closer>> {
        let mut closers = self.closers.lock().unwrap_or_else(|e| e.into_inner());
        closers.retain(|c| c.strong_count() > 0);
        closers.iter().filter_map(Weak::upgrade).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => f.push(n as u8),
            n if n < 65536 => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn boundaries_after_the_head_and_between_frames_only() {
        let mut t = Frames::default();
        t.advance(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r");
        assert!(!t.at_boundary());
        t.advance(b"\n");
        assert!(t.at_boundary());
        let big = vec![7u8; 70_000];
        let mut stream = frame(1, b"hello");
        stream.extend(frame(2, &vec![1u8; 300]));
        stream.extend(frame(2, &big));
        stream.extend(frame(9, b""));
        let ends = [7, 7 + 4 + 300, 7 + 4 + 300 + 10 + 70_000, stream.len()];
        // Byte by byte: a boundary exactly at each frame's end.
        let mut u = t.clone();
        for (i, b) in stream.iter().enumerate() {
            u.advance(&[*b]);
            assert_eq!(
                u.at_boundary(),
                ends.contains(&(i + 1)),
                "after byte {}",
                i + 1
            );
        }
        // In uneven chunks: the same.
        let mut pos = 0;
        for size in [3, 1000, 1, 65_536, 5_000].iter().cycle() {
            if pos >= stream.len() {
                break;
            }
            let end = (pos + size).min(stream.len());
            t.advance(&stream[pos..end]);
            pos = end;
            assert_eq!(t.at_boundary(), ends.contains(&pos), "after {pos}");
        }
    }

    #[test]
    fn frames_are_counted_as_they_begin_however_the_bytes_split() {
        // Masked client frames: a 5-byte text, an empty ping, a 300-byte binary.
        let masked = |opcode: u8, payload: &[u8]| {
            let mut f = vec![0x80 | opcode];
            if payload.len() < 126 {
                f.push(0x80 | payload.len() as u8);
            } else {
                f.push(0x80 | 126);
                f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            }
            f.extend_from_slice(&[1, 2, 3, 4]);
            f.extend_from_slice(payload);
            f
        };
        let mut stream = masked(1, b"hello");
        stream.extend(masked(9, b""));
        stream.extend(masked(2, &[9u8; 300]));
        let mut whole = Frames::frames_only();
        assert_eq!(whole.advance(&stream), 3);
        let mut split = Frames::frames_only();
        let counted: u32 = stream.chunks(7).map(|c| split.advance(c)).sum();
        assert_eq!(counted, 3);
        assert!(split.at_boundary());
    }

    #[test]
    fn the_close_frame() {
        assert_eq!(close_frame(GOING_AWAY), [0x88, 0x02, 0x03, 0xe9]);
    }

    #[test]
    fn closers_are_tracked_while_alive() {
        let open = OpenWebSockets::default();
        let a = Arc::new(Closer::default());
        let b = Arc::new(Closer::default());
        open.add(&a);
        open.add(&b);
        drop(b);
        let live = open.live();
        assert_eq!(live.len(), 1);
        live[0].request(GOING_AWAY);
        assert_eq!(a.requested(), Some(GOING_AWAY));
    }
}

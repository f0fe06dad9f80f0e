//! Where a request head ends in the stream, found as the bytes go by; only the deadlines use
//! it (hyper parses the head). Fuzzed against hyper's parser (`fuzz/fuzz_targets/head_end.rs`).

/// Where a request head ends: after the first empty line that follows a non-empty one. Lines
/// end in LF, with or without CR (RFC 9112 §2.2), and empty lines before the request line are
/// skipped, as hyper's parser (httparse) skips them. Only the deadlines use it; hyper parses
/// the head, and refuses what is not one.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HeadEnd {
    state: Scan,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// Before the request line: CRs and LFs are skipped.
    #[default]
    Start,
    /// Within a line.
    Line,
    /// Right after a line's LF.
    Lf,
    /// After a line's LF and a CR.
    LfCr,
    /// The head has ended.
    Done,
}

impl HeadEnd {
    /// Go over the next `bytes` of the stream: `Some(n)` when the head ends after the first `n`
    /// of them. Once it has, nothing more is looked at.
    pub fn find(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < bytes.len() {
            match self.state {
                Scan::Start => match bytes[i] {
                    b'\r' | b'\n' => i += 1,
                    _ => self.state = Scan::Line,
                },
                Scan::Line => match memchr::memchr(b'\n', &bytes[i..]) {
                    Some(at) => {
                        i += at + 1;
                        self.state = Scan::Lf;
                    }
                    None => return None,
                },
                Scan::Lf | Scan::LfCr => {
                    match (self.state, bytes[i]) {
                        (_, b'\n') => {
                            self.state = Scan::Done;
                            return Some(i + 1);
                        }
                        (Scan::Lf, b'\r') => self.state = Scan::LfCr,
                        _ => self.state = Scan::Line,
                    }
                    i += 1;
                }
                Scan::Done => return None,
            }
        }
        None
    }
}

impl HeadEnd {
    /// Whether the head has ended.
    pub fn is_done(&self) -> bool {
        self.state == Scan::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end_of(bytes: &[u8]) -> Option<usize> {
        HeadEnd::default().find(bytes)
    }

    #[test]
    fn heads_end_at_their_first_empty_line() {
        assert_eq!(end_of(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"), Some(27));
        assert_eq!(end_of(b"GET / HTTP/1.1\nHost: a\n\n"), Some(24));
        assert_eq!(
            end_of(b"GET / HTTP/1.1\r\nHost: a\n\r\nGET"),
            Some(26),
            "LF CR LF"
        );
        assert_eq!(
            end_of(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"),
            Some(22),
            "leading empty lines"
        );
        assert_eq!(end_of(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(end_of(b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n"), Some(26));
        // Split anywhere, the end is found at the same place.
        let head = b"\r\nPOST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi";
        for split in 0..head.len() {
            let mut scan = HeadEnd::default();
            let end = match scan.find(&head[..split]) {
                Some(end) => end,
                None => split + scan.find(&head[split..]).unwrap(),
            };
            assert_eq!(end, head.len() - 2, "split at {split}");
        }
    }
}

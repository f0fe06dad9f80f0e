//! A request's body, read in full before a node is picked, as nginx buffers requests: a client
//! that trickles its body holds no node connection, and must finish within
//! `timeouts.request_body`. hyper decodes it (length or chunks); a body that arrived with its
//! head is handed over without a copy.

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::head::MAX_BODY_BYTES;

/// How reading a body went.
#[derive(Debug)]
pub enum BodyRead {
    /// All of it.
    Whole(Bytes),
    /// Over [`MAX_BODY_BYTES`]: 413.
    TooLarge,
    /// Not complete by the deadline: 408.
    Late,
    /// Framed badly (a chunk that does not parse), or cut off by the client: 400.
    Broken,
}

/// Read `body` whole, by `deadline`.
pub async fn read_whole(mut body: Incoming, deadline: Instant) -> BodyRead {
    use hyper::body::Body as _;
    if body.is_end_stream() {
        return BodyRead::Whole(Bytes::new());
    }
    let late = tokio::time::sleep_until(deadline);
    tokio::pin!(late);
    let mut first: Option<Bytes> = None;
    let mut more: Option<BytesMut> = None;
    let mut total = 0u64;
    loop {
        let frame = tokio::select! {
            biased;
            frame = body.frame() => frame,
            _ = &mut late => return BodyRead::Late,
        };
        let data = match frame {
            None => break,
            Some(Err(_)) => return BodyRead::Broken,
            // Trailers of a chunked request: not forwarded (no client of Nakama's sends them).
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
        };
        total += data.len() as u64;
        if total > MAX_BODY_BYTES {
            return BodyRead::TooLarge;
        }
        match (&mut first, &mut more) {
            (None, _) => first = Some(data),
            (Some(f), None) => {
                let mut joined = BytesMut::with_capacity(f.len() + data.len());
                joined.extend_from_slice(f);
                joined.extend_from_slice(&data);
                more = Some(joined);
            }
            (Some(_), Some(joined)) => joined.extend_from_slice(&data),
        }
    }
    BodyRead::Whole(match more {
        Some(joined) => joined.freeze(),
        None => first.unwrap_or_default(),
    })
}

//! What a connection holds until it closes (its per-IP slot, the listener's open gauge), and
//! the lingering close of a connection whose request was refused before its body was read.

use std::time::Duration;

use crate::limits::ConnectionSlot;
use crate::ops::metrics::OpenConnection;

use super::transport::Transport;

/// After a refused request, how long the rest of the client's bytes are read and dropped
/// before the connection closes.
pub const LINGER: Duration = Duration::from_secs(2);

/// At most this much of a refused request's body is read and dropped before its connection
/// closes anyway (a client that sends more is reset).
pub const LINGER_BYTES: usize = 16 << 20;

/// Held until the connection closes, lingering included: dropping it frees the client's
/// connection slot and takes the connection off the listener's open gauge.
#[derive(Default)]
pub(super) struct Held {
    _slot: Option<ConnectionSlot>,
    _open: Option<OpenConnection>,
}

impl Held {
    pub fn new(slot: Option<ConnectionSlot>, open: Option<OpenConnection>) -> Held {
        Held {
            _slot: slot,
            _open: open,
        }
    }
}

/// Close `stream`'s side (TLS close_notify, then FIN), then read and drop what the client
/// sends until it closes, [`LINGER`] passes or [`LINGER_BYTES`] are dropped; `held` is
/// released then.
pub(super) async fn linger(mut stream: Transport, held: Held) {
    let drain = async {
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
        let mut scratch = [0u8; 4096];
        let mut dropped = 0;
        while dropped < LINGER_BYTES {
            match tokio::io::AsyncReadExt::read(&mut stream, &mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => dropped += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
    drop(held);
}

//! A WebSocket's bytes toward the client, once upgraded: where the node's frames end, and the
//! close frame the edge writes at one of those ends when asked to ([`Closer`]: a drain, a
//! shutdown).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

use crate::http::ws_close::{close_frame, Closer, Frames};

/// The close frame's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// None requested, or waiting for a frame boundary.
    Open,
    /// Writing it: `done` bytes of `frame` are out.
    Writing { frame: [u8; 4], done: usize },
    /// Sent: the client side reads as ended and nothing more is written to it.
    Sent,
}

/// Server-to-client frame boundaries and the close frame written between two frames.
pub(super) struct WsOut {
    frames: Frames,
    close: Close,
}

impl WsOut {
    pub fn new() -> WsOut {
        WsOut {
            frames: Frames::frames_only(),
            close: Close::Open,
        }
    }

    /// `bytes` went to the client. Once a requested close can go out, the reader is woken to
    /// write it.
    pub fn wrote(&mut self, bytes: &[u8], closer: &Closer) {
        self.frames.advance(bytes);
        if closer.requested().is_some() && self.frames.at_boundary() {
            closer.wake();
        }
    }

    /// Drive a requested close frame onto `io`: `Ready(true)` once it is out.
    pub fn poll_close<T: AsyncWrite + Unpin>(
        &mut self,
        closer: &Closer,
        io: &mut T,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<bool>> {
        if self.close == Close::Open {
            match closer.requested() {
                Some(code) if self.frames.at_boundary() => {
                    self.close = Close::Writing {
                        frame: close_frame(code),
                        done: 0,
                    };
                }
                _ => return Poll::Ready(Ok(false)),
            }
        }
        while let Close::Writing { frame, done } = self.close {
            if done == frame.len() {
                std::task::ready!(Pin::new(&mut *io).poll_flush(cx))?;
                self.close = Close::Sent;
                break;
            }
            let n = std::task::ready!(Pin::new(&mut *io).poll_write(cx, &frame[done..]))?;
            self.close = Close::Writing {
                frame,
                done: done + n,
            };
        }
        Poll::Ready(Ok(true))
    }
}

//! A node's answer to a WebSocket upgrade (`tunnel::read_answer`, then a refusal's body):
//! never a panic, never more than was sent, and the stated limits hold, however the node's
//! bytes arrive.
#![no_main]
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use libfuzzer_sys::fuzz_target;
use nakama_edge::tunnel::{read_answer, MAX_REFUSAL_BODY, MAX_RESPONSE_HEAD};
use tokio::io::{AsyncRead, ReadBuf};

/// The node: `data`, in reads of at most `step` bytes, then the end of the stream.
struct Node<'a> {
    data: &'a [u8],
    step: usize,
}

impl AsyncRead for Node<'_> {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let n = self.data.len().min(self.step).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, bytes)) = data.split_first() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut node = Node { data: bytes, step: usize::from(step).max(1) };
    runtime.block_on(async {
        let Ok(mut answer) = read_answer(&mut node).await else {
            return;
        };
        assert!((100..1000).contains(&answer.status));
        // The head is refused once over the limit; the read that completes it may add a step.
        assert!(answer.raw_head.len() <= MAX_RESPONSE_HEAD + usize::from(step).max(1));
        assert!(answer.raw_head.len() + answer.after_head.len() <= bytes.len());
        if let Ok(body) = answer.body(&mut node).await {
            assert!(body.len() <= MAX_REFUSAL_BODY);
            assert!(body.len() <= bytes.len());
        }
    });
});

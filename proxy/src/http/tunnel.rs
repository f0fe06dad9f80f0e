//! WebSockets past their upgrade: the edge's own, lean splice from a player to a Nakama node.
//!
//! ```text
//!   http::websocket ── 101 from the node ──► hyper hands both connections over
//!        └─► splice(client, node): copies both ways through one scratch buffer per thread
//! ```
//!
//! Why not a generic copy: an idle socket here holds its TLS state, two sockets and a small
//! task; reads go through one scratch buffer per thread, and a connection keeps bytes of its
//! own only while its peer is not taking them (BENCHMARKS.md: memory per idle WebSocket).

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The per-thread buffer every tunnel on the thread reads through.
const SCRATCH_BYTES: usize = 16 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice());
}

/// Bytes a [`splice`] carried each way.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Carried {
    /// From the client to the node.
    pub to_node: u64,
    /// From the node to the client.
    pub to_client: u64,
}

/// Copy between `client` and `node` until either ends (the other is then shut down), or an
/// error. `on_traffic` runs after every read that carried bytes, either way. `admit` sees
/// every piece the client sends before it goes on: `false` drops it (the client is over its
/// budget and being closed).
pub async fn splice<C, N, F, A>(
    client: C,
    node: N,
    on_traffic: F,
    admit: A,
) -> (Carried, io::Result<()>)
where
    C: AsyncRead + AsyncWrite + Unpin,
    N: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(),
    A: FnMut(&[u8]) -> bool,
{
    let mut splice = Splice {
        client,
        node,
        to_node: Half::default(),
        to_client: Half::default(),
        on_traffic,
        admit,
    };
    let result = std::future::poll_fn(|cx| splice.poll(cx)).await;
    // One side has ended: end the other too, as best it can be.
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut splice.client).await;
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut splice.node).await;
    let carried = Carried {
        to_node: splice.to_node.carried,
        to_client: splice.to_client.carried,
    };
    (carried, result)
}

struct Splice<C, N, F, A> {
    client: C,
    node: N,
    to_node: Half,
    to_client: Half,
    on_traffic: F,
    admit: A,
}

impl<C, N, F, A> Splice<C, N, F, A>
where
    C: AsyncRead + AsyncWrite + Unpin,
    N: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(),
    A: FnMut(&[u8]) -> bool,
{
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let up = self.to_node.poll(
            &mut self.client,
            &mut self.node,
            cx,
            &mut self.on_traffic,
            &mut self.admit,
        )?;
        let down = self.to_client.poll(
            &mut self.node,
            &mut self.client,
            cx,
            &mut self.on_traffic,
            &mut |_: &[u8]| true,
        )?;
        if up.is_ready() || down.is_ready() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

/// One direction of a splice.
#[derive(Default)]
struct Half {
    /// Bytes read that the writer has not taken yet; empty (unallocated) most of the time.
    pending: Vec<u8>,
    written: usize,
    needs_flush: bool,
    carried: u64,
}

enum Step {
    Pending,
    Ended,
    Moved(usize),
}

impl Half {
    /// `Ready(Ok)` when `src` has ended and everything read is written.
    fn poll<R, W, F, A>(
        &mut self,
        src: &mut R,
        dst: &mut W,
        cx: &mut Context<'_>,
        on_traffic: &mut F,
        admit: &mut A,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
        F: FnMut(),
        A: FnMut(&[u8]) -> bool,
    {
        loop {
            while self.written < self.pending.len() {
                let n = ready!(Pin::new(&mut *dst).poll_write(cx, &self.pending[self.written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.written += n;
            }
            if !self.pending.is_empty() {
                self.pending = Vec::new();
                self.written = 0;
            }
            if self.needs_flush {
                ready!(Pin::new(&mut *dst).poll_flush(cx))?;
                self.needs_flush = false;
            }
            match self.read_through(src, dst, cx, admit)? {
                Step::Pending => return Poll::Pending,
                Step::Ended => return Poll::Ready(Ok(())),
                Step::Moved(n) => {
                    self.carried += n as u64;
                    self.needs_flush = true;
                    on_traffic();
                }
            }
        }
    }

    /// Read what `src` has into the thread's scratch buffer and, if `admit` lets it, write as
    /// much of it to `dst` as it takes now; keep the rest.
    fn read_through<R, W, A>(
        &mut self,
        src: &mut R,
        dst: &mut W,
        cx: &mut Context<'_>,
        admit: &mut A,
    ) -> io::Result<Step>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
        A: FnMut(&[u8]) -> bool,
    {
        SCRATCH.with(|cell| {
            let Ok(mut scratch) = cell.try_borrow_mut() else {
                // Only a tunnel polled from inside another one's read could get here.
                return Err(io::Error::other("scratch buffer in use"));
            };
            let mut buf = ReadBuf::new(&mut scratch[..]);
            match Pin::new(&mut *src).poll_read(cx, &mut buf) {
                Poll::Pending => return Ok(Step::Pending),
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Ready(Ok(())) => {}
            }
            let n = buf.filled().len();
            if n == 0 {
                return Ok(Step::Ended);
            }
            let data = &scratch[..n];
            if !admit(data) {
                return Ok(Step::Moved(0));
            }
            let mut written = 0;
            while written < n {
                match Pin::new(&mut *dst).poll_write(cx, &data[written..]) {
                    Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                    Poll::Ready(Ok(k)) => written += k,
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => break,
                }
            }
            if written < n {
                self.pending = data[written..].to_vec();
                self.written = 0;
            }
            Ok(Step::Moved(n))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn splice_carries_both_ways_and_ends_when_a_side_ends() {
        let (client, mut player) = duplex(64);
        let (node, mut nakama) = duplex(64);
        let mut traffic = 0;
        let run = tokio::spawn(async move {
            let (carried, result) = splice(client, node, || traffic += 1, |_| true).await;
            (carried, result.is_ok(), traffic)
        });
        // More than the duplex holds at once: the writer pushes back and the rest waits.
        let big = vec![7u8; 1000];
        let mut got = vec![0u8; 1000];
        let (sent, read) = tokio::join!(player.write_all(&big), nakama.read_exact(&mut got));
        sent.unwrap();
        read.unwrap();
        assert_eq!(got, big);
        nakama.write_all(b"pong").await.unwrap();
        let mut pong = [0u8; 4];
        player.read_exact(&mut pong).await.unwrap();
        assert_eq!(&pong, b"pong");
        drop(player);
        let (carried, ok, traffic) = run.await.unwrap();
        assert!(ok);
        assert_eq!(carried.to_node, 1000);
        assert_eq!(carried.to_client, 4);
        assert!(traffic >= 2);
        // The node's side was shut down: it reads the end.
        let mut rest = Vec::new();
        nakama.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }
}

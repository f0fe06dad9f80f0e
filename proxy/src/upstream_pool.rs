//! Idle HTTP/1.1 connections to nodes, kept for the next API request of [`crate::h1_api`].
//!
//! ```text
//!   h1_api ── take(node address) ──► an idle connection that is still open, else None (connect)
//!          ◄─ put(node address, connection) ── after a complete response the node kept alive
//! ```
//!
//! One pool per worker thread: a connection is registered with its thread's reactor, and a
//! thread's tasks never run elsewhere (`work_stealing = false`), so nothing here is locked or
//! shared. A connection idle for [`UPSTREAM_IDLE`] is closed, as are those over
//! [`MAX_IDLE_PER_NODE`]; whether one is still open is known without a system call unless the
//! node has sent something (normally its close) since the last response.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use tokio::net::TcpStream;

use crate::pool::UPSTREAM_IDLE;

/// Idle connections kept per node and worker thread.
pub const MAX_IDLE_PER_NODE: usize = 256;

struct Idle {
    stream: TcpStream,
    since: Instant,
}

#[derive(Default)]
struct Pools {
    by_node: HashMap<SocketAddr, Vec<Idle>>,
    /// When expired connections of every node were last closed.
    swept: Option<Instant>,
}

thread_local! {
    static POOLS: RefCell<Pools> = RefCell::new(Pools::default());
}

/// Whether an idle connection can carry a request: the node has neither closed it nor sent
/// anything unasked.
fn still_open(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        // No readiness since the last read ran dry: nothing arrived, not even a FIN.
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        // Readiness left over from the last response, or the node's close: ask the socket.
        Poll::Ready(Ok(())) => {
            let mut byte = [0u8; 1];
            matches!(stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        }
    }
}

/// An idle connection to the node at `addr` that is still open, the most recently used
/// first.
pub fn take(addr: SocketAddr) -> Option<TcpStream> {
    POOLS.with(|pools| {
        let mut pools = pools.borrow_mut();
        let idle = pools.by_node.get_mut(&addr)?;
        while let Some(Idle { stream, since }) = idle.pop() {
            if since.elapsed() < UPSTREAM_IDLE && still_open(&stream) {
                return Some(stream);
            }
        }
        None
    })
}

/// Keep `stream`, whose last response was complete, for the next request to `addr`.
pub fn put(addr: SocketAddr, stream: TcpStream) {
    POOLS.with(|pools| {
        let mut pools = pools.borrow_mut();
        let now = Instant::now();
        // Now and then, close what has been idle too long, for every node (one that left the
        // config included).
        if pools
            .swept
            .is_none_or(|at| now.duration_since(at) > UPSTREAM_IDLE / 5)
        {
            pools.swept = Some(now);
            pools.by_node.retain(|_, idle| {
                idle.retain(|c| now.duration_since(c.since) < UPSTREAM_IDLE);
                !idle.is_empty()
            });
        }
        let idle = pools.by_node.entry(addr).or_default();
        if idle.len() >= MAX_IDLE_PER_NODE {
            // The oldest goes.
            idle.remove(0);
        }
        idle.push(Idle { stream, since: now });
    })
}

/// Idle connections held by this thread (for tests).
pub fn idle_here(addr: SocketAddr) -> usize {
    POOLS.with(|pools| pools.borrow().by_node.get(&addr).map_or(0, Vec::len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Whether the most recently kept connection to `addr` still looks open.
    fn newest_open(addr: SocketAddr) -> bool {
        POOLS.with(|p| {
            p.borrow()
                .by_node
                .get(&addr)
                .and_then(|idle| idle.last())
                .is_some_and(|c| still_open(&c.stream))
        })
    }

    #[tokio::test]
    async fn a_connection_the_node_closed_is_passed_over() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let a = TcpStream::connect(addr).await.unwrap();
        let (mut node_a, _) = listener.accept().await.unwrap();
        let b = TcpStream::connect(addr).await.unwrap();
        let (node_b, _) = listener.accept().await.unwrap();
        put(addr, a);
        put(addr, b);
        assert_eq!(idle_here(addr), 2);
        assert!(newest_open(addr));

        // The node closes the newest; once its FIN is in, the next request gets the other.
        drop(node_b);
        let deadline = Instant::now() + Duration::from_secs(10);
        while newest_open(addr) {
            assert!(Instant::now() < deadline, "the close never showed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut s = take(addr).expect("the open connection");
        assert_eq!(idle_here(addr), 0, "the closed one is dropped, not kept");
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        node_a.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        assert!(take(addr).is_none());

        // A connection whose node sent something unasked is not reused either.
        put(addr, s);
        node_a.write_all(b"junk").await.unwrap();
        while newest_open(addr) {
            assert!(Instant::now() < deadline, "the bytes never showed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(take(addr).is_none());
    }
}

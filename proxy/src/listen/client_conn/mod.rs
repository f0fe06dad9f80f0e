//! A player's connection as the edge holds it: the stream (TLS or TCP) hyper reads and
//! writes, with the deadlines hyper does not keep, the per-IP connection slot it occupies, and
//! a WebSocket's close frame.
//!
//! ```text
//!   phase            deadline on reads                                   entered by
//!   AwaitingHeader   nothing yet: http_idle after the last answer         accept; each answer's end
//!                    (a new connection: request_header after accept)
//!                    a head begun: request_header after its first byte
//!                    pipelined bytes: request_header after the last answer
//!   Proxying         none (the request path times the body and the node)  the request path
//!   WebSocket        websocket_idle after the last client byte            the upgrade
//! ```
//!
//! hyper parses every byte; its own header timer would also cut idle keep-alive connections,
//! so the edge keeps `request_header` and `http_idle` apart here. To tell an idle connection
//! from one holding the start of a pipelined request in hyper's buffer, this wrapper counts
//! the bytes it hands hyper and notes where each request head ends ([`HeadEnd`], which agrees
//! with hyper's parser on where a head ends; it is fuzzed against it): a request's message ends
//! at its head plus its body length, and bytes read past that end were pipelined. A client
//! whose bytes cannot be placed so (a chunked body, pipelining) is timed as pipelining from
//! then on: its next head has `request_header` from the end of each answer.
//!
//! A request refused before its body was read (413, 408, 400) marks the connection
//! ([`ConnState::linger_on_close`]); when hyper drops it, its stream goes to a task that closes
//! its side, then reads and drops what the client still sends ([`LINGER`], [`LINGER_BYTES`]).
//!
//! Its parts, one job each:
//!
//! ```text
//!   ClientConn ─ inner: Transport    TCP or rustls: what hyper reads and writes (transport)
//!              ├ state: ConnState    shared with the request path: phase, offsets, deadlines (shared)
//!              ├ clock: Clock        the phase's deadline and its Timer, where a head ends (clock,
//!              │                     timer, head_end)
//!              ├ ws: WsOut           a WebSocket's frame ends, and its close frame (ws_out)
//!              └ held: Held          the per-IP slot and the open gauge, until closed (linger)
//! ```

mod clock;
mod head_end;
mod linger;
mod shared;
mod timer;
mod transport;
mod ws_out;

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::limits::ConnectionSlot;
use crate::ops::metrics::OpenConnection;

use self::clock::Clock;
use self::linger::{linger, Held};
use self::ws_out::WsOut;

pub use self::head_end::HeadEnd;
pub use self::linger::{LINGER, LINGER_BYTES};
pub use self::shared::{ConnState, Deadlines, Phase};
pub use self::transport::Transport;

/// A player's connection. Built by the accept path; the request path reaches its shared
/// state through [`ClientConn::state`].
pub struct ClientConn {
    inner: Transport,
    state: Arc<ConnState>,
    clock: Clock,
    ws: WsOut,
    held: Held,
}

impl ClientConn {
    /// Wrap `inner`, holding `slot` (the client's connection limit) and `open` (the listener's
    /// gauge) until it closes. `h2`: an HTTP/2 connection, which has no head deadlines here.
    pub fn new(
        inner: Transport,
        h2: bool,
        deadlines: Deadlines,
        slot: Option<ConnectionSlot>,
        open: Option<OpenConnection>,
    ) -> ClientConn {
        let phase = if h2 {
            Phase::Proxying
        } else {
            Phase::AwaitingHeader
        };
        ClientConn {
            inner,
            state: Arc::new(ConnState::new(phase, deadlines)),
            clock: Clock::new(phase, h2),
            ws: WsOut::new(),
            held: Held::new(slot, open),
        }
    }

    /// What the request path shares with this connection.
    pub fn state(&self) -> &Arc<ConnState> {
        &self.state
    }

    /// What the connection travels over.
    pub fn transport(&self) -> &Transport {
        &self.inner
    }

    /// Drive a requested close frame: `Ready(true)` once it is out.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        self.ws.poll_close(self.state.closer(), &mut self.inner, cx)
    }
}

impl AsyncRead for ClientConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let phase = match this.clock.check(&this.state, cx) {
            Ok(phase) => phase,
            Err(e) => return Poll::Ready(Err(e)),
        };
        if phase == Phase::WebSocket {
            this.state.closer().register(cx.waker());
            // Once the close frame is out, the client's side has ended.
            if std::task::ready!(this.poll_close(cx))? {
                return Poll::Ready(Ok(()));
            }
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let read = &buf.filled()[before..];
            if !read.is_empty() {
                this.clock.read(&this.state, phase, read);
            }
        }
        result
    }
}

impl AsyncWrite for ClientConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.clock.sync(&this.state) != Phase::WebSocket {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        // After the close frame nothing more goes to the client.
        if std::task::ready!(this.poll_close(cx))? {
            return Poll::Ready(Ok(buf.len()));
        }
        let n = std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.ws.wrote(&buf[..n], this.state.closer());
        Poll::Ready(Ok(n))
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.clock.sync(&this.state) == Phase::WebSocket {
            // Frame boundaries are tracked one buffer at a time.
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| b);
            return self.poll_write(cx, first);
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Drop for ClientConn {
    fn drop(&mut self) {
        if !self.state.lingers() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let stream = std::mem::replace(&mut self.inner, Transport::Closed);
        // The client's connection limit and the listener's gauge still count it meanwhile.
        runtime.spawn(linger(stream, std::mem::take(&mut self.held)));
    }
}

impl fmt::Debug for ClientConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConn")
            .field("phase", &self.state.phase())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future as _;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::time::Instant;

    fn deadlines(request_header: u64, http_idle: u64) -> Deadlines {
        Deadlines {
            request_header: Duration::from_secs(request_header),
            http_idle: Duration::from_secs(http_idle),
            websocket_idle: Duration::from_secs(120),
        }
    }

    /// A connected pair: the edge's side wrapped in a `ClientConn`, and the client's socket.
    async fn pair(d: Deadlines) -> (ClientConn, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let stream = Transport::Tcp(server);
        (ClientConn::new(stream, false, d, None, None), client)
    }

    #[tokio::test]
    async fn a_request_with_its_body_leaves_nothing_pipelined_and_more_bytes_do() {
        for (sent, pipelined) in [
            (
                &b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"[..],
                false,
            ),
            (
                b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhiG",
                true,
            ),
        ] {
            let (mut conn, mut client) = pair(deadlines(10, 60)).await;
            client.write_all(sent).await.unwrap();
            let mut got = vec![0u8; sent.len()];
            conn.read_exact(&mut got).await.unwrap();
            let state = conn.state().clone();
            state.start_request(Some(2));
            state.request_done(deadlines(10, 60), Instant::now());
            assert_eq!(state.pipelined(), pipelined);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_has_http_idle_and_a_begun_head_request_header() {
        let (mut conn, mut client) = pair(deadlines(10, 60)).await;
        let state = conn.state().clone();
        let mut buf = [0u8; 64];
        // The first request, then its answer: the connection idles.
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let n = conn.read(&mut buf).await.unwrap();
        assert_eq!(n, 18);
        state.start_request(Some(0));
        state.request_done(deadlines(10, 60), Instant::now());
        // 50 s of silence is within http_idle...
        tokio::time::sleep(Duration::from_secs(50)).await;
        client.write_all(b"G").await.unwrap();
        assert_eq!(conn.read(&mut buf).await.unwrap(), 1);
        // ...and the head begun then has request_header.
        let begun = Instant::now();
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let waited = begun.elapsed();
        assert!(
            waited >= Duration::from_secs(9) && waited <= Duration::from_secs(11),
            "{waited:?}"
        );
    }

    /// A waker that notes when it was woken.
    struct Woken(std::sync::Mutex<Option<Instant>>);

    impl std::task::Wake for Woken {
        fn wake(self: Arc<Self>) {
            let mut at = self.0.lock().unwrap();
            at.get_or_insert_with(Instant::now);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_deadline_holds_when_nothing_reads_after_the_answer() {
        // http_idle (1 s) shorter than request_header (10 s): the timer armed for the first
        // head must not be what ends an idle connection.
        let (mut conn, mut client) = pair(deadlines(10, 1)).await;
        let state = conn.state().clone();
        let mut buf = [0u8; 64];
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(conn.read(&mut buf).await.unwrap(), 18);
        state.start_request(Some(0));
        // hyper reads during a request, to notice a client leaving, and is left waiting...
        let woken = Arc::new(Woken(std::sync::Mutex::new(None)));
        let waker = std::task::Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let read = conn.read(&mut buf);
        tokio::pin!(read);
        assert!(read.as_mut().poll(&mut cx).is_pending());
        // ...and reads again only when woken, once the answer is out.
        state.request_done(deadlines(10, 1), Instant::now());
        let answered = Instant::now();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let at = woken.0.lock().unwrap().expect("the connection was woken");
        assert!(
            at - answered <= Duration::from_secs(2),
            "{:?}",
            at - answered
        );
        let ended = read.as_mut().poll(&mut cx);
        assert!(
            matches!(&ended, Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::TimedOut),
            "{ended:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pipelined_bytes_have_request_header_from_the_answer() {
        let (mut conn, mut client) = pair(deadlines(10, 60)).await;
        let state = conn.state().clone();
        let mut buf = [0u8; 64];
        client.write_all(b"GET / HTTP/1.1\r\n\r\nG").await.unwrap();
        assert_eq!(conn.read(&mut buf).await.unwrap(), 19);
        state.start_request(Some(0));
        state.request_done(deadlines(10, 60), Instant::now());
        let answered = Instant::now();
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(answered.elapsed() <= Duration::from_secs(11));
    }

    #[tokio::test]
    async fn a_refused_body_is_read_and_dropped_before_the_connection_closes() {
        for linger in [true, false] {
            let (conn, mut client) = pair(deadlines(10, 60)).await;
            if linger {
                conn.state().linger_on_close();
            }
            drop(conn);
            // The client is still sending its body after the answer went out.
            let sent = client.write_all(&vec![b'7'; 4 << 20]).await;
            let mut rest = Vec::new();
            let read = client.read_to_end(&mut rest).await;
            if linger {
                sent.unwrap();
                assert_eq!(read.unwrap(), 0, "a clean close, not a reset");
            } else {
                // What a client sees otherwise, and what lingering is for.
                assert!(sent.is_err() || read.is_err());
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_websocket_is_closed_after_its_own_timeout_only() {
        let (mut conn, mut client) = pair(deadlines(10, 60)).await;
        conn.state().enter_websocket(Duration::from_secs(120));
        let mut buf = [0u8; 16];
        // Traffic at 100 s keeps it open past the first 120 s...
        tokio::time::sleep(Duration::from_secs(100)).await;
        client.write_all(b"x").await.unwrap();
        assert_eq!(conn.read(&mut buf).await.unwrap(), 1);
        let quiet_from = Instant::now();
        // ...and 120 s of silence after that closes it.
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let waited = quiet_from.elapsed();
        assert!(
            waited >= Duration::from_secs(120) && waited < Duration::from_secs(121),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_head_has_a_deadline_from_its_first_byte() {
        let (mut conn, mut client) = pair(deadlines(10, 60)).await;
        let mut buf = [0u8; 16];
        // Bytes keep coming, one a second, but the head is never finished.
        let started = Instant::now();
        let err = loop {
            client.write_all(b"a").await.unwrap();
            match tokio::time::timeout(Duration::from_secs(1), conn.read(&mut buf)).await {
                Ok(Ok(_)) => tokio::time::sleep(Duration::from_secs(1)).await,
                Ok(Err(e)) => break e,
                Err(_) => {}
            }
            assert!(started.elapsed() < Duration::from_secs(60), "never cut off");
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() <= Duration::from_secs(11));

        // Proxying has no such deadline.
        conn.state().start_request(None);
        tokio::time::sleep(Duration::from_secs(30)).await;
        client.write_all(b"b").await.unwrap();
        assert!(conn.read(&mut buf).await.is_ok());
    }
}

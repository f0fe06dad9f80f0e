//! WebSockets past their upgrade: the edge's own, lean path from a player to a Nakama node.
//!
//! ```text
//!   request_filter (WebSocket route, HTTP/1.1)
//!        │  request_head ──► node (a fresh TCP connection; nothing pooled)
//!        │  read_response_head ◄── node
//!        ├─ not 101: answered through pingora's session like any response
//!        └─ 101: the client's stream leaves pingora's session (a `Replay` takes its place so
//!                pingora can finish and log the request), and `splice` copies both ways
//! ```
//!
//! Why not leave the socket in pingora's session: an upgraded connection there keeps the whole
//! HTTP session, its task and two 64 KiB body buffers for its life (about 80 KiB resident per
//! idle WebSocket; BENCHMARKS.md). Here an idle socket holds its TLS state, two sockets and a
//! small task: reads go through one scratch buffer per thread, and a connection keeps bytes
//! of its own only while its peer is not taking them.

use std::cell::RefCell;
use std::io::{self, Cursor};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::SslDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use pingora_http::{RequestHeader, ResponseHeader};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::headers;

/// The largest response head a node may send to an upgrade request.
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// The largest body of a refused upgrade (Nakama's are a few hundred bytes of JSON).
pub const MAX_REFUSAL_BODY: usize = 256 * 1024;
/// The per-thread buffer every tunnel on the thread reads through.
const SCRATCH_BYTES: usize = 16 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice());
}

/// The request head sent to the node: the client's, minus address claims and hop-by-hop
/// headers other than the upgrade's own (see [`crate::headers`]), plus X-Forwarded-For (the
/// client's address) and X-Forwarded-Proto.
pub fn request_head(req: &RequestHeader, client: Option<IpAddr>, proto: &str) -> Vec<u8> {
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut head = Vec::with_capacity(512 + path.len());
    head.extend_from_slice(req.method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(path.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers.iter() {
        // The upgrade's own Connection and Upgrade go to the node; no other hop-by-hop
        // header, no address claim and no X-Forwarded-Proto of the client's does.
        let name_str = name.as_str();
        if !(headers::crosses_edge(name_str) || name_str == "connection" || name_str == "upgrade") {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    headers::write_forwarded(&mut head, client, proto);
    head
}

/// A node's answer to an upgrade request, as read off the wire.
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The head exactly as the node sent it (what a 101 forwards).
    pub raw_head: Bytes,
    /// The head, parsed (what a refusal is answered with).
    pub header: ResponseHeader,
    /// How the body of a refusal is framed.
    pub framing: Framing,
    /// Bytes the node sent after the head in the same reads.
    pub after_head: BytesMut,
}

/// How a refusal's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// After this many bytes.
    Length(usize),
    /// When the node closes the connection.
    Close,
    /// In chunks, which this path does not relay.
    Chunked,
}

fn bad_answer(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

/// Read the node's response head (at most 16 KiB, 64 headers).
pub async fn read_answer<R: AsyncRead + Unpin>(node: &mut R) -> io::Result<Answer> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if node.read_buf(&mut buf).await? == 0 {
            return Err(bad_answer("node closed before answering"));
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let parsed = resp
            .parse(&buf)
            .map_err(|e| bad_answer(format!("node's answer: {e}")))?;
        let httparse::Status::Complete(len) = parsed else {
            if buf.len() > MAX_RESPONSE_HEAD {
                return Err(bad_answer("node's answer head too large"));
            }
            continue;
        };
        let status = resp.code.ok_or_else(|| bad_answer("no status"))?;
        let mut header = ResponseHeader::build(status, Some(resp.headers.len()))
            .map_err(|e| bad_answer(e.to_string()))?;
        let mut framing = Framing::Close;
        for h in resp.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let n = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or_else(|| bad_answer("bad content-length"))?;
                framing = Framing::Length(n);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                framing = Framing::Chunked;
            }
            header
                .append_header(h.name.to_string(), h.value)
                .map_err(|e| bad_answer(e.to_string()))?;
        }
        let after_head = buf.split_off(len);
        return Ok(Answer {
            status,
            raw_head: buf.freeze(),
            header,
            framing,
            after_head,
        });
    }
}

impl Answer {
    /// The body of a refusal (any answer but 101), read to its end (at most 256 KiB).
    pub async fn body<R: AsyncRead + Unpin>(&mut self, node: &mut R) -> io::Result<Bytes> {
        let mut body = std::mem::take(&mut self.after_head);
        match self.framing {
            Framing::Chunked => return Err(bad_answer("chunked answer to an upgrade")),
            Framing::Length(n) if n > MAX_REFUSAL_BODY => {
                return Err(bad_answer("answer body too large"))
            }
            Framing::Length(n) => {
                while body.len() < n {
                    if node.read_buf(&mut body).await? == 0 {
                        return Err(bad_answer("node closed mid-body"));
                    }
                }
                body.truncate(n);
            }
            Framing::Close => {
                while node.read_buf(&mut body).await? != 0 {
                    if body.len() > MAX_REFUSAL_BODY {
                        return Err(bad_answer("answer body too large"));
                    }
                }
            }
        }
        Ok(body.freeze())
    }
}

/// What pingora's session holds once the client's stream has left it: the request head to
/// read again, and the original connection's digests, so the session still parses, logs and
/// reports the same request and client. Writes go nowhere.
#[derive(Debug)]
pub struct Replay {
    head: Cursor<Bytes>,
    ssl: Option<Arc<SslDigest>>,
    socket: Option<Arc<SocketDigest>>,
    proxy: Option<Arc<ProxyDigest>>,
    id: UniqueIDType,
}

impl Replay {
    /// A stand-in for `stream`, replaying `head`.
    pub fn new(head: Bytes, stream: &Stream) -> Replay {
        Replay {
            head: Cursor::new(head),
            ssl: stream.get_ssl_digest(),
            socket: stream.get_socket_digest(),
            proxy: stream.get_proxy_digest(),
            id: stream.id(),
        }
    }
}

impl AsyncRead for Replay {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Once the head is read, the end of the stream.
        Pin::new(&mut self.head).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[async_trait]
impl Shutdown for Replay {
    async fn shutdown(&mut self) {}
}

impl UniqueID for Replay {
    fn id(&self) -> UniqueIDType {
        self.id
    }
}

impl Ssl for Replay {
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.ssl.clone()
    }
}

impl GetTimingDigest for Replay {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        Vec::new()
    }
}

impl GetProxyDigest for Replay {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.proxy.clone()
    }
}

impl GetSocketDigest for Replay {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.socket.clone()
    }
}

impl Peek for Replay {}

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

    #[test]
    fn the_node_gets_the_client_head_with_the_edge_forwarding_headers() {
        let mut req = RequestHeader::build("GET", b"/ws?token=abc&status=true", None).unwrap();
        req.insert_header("host", "play.example.com").unwrap();
        req.insert_header("upgrade", "websocket").unwrap();
        req.insert_header("x-forwarded-for", "6.6.6.6").unwrap();
        req.insert_header("x_real_ip", "6.6.6.7").unwrap();
        req.insert_header("keep-alive", "timeout=300").unwrap();
        req.insert_header("x-forwarded-proto", "http").unwrap();
        let head = request_head(&req, Some("127.0.0.2".parse().unwrap()), "https");
        let text = String::from_utf8(head).unwrap();
        assert!(text.starts_with("GET /ws?token=abc&status=true HTTP/1.1\r\n"));
        assert!(text.contains("host: play.example.com\r\n"));
        assert!(text.contains("upgrade: websocket\r\n"));
        assert!(text.contains("x-forwarded-for: 127.0.0.2\r\n"));
        assert!(!text.contains("6.6.6.6") && !text.contains("6.6.6.7"));
        assert!(!text.contains("keep-alive"));
        assert!(text.ends_with("x-forwarded-proto: https\r\n\r\n"));
        assert_eq!(
            text.matches("x-forwarded-proto").count(),
            1,
            "the edge's only"
        );
    }

    async fn answer_of(wire: &'static [u8]) -> io::Result<(Answer, Bytes)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            if let Ok((mut s, _)) = listener.accept().await {
                let _ = s.write_all(wire).await;
            }
        });
        let mut node = tokio::net::TcpStream::connect(addr).await?;
        let mut answer = read_answer(&mut node).await?;
        let body = if answer.status == 101 {
            Bytes::new()
        } else {
            answer.body(&mut node).await?
        };
        Ok((answer, body))
    }

    #[tokio::test]
    async fn a_101_keeps_its_head_verbatim_and_the_bytes_after_it() {
        let (answer, _) = answer_of(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi",
        )
        .await
        .unwrap();
        assert_eq!(answer.status, 101);
        assert!(answer.raw_head.ends_with(b"Connection: Upgrade\r\n\r\n"));
        assert_eq!(&answer.after_head[..], b"\x81\x02hi");
    }

    #[tokio::test]
    async fn a_refusal_is_read_to_its_length() {
        let (answer, body) = answer_of(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n{\"code\":16,\"a\":1}",
        )
        .await
        .unwrap();
        assert_eq!(answer.status, 401);
        assert_eq!(&body[..], b"{\"code\":16,\"a\":1}");
        assert_eq!(
            answer.header.headers.get("content-type").unwrap(),
            "application/json"
        );
    }

    #[tokio::test]
    async fn garbage_and_chunked_refusals_are_errors_not_panics() {
        assert!(answer_of(b"SSH-2.0-OpenSSH\r\n\r\n").await.is_err());
        assert!(answer_of(b"").await.is_err());
        assert!(answer_of(
            b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        )
        .await
        .is_err());
    }

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

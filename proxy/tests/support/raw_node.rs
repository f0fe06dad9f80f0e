//! A raw node: a TCP listener on loopback that records every byte each connection brings, and
//! answers each request with exactly the bytes a test scripts. Health checks get a plain 200
//! `{}` and are not shown to the script. What the edge sent is parsed here, by the test, so
//! that a test can tell how many requests reached the node, and how each was framed.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as the node read it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Which connection (in accept order) carried it.
    pub conn: usize,
    /// The head, as text.
    pub head: String,
    /// The body, as framed by the head.
    pub body: Vec<u8>,
}

impl Seen {
    /// A header's value (the first of its name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// How many header lines have this name.
    pub fn count(&self, name: &str) -> usize {
        self.head
            .lines()
            .skip(1)
            .filter(|l| {
                l.split_once(':')
                    .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            })
            .count()
    }

    /// The request line's target.
    pub fn target(&self) -> &str {
        self.head.split_whitespace().nth(1).unwrap_or("")
    }
}

/// What the node does with a request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Write these bytes, then read on.
    Send(Vec<u8>),
    /// Write these bytes, then close the connection.
    SendAndClose(Vec<u8>),
    /// Write these bytes, then close this side, and count the connection open until the
    /// edge closes its side.
    SendAndHalfClose(Vec<u8>),
    /// Close the connection without a word.
    Close,
    /// Say nothing, and keep the connection open.
    Hang,
}

/// `HTTP/1.1 200 OK` with a `{}` body.
pub fn ok() -> Reply {
    Reply::Send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}".to_vec())
}

type Script = dyn Fn(&Seen, usize) -> Reply + Send + Sync;

#[derive(Default)]
struct Log {
    /// Every byte each connection brought, in accept order.
    connections: Vec<Vec<u8>>,
    /// The requests the script answered (health checks aside).
    requests: Vec<Seen>,
    /// Connections open now.
    open: usize,
}

/// A raw node, stopped when dropped.
pub struct RawNode {
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where a whole request ends in `buf`, if it is there: its head's length and body's span.
fn request_end(buf: &[u8]) -> Option<(usize, std::ops::Range<usize>)> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    let length = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        })
        .unwrap_or(0);
    (buf.len() >= head + length).then_some((head, head..head + length))
}

impl RawNode {
    /// A node answering every request as `script` says (`n`: the request's number among
    /// those the script saw, from 0).
    pub async fn start(script: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) -> RawNode {
        let listener = TcpListener::bind(("127.0.0.1", super::free_port()))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        let script: Arc<Script> = Arc::new(script);
        let task = {
            let log = log.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let conn = {
                        let mut log = log.lock().unwrap();
                        log.connections.push(Vec::new());
                        log.open += 1;
                        log.connections.len() - 1
                    };
                    tokio::spawn(serve(stream, conn, log.clone(), script.clone()));
                }
            })
        };
        RawNode { addr, log, task }
    }

    /// Its `[[nodes]]` entry.
    pub fn toml(&self, name: &str) -> String {
        format!(
            "[[nodes]]\nname = \"{name}\"\naddress = \"{}\"\n",
            self.addr
        )
    }

    /// The requests the script answered.
    pub fn requests(&self) -> Vec<Seen> {
        self.log.lock().unwrap().requests.clone()
    }

    /// Every byte connection `conn` brought.
    pub fn bytes_of(&self, conn: usize) -> Vec<u8> {
        self.log.lock().unwrap().connections[conn].clone()
    }

    /// Connections open now (health checks' included).
    pub fn open(&self) -> usize {
        self.log.lock().unwrap().open
    }
}

async fn serve(mut stream: TcpStream, conn: usize, log: Arc<Mutex<Log>>, script: Arc<Script>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    'read: loop {
        let n = stream.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        log.lock().unwrap().connections[conn].extend_from_slice(&chunk[..n]);
        while let Some((head, body)) = request_end(&buf) {
            let seen = Seen {
                conn,
                head: String::from_utf8_lossy(&buf[..head]).into_owned(),
                body: buf[body.clone()].to_vec(),
            };
            buf.drain(..body.end);
            let reply = if seen.target().starts_with("/healthcheck") {
                Reply::SendAndClose(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}".to_vec(),
                )
            } else {
                let n = {
                    let mut log = log.lock().unwrap();
                    log.requests.push(seen.clone());
                    log.requests.len() - 1
                };
                script(&seen, n)
            };
            match reply {
                Reply::Send(bytes) => {
                    if stream.write_all(&bytes).await.is_err() {
                        break 'read;
                    }
                }
                Reply::SendAndClose(bytes) => {
                    let _ = stream.write_all(&bytes).await;
                    break 'read;
                }
                Reply::SendAndHalfClose(bytes) => {
                    let _ = stream.write_all(&bytes).await;
                    let _ = stream.shutdown().await;
                    while stream.read(&mut chunk).await.unwrap_or(0) > 0 {}
                    break 'read;
                }
                Reply::Close => break 'read,
                Reply::Hang => {}
            }
        }
    }
    let _ = stream.shutdown().await;
    drop(stream);
    log.lock().unwrap().open -= 1;
}

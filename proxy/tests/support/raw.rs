//! A raw HTTP/1.1 client: requests written byte for byte as a test gives them, answers read
//! and parsed here (so that a test sees exactly what the edge sent, framing included).

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// One response as read off the wire.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// What the stand-in saw of the request (`whoami`).
    pub fn seen(&self) -> Value {
        let v: Value = serde_json::from_slice(&self.body).unwrap();
        serde_json::from_str(v["payload"].as_str().unwrap()).unwrap()
    }
}

/// A raw HTTP/1.1 client connection: requests written as given, answers parsed here.
pub struct Raw<S> {
    pub stream: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    pub fn new(stream: S) -> Self {
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    pub async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16384];
        let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
            .await
            .expect("an answer within 10 s")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// The next answer; `head_request`: it has no body whatever its head says.
    pub async fn answer_to(&mut self, head_request: bool) -> Answer {
        let (status, headers, len) = loop {
            let mut h = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut h);
            if let httparse::Status::Complete(len) = resp.parse(&self.buf).unwrap() {
                let headers = resp
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect::<Vec<_>>();
                break (resp.code.unwrap(), headers, len);
            }
            assert!(self.fill().await > 0, "closed before an answer");
        };
        self.buf.drain(..len);
        let mut answer = Answer {
            status,
            headers,
            body: Vec::new(),
        };
        if head_request {
            return answer;
        }
        if answer
            .header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"))
        {
            loop {
                let line_end = loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    assert!(self.fill().await > 0, "closed mid-chunk");
                };
                let size = usize::from_str_radix(
                    std::str::from_utf8(&self.buf[..line_end]).unwrap().trim(),
                    16,
                )
                .unwrap();
                while self.buf.len() < line_end + 2 + size + 2 {
                    assert!(self.fill().await > 0, "closed mid-chunk");
                }
                answer
                    .body
                    .extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
                self.buf.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    return answer;
                }
            }
        }
        let length: usize = answer
            .header("content-length")
            .map(|v| v.parse().unwrap())
            .unwrap_or(0);
        while self.buf.len() < length {
            assert!(self.fill().await > 0, "closed mid-body");
        }
        answer.body = self.buf.drain(..length).collect();
        answer
    }

    pub async fn answer(&mut self) -> Answer {
        self.answer_to(false).await
    }

    /// Whether the edge has closed the connection (EOF, nothing more), within 10 s.
    pub async fn closed(&mut self) -> bool {
        self.buf.is_empty() && self.fill().await == 0
    }
}

//! PROXY protocol (v1 text and v2 binary) from trusted load balancers: the client address it
//! carries replaces the peer's for the firewall, the limits, the logs and X-Forwarded-For.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ppp::{v1, v2, HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The longest header either version may send (v1: 107 bytes; v2: 16 + addresses and TLVs).
const MAX_HEADER: usize = 1024;
/// The longest v1 header line, CRLF included.
const V1_MAX: usize = 107;

/// What a PROXY header claims the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The connection is relayed for this client.
    Client(SocketAddr),
    /// The proxy's own connection (v2 LOCAL, v1 UNKNOWN, or a non-IP family): keep the peer.
    Local,
}

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// Not a PROXY header.
    #[error("invalid PROXY protocol header: {0}")]
    Invalid(String),
    /// The connection ended or failed first.
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
    /// It took too long.
    #[error("no complete PROXY protocol header within {0:?}")]
    Timeout(Duration),
}

/// Parse the start of a connection: `Ok(None)` when more bytes are needed, else the origin
/// and the header's length.
pub fn parse(buf: &[u8]) -> Result<Option<(Claim, usize)>, ProxyHeaderError> {
    let result = HeaderResult::parse(buf);
    // ppp calls some malformed v1 lines incomplete; a v1 header ends at its CRLF (within 107
    // bytes), so with a CRLF (or 107 bytes) in hand, an unfinished parse is a bad header.
    let v1_line_done = matches!(result, HeaderResult::V1(_))
        && (buf.windows(2).take(V1_MAX).any(|w| w == b"\r\n") || buf.len() >= V1_MAX);
    if result.is_incomplete() && v1_line_done {
        return Err(ProxyHeaderError::Invalid("malformed v1 header".into()));
    }
    if result.is_incomplete() {
        return if buf.len() >= MAX_HEADER {
            Err(ProxyHeaderError::Invalid("header too long".into()))
        } else {
            Ok(None)
        };
    }
    let addr = |ip: IpAddr, port: u16| Claim::Client(SocketAddr::new(ip, port));
    match result {
        HeaderResult::V1(Ok(h)) => {
            let origin = match h.addresses {
                v1::Addresses::Tcp4(a) => addr(a.source_address.into(), a.source_port),
                v1::Addresses::Tcp6(a) => addr(a.source_address.into(), a.source_port),
                v1::Addresses::Unknown => Claim::Local,
            };
            Ok(Some((origin, h.header.len())))
        }
        HeaderResult::V2(Ok(h)) => {
            let origin = match (h.command, h.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    addr(a.source_address.into(), a.source_port)
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    addr(a.source_address.into(), a.source_port)
                }
                _ => Claim::Local,
            };
            Ok(Some((origin, h.len())))
        }
        HeaderResult::V1(Err(e)) => Err(ProxyHeaderError::Invalid(e.to_string())),
        HeaderResult::V2(Err(e)) => Err(ProxyHeaderError::Invalid(e.to_string())),
    }
}

/// Read the PROXY header at the start of `stream`, and nothing past it: the header is looked
/// at in the socket's buffer (peeked), then only its own bytes are taken.
pub async fn read_header(
    stream: &mut TcpStream,
    limit: Duration,
) -> Result<Claim, ProxyHeaderError> {
    let mut buf = [0u8; MAX_HEADER];
    let read = async {
        let mut seen = 0;
        loop {
            let n = stream.peek(&mut buf).await?;
            if n == 0 {
                return Err(ProxyHeaderError::Io(
                    std::io::ErrorKind::UnexpectedEof.into(),
                ));
            }
            if let Some((origin, len)) = parse(&buf[..n])? {
                stream.read_exact(&mut buf[..len]).await?;
                return Ok(origin);
            }
            if n == seen {
                // A header in pieces (trusted load balancers send it whole): the socket stays
                // readable with what it has, so wait a moment for the rest.
                tokio::time::sleep(PIECES).await;
            }
            seen = n;
        }
    };
    tokio::time::timeout(limit, read)
        .await
        .map_err(|_| ProxyHeaderError::Timeout(limit))?
}

/// How long to wait for the rest of a PROXY header that came in pieces.
const PIECES: Duration = Duration::from_millis(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1() {
        let h = b"PROXY TCP4 198.51.100.7 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n";
        let (origin, len) = parse(h).unwrap().unwrap();
        assert_eq!(origin, Claim::Client("198.51.100.7:51234".parse().unwrap()));
        assert_eq!(&h[len..len + 3], b"GET");
        let h6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 443\r\n";
        assert_eq!(
            parse(h6).unwrap().unwrap().0,
            Claim::Client("[2001:db8::7]:51234".parse().unwrap())
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap().0,
            Claim::Local
        );
        assert!(parse(b"PROXY TCP4 198.51").unwrap().is_none(), "incomplete");
        assert!(parse(b"GET / HTTP/1.1\r\n").is_err());
        assert!(parse(b"PROXY TCP4 nonsense\r\n").is_err());
    }

    #[test]
    fn v2() {
        let header = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (
                "198.51.100.7:51234".parse::<SocketAddr>().unwrap(),
                "10.0.0.1:443".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        let mut bytes = header.clone();
        bytes.extend_from_slice(b"\x16\x03\x01");
        let (origin, len) = parse(&bytes).unwrap().unwrap();
        assert_eq!(origin, Claim::Client("198.51.100.7:51234".parse().unwrap()));
        assert_eq!(len, header.len());
        assert!(parse(&header[..10]).unwrap().is_none());
        let local = ppp::v2::Builder::new(ppp::v2::Version::Two | ppp::v2::Command::Local, 0)
            .build()
            .unwrap();
        assert_eq!(parse(&local).unwrap().unwrap().0, Claim::Local);
    }

    #[test]
    fn garbage_never_panics() {
        for input in [
            &b""[..],
            b"\r\n\r\n\0\r\nQUIT\n",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff",
            &[0xff; 2000],
        ] {
            let _ = parse(input);
        }
    }
}

//! A player's TLS connection: rustls's unbuffered connection over the accepted socket, with
//! what the HTTP layer asks of it (the TLS version, the negotiated ALPN).
//!
//! ```text
//!   accept::Entry ── accept(config, socket) ──► PlayerTls { rustls connection, socket }
//!                                                 └─► ClientConn ─► http (hyper)
//!
//!   socket ──read──► this thread's scratch ──decrypt──► the reader's buffer
//!                     └─ a record cut short: kept in `incoming` until the rest arrives
//!   writer ──encrypt──► this thread's scratch ──write──► socket
//!                                            └─ what the socket did not take: `outgoing`
//! ```
//!
//! Why not pingora's `TlsStream`: it keeps its client and server handshake futures inline
//! beside the established connection for the connection's whole life, 4.6 KiB per connection.
//! Why not tokio-rustls: its rustls connection keeps a 4 KiB record buffer per connection
//! between reads. Here records are read and encrypted in one buffer per worker thread, so an
//! idle connection holds its keys and nothing else: no buffer unless a record came in pieces,
//! a reader left decrypted bytes behind or the socket is full (BENCHMARKS.md: memory per idle
//! WebSocket).

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::server::ServerConnectionData;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, UnbufferedStatus,
};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// The most plaintext one write encrypts: two full records.
const MAX_PLAINTEXT_PER_WRITE: usize = 2 * 16 * 1024;
/// Room for the records of one write (two records' headers, content types and tags fit in
/// 1 KiB) and for one socket read beside a record cut short.
const SCRATCH_LEN: usize = 36 * 1024;
/// The most of a client's handshake flight held before it completes (rustls's own limit on a
/// handshake message is 64 KiB).
const MAX_HANDSHAKE_BUFFER: usize = 72 * 1024;
/// How much more of the client's flight is read at a time during the handshake.
const HANDSHAKE_READ: usize = 8 * 1024;

/// An established TLS connection from a player.
pub struct PlayerTls {
    io: TcpStream,
    conn: UnbufferedServerConnection,
    /// TLS bytes read but not yet processed: a record that has come in part. Empty, and not
    /// allocated, between whole records.
    incoming: Vec<u8>,
    /// Decrypted bytes a reader's buffer had no room for, from `plain_at` on.
    plain: Vec<u8>,
    plain_at: usize,
    /// TLS bytes made but not yet taken by the socket, from `outgoing_at` on.
    outgoing: Vec<u8>,
    outgoing_at: usize,
    reading: Reading,
    /// Whether this side's close_notify has been made (it goes out before the socket closes).
    close_notify_sent: bool,
    /// The negotiated TLS version's name, for the access log.
    version: &'static str,
}

/// Where the player's side of the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// Records may come.
    Open,
    /// The player sent close_notify: every byte it sent has been read.
    Closed,
    /// The socket closed without close_notify: what was read may be cut short.
    Truncated,
}

/// The buffers each worker thread reads and encrypts records in.
struct Scratch {
    /// TLS records: read from the socket, or encrypted for it.
    records: Vec<u8>,
    /// Plaintext gathered from a vectored write.
    plain: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const {
        RefCell::new(Scratch { records: Vec::new(), plain: Vec::new() })
    };
}

/// Run `f` with this thread's scratch buffers, at least `records` and `plain` long.
fn with_scratch<R>(records: usize, plain: usize, f: impl FnOnce(&mut Scratch) -> R) -> R {
    let prepare = |scratch: &mut Scratch| {
        if scratch.records.len() < records {
            scratch.records.resize(records, 0);
        }
        if scratch.plain.len() < plain {
            scratch.plain.resize(plain, 0);
        }
    };
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => {
            prepare(&mut scratch);
            f(&mut scratch)
        }
        // Not reached (no poll here polls another stream), but never a panic over it.
        Err(_) => {
            let mut own = Scratch {
                records: Vec::new(),
                plain: Vec::new(),
            };
            prepare(&mut own);
            f(&mut own)
        }
    })
}

/// Complete the TLS handshake on `socket`. A peer that closes before it completes reads as
/// `UnexpectedEof` "tls handshake eof"; a TLS failure is rustls's error text (after the alert
/// that says so has been sent to the peer).
pub async fn accept(config: &Arc<ServerConfig>, mut io: TcpStream) -> io::Result<PlayerTls> {
    let mut conn = UnbufferedServerConnection::new(config.clone()).map_err(invalid_data)?;
    let mut incoming = vec![0; HANDSHAKE_READ];
    let mut filled = 0;
    let mut outgoing = Vec::new();
    let mut plain = Vec::new();
    let mut reading = Reading::Open;
    loop {
        let mut sink = Sink {
            reader: None,
            spill: &mut plain,
            peer_closed: false,
        };
        let step = advance(
            &mut conn,
            &mut incoming[..filled],
            &mut sink,
            &mut outgoing,
            Goal::Read,
        );
        if sink.peer_closed {
            reading = Reading::Closed;
        }
        match step {
            Ok((used, _)) => {
                incoming.copy_within(used..filled, 0);
                filled -= used;
            }
            Err(e) => {
                last_gasp(&mut conn, &mut outgoing);
                let _ = io.write_all(&outgoing).await;
                return Err(e);
            }
        }
        if !outgoing.is_empty() {
            io.write_all(&outgoing).await?;
            outgoing.clear();
        }
        if !conn.is_handshaking() {
            break;
        }
        if incoming.len() - filled < HANDSHAKE_READ {
            if incoming.len() >= MAX_HANDSHAKE_BUFFER {
                return Err(invalid_data("the client's handshake flight is too large"));
            }
            incoming.resize(incoming.len() + HANDSHAKE_READ, 0);
        }
        let n = io.read(&mut incoming[filled..]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "tls handshake eof",
            ));
        }
        filled += n;
    }
    incoming.truncate(filled);
    let version = conn
        .protocol_version()
        .and_then(|version| version.as_str())
        .unwrap_or("other");
    Ok(PlayerTls {
        io,
        conn,
        incoming: shrunk(incoming),
        plain: shrunk(plain),
        plain_at: 0,
        outgoing: Vec::new(),
        outgoing_at: 0,
        reading,
        close_notify_sent: false,
        version,
    })
}

/// `bytes`, or no allocation at all if it is empty.
fn shrunk(bytes: Vec<u8>) -> Vec<u8> {
    if bytes.is_empty() {
        Vec::new()
    } else {
        bytes
    }
}

fn invalid_data(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// What a pass over the bytes at hand is for.
enum Goal<'a> {
    /// Process every whole record.
    Read,
    /// Then encrypt this plaintext into `records`.
    Encrypt {
        plaintext: &'a [u8],
        records: &'a mut [u8],
    },
    /// Then make close_notify into `records`.
    CloseNotify { records: &'a mut [u8] },
}

/// Where a pass stopped.
#[derive(Debug, PartialEq, Eq)]
enum Reached {
    /// Every whole record is processed; going on needs more bytes from the peer.
    NeedBytes,
    /// Both sides have sent close_notify: nothing more can be written.
    Closed,
    /// The goal's records are this long at the start of its `records`.
    Made(usize),
}

/// Where decrypted bytes go: the reader's buffer while it has room, then `spill`.
struct Sink<'a, 'b> {
    reader: Option<&'a mut ReadBuf<'b>>,
    spill: &'a mut Vec<u8>,
    /// Set when the peer's close_notify was among the records.
    peer_closed: bool,
}

impl Sink<'_, '_> {
    fn put(&mut self, mut bytes: &[u8]) {
        if let Some(reader) = self.reader.as_deref_mut() {
            let n = reader.remaining().min(bytes.len());
            reader.put_slice(&bytes[..n]);
            bytes = &bytes[n..];
        }
        self.spill.extend_from_slice(bytes);
    }
}

/// Process the whole records in `data` (decrypted bytes to `sink`, handshake and alert records
/// to `outgoing`), then do what `goal` asks. Returns how many bytes of `data` are done with,
/// from the front; the rest is the start of a record, to be passed again with what follows.
fn advance(
    conn: &mut UnbufferedServerConnection,
    data: &mut [u8],
    sink: &mut Sink<'_, '_>,
    outgoing: &mut Vec<u8>,
    goal: Goal<'_>,
) -> io::Result<(usize, Reached)> {
    let mut used = 0;
    loop {
        let UnbufferedStatus { mut discard, state } = conn.process_tls_records(&mut data[used..]);
        match state.map_err(invalid_data)? {
            ConnectionState::ReadTraffic(mut records) => {
                while let Some(record) = records.next_record() {
                    let record = record.map_err(invalid_data)?;
                    discard += record.discard;
                    sink.put(record.payload);
                }
            }
            ConnectionState::EncodeTlsData(mut encode) => encode_into(outgoing, &mut encode),
            // `outgoing` goes to the socket before anything made later: transmitted, as far
            // as ordering goes.
            ConnectionState::TransmitTlsData(transmit) => transmit.done(),
            ConnectionState::PeerClosed => sink.peer_closed = true,
            ConnectionState::WriteTraffic(mut traffic) => {
                used += discard;
                let made = match goal {
                    Goal::Read => return Ok((used, Reached::NeedBytes)),
                    Goal::Encrypt { plaintext, records } => traffic.encrypt(plaintext, records),
                    Goal::CloseNotify { records } => traffic.queue_close_notify(records),
                };
                return match made {
                    Ok(n) => Ok((used, Reached::Made(n))),
                    Err(EncryptError::InsufficientSize(short)) => Err(io::Error::other(format!(
                        "TLS records need {} bytes of room",
                        short.required_size
                    ))),
                    Err(e) => Err(io::Error::other(e)),
                };
            }
            ConnectionState::BlockedHandshake => return Ok((used + discard, Reached::NeedBytes)),
            ConnectionState::Closed => return Ok((used + discard, Reached::Closed)),
            // Early data is not enabled; any later state is not one this stream knows.
            _ => return Err(invalid_data("unexpected TLS connection state")),
        }
        used += discard;
    }
}

/// Append the handshake or alert record `encode` holds to `out`, growing it as far as rustls
/// says the record needs.
fn encode_into(out: &mut Vec<u8>, encode: &mut EncodeTlsData<'_, ServerConnectionData>) {
    let start = out.len();
    let mut room = 1024;
    loop {
        out.resize(start + room, 0);
        match encode.encode(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return;
            }
            Err(EncodeError::InsufficientSize(short)) if short.required_size > room => {
                room = short.required_size;
            }
            Err(_) => {
                out.truncate(start);
                return;
            }
        }
    }
}

/// After a TLS error: the alert rustls queued to tell the peer, into `outgoing`.
fn last_gasp(conn: &mut UnbufferedServerConnection, outgoing: &mut Vec<u8>) {
    let status = conn.process_tls_records(&mut []);
    if let Ok(ConnectionState::EncodeTlsData(mut encode)) = status.state {
        encode_into(outgoing, &mut encode);
    }
}

impl PlayerTls {
    /// Drop the first `used` bytes of `incoming`, and its allocation once nothing is left.
    fn processed(&mut self, used: usize) {
        if used == self.incoming.len() {
            self.incoming = Vec::new();
        } else {
            self.incoming.drain(..used);
        }
    }

    /// Write `outgoing` to the socket; ready when all of it is written.
    fn poll_flush_outgoing(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.outgoing_at < self.outgoing.len() {
            let n =
                ready!(Pin::new(&mut self.io).poll_write(cx, &self.outgoing[self.outgoing_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.outgoing_at += n;
        }
        if !self.outgoing.is_empty() {
            self.outgoing = Vec::new();
            self.outgoing_at = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// Read once from the socket and process the records: decrypted bytes into `reader` (and
    /// `plain` past its room). Ready(Ok) when the read brought something (maybe only part of a
    /// record) or the player's side ended.
    fn poll_read_records(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let pending = self.incoming.len();
        with_scratch(pending + SCRATCH_LEN / 2, 0, |scratch| {
            let records = &mut scratch.records;
            records[..pending].copy_from_slice(&self.incoming);
            let mut read = ReadBuf::new(&mut records[pending..]);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut read))?;
            let n = read.filled().len();
            if n == 0 {
                self.reading = Reading::Truncated;
                return Poll::Ready(Ok(()));
            }
            let total = pending + n;
            let mut sink = Sink {
                reader: Some(reader),
                spill: &mut self.plain,
                peer_closed: false,
            };
            let step = advance(
                &mut self.conn,
                &mut records[..total],
                &mut sink,
                &mut self.outgoing,
                Goal::Read,
            );
            if sink.peer_closed {
                self.reading = Reading::Closed;
            }
            match step {
                Ok((used, _)) => {
                    self.incoming.clear();
                    self.incoming.extend_from_slice(&records[used..total]);
                    if self.incoming.is_empty() {
                        self.incoming = Vec::new();
                    }
                    Poll::Ready(Ok(()))
                }
                Err(e) => {
                    last_gasp(&mut self.conn, &mut self.outgoing);
                    Poll::Ready(Err(e))
                }
            }
        })
    }

    /// Encrypt `plaintext` (at most [`MAX_PLAINTEXT_PER_WRITE`]) and write its records, keeping
    /// what the socket does not take in `outgoing`.
    fn write_records(
        &mut self,
        cx: &mut Context<'_>,
        plaintext: &[u8],
        scratch: &mut Vec<u8>,
    ) -> io::Result<()> {
        let mut sink = Sink {
            reader: None,
            spill: &mut self.plain,
            peer_closed: false,
        };
        let goal = Goal::Encrypt {
            plaintext,
            records: scratch,
        };
        let step = advance(
            &mut self.conn,
            &mut self.incoming,
            &mut sink,
            &mut self.outgoing,
            goal,
        );
        if sink.peer_closed {
            self.reading = Reading::Closed;
        }
        let (used, reached) = step?;
        self.processed(used);
        let Reached::Made(made) = reached else {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the TLS connection is closed",
            ));
        };
        let mut records = &scratch[..made];
        if self.outgoing.is_empty() {
            // The usual case: straight from the scratch to the socket.
            while !records.is_empty() {
                match Pin::new(&mut self.io).poll_write(cx, records) {
                    Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                    Poll::Ready(Ok(n)) => records = &records[n..],
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => break,
                }
            }
            self.outgoing.extend_from_slice(records);
            self.outgoing_at = 0;
        } else {
            // Records made while processing (a key update's answer) go first.
            self.outgoing.extend_from_slice(records);
            if let Poll::Ready(Err(e)) = self.poll_flush_outgoing(cx) {
                return Err(e);
            }
        }
        Ok(())
    }
}

impl AsyncRead for PlayerTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Records made while reading (a key update's answer, session tickets) go out as the
        // socket takes them; a full socket wakes this task when it drains.
        if let Poll::Ready(Err(e)) = this.poll_flush_outgoing(cx) {
            return Poll::Ready(Err(e));
        }
        loop {
            if this.plain_at < this.plain.len() {
                let n = buf.remaining().min(this.plain.len() - this.plain_at);
                buf.put_slice(&this.plain[this.plain_at..this.plain_at + n]);
                this.plain_at += n;
                if this.plain_at == this.plain.len() {
                    this.plain = Vec::new();
                    this.plain_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            match this.reading {
                Reading::Open => {}
                Reading::Closed => return Poll::Ready(Ok(())),
                // As rustls's own reader has it: an end without close_notify is an error.
                Reading::Truncated => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed connection without sending TLS close_notify",
                    )))
                }
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            ready!(this.poll_read_records(cx, buf))?;
            if !this.outgoing.is_empty() {
                if let Poll::Ready(Err(e)) = this.poll_flush_outgoing(cx) {
                    return Poll::Ready(Err(e));
                }
            }
            if buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl AsyncWrite for PlayerTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // What the socket has not taken yet goes first: the writer waits for it.
        ready!(this.poll_flush_outgoing(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let take = buf.len().min(MAX_PLAINTEXT_PER_WRITE);
        with_scratch(SCRATCH_LEN, 0, |scratch| {
            this.write_records(cx, &buf[..take], &mut scratch.records)
        })?;
        Poll::Ready(Ok(take))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_flush_outgoing(cx))?;
        with_scratch(SCRATCH_LEN, MAX_PLAINTEXT_PER_WRITE, |scratch| {
            // Gathered into one plaintext, so that one write makes as few records as it can.
            let mut taken = 0;
            for slice in bufs {
                let n = slice.len().min(MAX_PLAINTEXT_PER_WRITE - taken);
                scratch.plain[taken..taken + n].copy_from_slice(&slice[..n]);
                taken += n;
                if taken == MAX_PLAINTEXT_PER_WRITE {
                    break;
                }
            }
            if taken > 0 {
                this.write_records(cx, &scratch.plain[..taken], &mut scratch.records)?;
            }
            Poll::Ready(Ok(taken))
        })
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_outgoing(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_notify_sent {
            this.close_notify_sent = true;
            let mut alert = [0u8; 64];
            let mut sink = Sink {
                reader: None,
                spill: &mut this.plain,
                peer_closed: false,
            };
            let goal = Goal::CloseNotify {
                records: &mut alert,
            };
            // A connection already closed or failed has no close_notify to send.
            if let Ok((used, Reached::Made(n))) = advance(
                &mut this.conn,
                &mut this.incoming,
                &mut sink,
                &mut this.outgoing,
                goal,
            ) {
                this.processed(used);
                this.outgoing.extend_from_slice(&alert[..n]);
            }
        }
        ready!(this.poll_flush_outgoing(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl PlayerTls {
    /// The negotiated TLS version (`TLSv1_3`, `TLSv1_2`).
    pub fn version(&self) -> &'static str {
        self.version
    }

    /// The protocol the client and the edge agreed on with ALPN, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }
}

impl fmt::Debug for PlayerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlayerTls")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::client::TlsStream as ClientTls;

    struct Pair {
        server: PlayerTls,
        client: ClientTls<TcpStream>,
    }

    fn configs(
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> (Arc<ServerConfig>, Arc<rustls::ClientConfig>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["player.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = CertificateDer::from(cert.der().to_vec());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        (Arc::new(server), Arc::new(client))
    }

    async fn pair(versions: &[&'static rustls::SupportedProtocolVersion]) -> Pair {
        let (server_config, client_config) = configs(versions);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connecting = tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("player.test").unwrap();
            tokio_rustls::TlsConnector::from(client_config)
                .connect(name, tcp)
                .await
                .unwrap()
        });
        let (socket, _) = listener.accept().await.unwrap();
        let server = accept(&server_config, socket).await.unwrap();
        Pair {
            server,
            client: connecting.await.unwrap(),
        }
    }

    /// Bytes that tell a cut or a reordering apart.
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
    }

    fn holds_no_buffers(tls: &PlayerTls) -> bool {
        tls.incoming.capacity() == 0 && tls.plain.capacity() == 0 && tls.outgoing.capacity() == 0
    }

    #[tokio::test]
    async fn large_transfers_both_ways_arrive_whole_over_tls_1_3_and_1_2() {
        for versions in [
            &[&rustls::version::TLS13][..],
            &[&rustls::version::TLS12][..],
        ] {
            let Pair {
                mut server,
                mut client,
            } = pair(versions).await;
            assert_eq!(server.alpn(), Some(&b"http/1.1"[..]));
            let up = pattern(1 << 20, 7);
            let down = pattern(1 << 20, 9);
            let (up2, down2) = (up.clone(), down.clone());
            // The client writes in odd pieces and reads everything back.
            let peer = tokio::spawn(async move {
                let (mut read, mut write) = tokio::io::split(client);
                let writer = tokio::spawn(async move {
                    for piece in up2.chunks(7919) {
                        write.write_all(piece).await.unwrap();
                    }
                    write.flush().await.unwrap();
                    write
                });
                let mut got = vec![0; down2.len()];
                read.read_exact(&mut got).await.unwrap();
                assert!(got == down2, "the client got the server's bytes altered");
                read.unsplit(writer.await.unwrap())
            });
            // The server reads in small buffers (records spill) and writes vectored.
            let mut got = Vec::new();
            let mut small = [0u8; 1000];
            while got.len() < up.len() {
                let n = server.read(&mut small).await.unwrap();
                assert!(n > 0, "early end after {} bytes", got.len());
                got.extend_from_slice(&small[..n]);
            }
            assert!(got == up, "the server got the client's bytes altered");
            let mut rest = &down[..];
            while !rest.is_empty() {
                let (a, b) = rest.split_at(rest.len().min(3000));
                let (b, _) = b.split_at(b.len().min(50_000));
                let slices = [io::IoSlice::new(a), io::IoSlice::new(b)];
                let n = server.write_vectored(&slices).await.unwrap();
                rest = &rest[n..];
            }
            server.flush().await.unwrap();
            client = peer.await.unwrap();
            assert!(
                holds_no_buffers(&server),
                "an idle connection keeps buffers"
            );
            drop(client);
        }
    }

    #[tokio::test]
    async fn close_notify_is_an_end_both_ways_and_a_bare_close_is_an_error() {
        let Pair {
            mut server,
            mut client,
        } = pair(&[&rustls::version::TLS13]).await;
        client.write_all(b"last words").await.unwrap();
        client.shutdown().await.unwrap(); // close_notify, then the write side
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
        server.write_all(b"goodbye").await.unwrap();
        AsyncWriteExt::shutdown(&mut server).await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"goodbye");

        let Pair { mut server, client } = pair(&[&rustls::version::TLS13]).await;
        let (mut tcp, _) = client.into_inner();
        tcp.shutdown().await.unwrap(); // FIN, no close_notify
        let error = server.read(&mut [0u8; 64]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn a_client_key_update_is_answered_and_traffic_goes_on() {
        let Pair {
            mut server,
            mut client,
        } = pair(&[&rustls::version::TLS13]).await;
        client.get_mut().1.refresh_traffic_keys().unwrap();
        client.write_all(b"after the update").await.unwrap();
        client.flush().await.unwrap();
        let mut got = [0u8; 16];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"after the update");
        server.write_all(b"answered").await.unwrap();
        let mut back = [0u8; 8];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"answered");
    }

    #[tokio::test]
    async fn a_handshake_that_is_not_tls_fails_with_rustls_reason_and_an_alert() {
        let (server_config, _) = configs(&[&rustls::version::TLS13]);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let probe = tokio::spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut answer = Vec::new();
            let _ = tcp.read_to_end(&mut answer).await;
            answer
        });
        let (socket, _) = listener.accept().await.unwrap();
        let error = accept(&server_config, socket).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("InvalidContentType"), "{error}");
        drop(error);
        let answer = probe.await.unwrap();
        assert_eq!(
            answer.first(),
            Some(&0x15),
            "no TLS alert record: {answer:?}"
        );

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let quitter = tokio::spawn(async move { drop(TcpStream::connect(addr).await.unwrap()) });
        let (socket, _) = listener.accept().await.unwrap();
        quitter.await.unwrap();
        let error = accept(&server_config, socket).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }
}

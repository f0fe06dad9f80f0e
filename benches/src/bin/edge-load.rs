//! `edge-load`: the load generator parts that wrk and h2load do not cover, for
//! `benches/side-by-side.sh`.
//!
//! ```text
//! edge-load handshakes --addr 127.0.0.1:8443 --seconds 10 --concurrency 32
//!     full TLS handshakes (no resumption, X25519, any certificate accepted), then close;
//!     prints `handshakes <count> seconds <elapsed> failed <count>`
//! edge-load hold-ws --url wss://127.0.0.1:8443/ws --count 2000,9800 [--sources 127.0.0.1,127.0.0.2]
//!     opens WebSockets with distinct Nakama users up to the first total, prints
//!     `open <n> failed <m>`, and holds them (answering pings); each line on stdin opens more,
//!     up to the next total; when stdin closes it closes them all and prints `closed`
//! edge-load slow-bodies --addr 127.0.0.1:8443 --count 2000 --seconds 20 [--sources ...]
//!     TLS connections that each send a request head announcing `Content-Length: 100000`,
//!     then one body byte every 2 s (the adversarial probe's burst); prints `open <n> failed
//!     <m>` once all are open, then after `--seconds` how the edge answered them
//!     (`answered <status>=<count> ... closed <count>`) and closes what is left
//! edge-load ws-echo --url wss://127.0.0.1:8443/ws --count 1000 --rate 20 --bytes 64 --seconds 10
//!     opens `--count` WebSockets (distinct Nakama users) and prints `sockets <n> failed <m>`;
//!     after a line on stdin, each sends a `--bytes`-long realtime ping envelope `--rate` times
//!     a second and waits for its pong; then prints `round_trips <count> seconds <elapsed>
//!     p50_ms <x> p99_ms <y> late <count>` (a round trip is two messages through a proxy;
//!     `late`: sends that missed their tick because the previous answer had not come)
//! edge-load token [--key defaultencryptionkey] [--var shard=s1]
//!     prints a session token as the stand-in issues them (a day's validity), with the
//!     session var given, for loads that carry `Authorization: Bearer`
//! ```
//!
//! Bench tooling, not product code: it verifies nothing about the server's certificate.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Accepts any certificate and signature: the server's cost is what is measured.
#[derive(Debug)]
struct AcceptAnything(Vec<SignatureScheme>);

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.clone()
    }
}

fn client_config(alpn: &[&[u8]]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let schemes = provider
        .signature_verification_algorithms
        .supported_schemes();
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything(schemes)))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

struct Args(Vec<String>);

impl Args {
    fn get(&self, flag: &str) -> Option<&str> {
        let i = self.0.iter().position(|a| a == flag)?;
        self.0.get(i + 1).map(String::as_str)
    }
    fn need(&self, flag: &str) -> anyhow::Result<&str> {
        self.get(flag).with_context(|| format!("missing {flag}"))
    }
    fn number(&self, flag: &str, default: u64) -> anyhow::Result<u64> {
        match self.get(flag) {
            Some(v) => v.parse().with_context(|| format!("{flag} {v:?}")),
            None => Ok(default),
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = argv.split_first() else {
        bail!("usage: edge-load handshakes|hold-ws ... (see the source's header)");
    };
    let args = Args(rest.to_vec());
    match command.as_str() {
        "handshakes" => handshakes(&args).await,
        "hold-ws" => hold_ws(&args).await,
        "slow-bodies" => slow_bodies(&args).await,
        "ws-echo" => ws_echo(&args).await,
        "token" => token(&args),
        other => bail!("unknown command {other}"),
    }
}

fn token(args: &Args) -> anyhow::Result<()> {
    let key = args.get("--key").unwrap_or("defaultencryptionkey");
    let mut vars = serde_json::Map::new();
    if let Some(var) = args.get("--var") {
        let (name, value) = var.split_once('=').context("--var name=value")?;
        vars.insert(name.to_string(), value.into());
    }
    let user = "0b0e7d9a-1b7b-4b6e-9d1e-1f6d2a3b4c5d";
    let token = nakama_standin::token::issue(key, user, user, "bench", &vars, 24 * 3600);
    println!("{token}");
    Ok(())
}

async fn handshakes(args: &Args) -> anyhow::Result<()> {
    let addr: SocketAddr = args.need("--addr")?.parse()?;
    let seconds = args.number("--seconds", 10)?;
    let concurrency = args.number("--concurrency", 32)?;
    let connector = tokio_rustls::TlsConnector::from(client_config(&[b"http/1.1"])?);
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (connector, done, failed) = (connector.clone(), done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let name = ServerName::try_from("localhost").unwrap_or_else(|_| unreachable!());
            while Instant::now() < end {
                let ok = async {
                    let tcp = TcpStream::connect(addr).await?;
                    #[allow(deprecated)] // an RST instead of TIME_WAIT: no port runs out
                    tcp.set_linger(Some(Duration::ZERO))?;
                    connector.connect(name.clone(), tcp).await
                };
                match tokio::time::timeout(Duration::from_secs(5), ok).await {
                    Ok(Ok(_tls)) => done.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    println!(
        "handshakes {} seconds {:.3} failed {}",
        done.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
        failed.load(Ordering::Relaxed)
    );
    Ok(())
}

fn sources(args: &Args) -> anyhow::Result<Vec<IpAddr>> {
    args.get("--sources")
        .unwrap_or("127.0.0.1")
        .split(',')
        .map(|s| s.parse().with_context(|| format!("source {s:?}")))
        .collect()
}

async fn slow_bodies(args: &Args) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr: SocketAddr = args.need("--addr")?.parse()?;
    let count = args.number("--count", 2000)?;
    let seconds = args.number("--seconds", 20)?;
    let sources = sources(args)?;
    let connector = tokio_rustls::TlsConnector::from(client_config(&[b"http/1.1"])?);
    let end = Instant::now() + Duration::from_secs(seconds);
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let (opened_tx, mut opened_rx) = tokio::sync::mpsc::channel::<bool>(count as usize + 1);
    let mut tasks = Vec::new();
    for n in 0..count {
        let source = sources[n as usize % sources.len()];
        let (connector, gate, opened) = (connector.clone(), gate.clone(), opened_tx.clone());
        tasks.push(tokio::spawn(async move {
            let conn = async {
                let _permit = gate.acquire_owned().await.ok();
                let socket = TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(source, 0))?;
                let tcp = socket.connect(addr).await?;
                #[allow(deprecated)] // an RST instead of TIME_WAIT: no port runs out
                tcp.set_linger(Some(Duration::ZERO))?;
                let name = ServerName::try_from("localhost").map_err(std::io::Error::other)?;
                let mut tls = connector.connect(name, tcp).await?;
                tls.write_all(
                    b"POST /v2/rpc/whoami?http_key=defaulthttpkey HTTP/1.1\r\nHost: localhost\r\n\
                      Content-Length: 100000\r\n\r\n",
                )
                .await?;
                Ok::<_, std::io::Error>(tls)
            };
            let mut tls = match tokio::time::timeout(Duration::from_secs(30), conn).await {
                Ok(Ok(tls)) => tls,
                _ => {
                    let _ = opened.send(false).await;
                    return "failed".to_string();
                }
            };
            let _ = opened.send(true).await;
            // One byte every 2 s until the end, or until the edge answers or closes.
            let mut answer = [0u8; 64];
            while Instant::now() < end {
                tokio::select! {
                    read = tls.read(&mut answer) => {
                        return match read {
                            Ok(n) if n > 0 => String::from_utf8_lossy(&answer[..n])
                                .split_whitespace()
                                .nth(1)
                                .unwrap_or("?")
                                .to_string(),
                            _ => "closed".to_string(),
                        };
                    }
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {
                        if tls.write_all(b"x").await.is_err() {
                            return "closed".to_string();
                        }
                    }
                }
            }
            "open".to_string()
        }));
    }
    drop(opened_tx);
    let (mut open, mut failed) = (0u64, 0u64);
    while let Some(ok) = opened_rx.recv().await {
        if ok {
            open += 1;
        } else {
            failed += 1;
        }
    }
    println!("open {open} failed {failed}");
    let mut outcomes = std::collections::BTreeMap::<String, u64>::new();
    for t in tasks {
        *outcomes.entry(t.await?).or_default() += 1;
    }
    let summary: Vec<String> = outcomes.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("answered {}", summary.join(" "));
    Ok(())
}

async fn ws_echo(args: &Args) -> anyhow::Result<()> {
    let target = Arc::new(Target::of(args)?);
    let count = args.number("--count", 1000)?;
    let rate = args.number("--rate", 20)?.max(1);
    let bytes = args.number("--bytes", 64)? as usize;
    let seconds = args.number("--seconds", 10)?;
    // `{"cid":"…","ping":{}}` padded to `bytes` with the cid.
    let overhead = r#"{"cid":"","ping":{}}"#.len();
    let cid_len = bytes.saturating_sub(overhead).max(8);

    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let mut opening = Vec::new();
    for n in 0..count {
        let (target, gate) = (target.clone(), gate.clone());
        opening.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.ok();
            tokio::time::timeout(Duration::from_secs(30), target.open(n))
                .await
                .ok()
                .and_then(Result::ok)
        }));
    }
    let mut sockets = Vec::new();
    let mut failed = 0u64;
    for t in opening {
        match t.await? {
            Some(ws) => sockets.push(ws),
            None => failed += 1,
        }
    }
    println!("sockets {} failed {failed}", sockets.len());
    // The harness reads the proxy's CPU time between here and the end.
    let mut go = String::new();
    tokio::io::AsyncBufReadExt::read_line(
        &mut tokio::io::BufReader::new(tokio::io::stdin()),
        &mut go,
    )
    .await?;
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let period = Duration::from_micros(1_000_000 / rate);
    let mut tasks = Vec::new();
    for (i, mut ws) in sockets.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            // Spread the sockets' ticks over the period, as players' clocks are.
            let offset = period * (i as u32 % 1000) / 1000;
            let mut tick = tokio::time::interval_at((start + offset).into(), period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut rtts = Vec::with_capacity((seconds * rate) as usize + 1);
            let mut late = 0u64;
            let mut seq = 0u64;
            loop {
                let due = tick.tick().await;
                if Instant::now() >= end {
                    break;
                }
                if due.elapsed() > period {
                    late += 1;
                }
                seq += 1;
                let cid = format!("{i:06}-{seq:0>width$}", width = cid_len.saturating_sub(7));
                let msg = format!(r#"{{"cid":"{cid}","ping":{{}}}}"#);
                let sent = Instant::now();
                if ws.send(Message::Text(msg.into())).await.is_err() {
                    break;
                }
                let answered = loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) if t.contains(&cid) => break true,
                        Some(Ok(Message::Ping(_))) => {
                            let _ = ws.flush().await;
                        }
                        Some(Ok(_)) => {}
                        _ => break false,
                    }
                };
                if !answered {
                    break;
                }
                rtts.push(sent.elapsed());
            }
            let _ = ws.close(None).await;
            (rtts, late)
        }));
    }
    let mut rtts = Vec::new();
    let mut late = 0;
    for t in tasks {
        let (r, l) = t.await?;
        rtts.extend(r);
        late += l;
    }
    let elapsed = start.elapsed().min(Duration::from_secs(seconds));
    rtts.sort_unstable();
    let percentile = |p: f64| -> f64 {
        if rtts.is_empty() {
            return 0.0;
        }
        let i = ((rtts.len() as f64 * p).ceil() as usize).clamp(1, rtts.len()) - 1;
        rtts[i].as_secs_f64() * 1e3
    };
    println!(
        "round_trips {} seconds {:.3} p50_ms {:.3} p99_ms {:.3} late {late}",
        rtts.len(),
        elapsed.as_secs_f64(),
        percentile(0.50),
        percentile(0.99),
    );
    Ok(())
}

async fn hold_ws(args: &Args) -> anyhow::Result<()> {
    let target = Arc::new(Target::of(args)?);
    let stages: Vec<u64> = args
        .get("--count")
        .unwrap_or("1000")
        .split(',')
        .map(|c| c.parse().with_context(|| format!("--count {c:?}")))
        .collect::<anyhow::Result<_>>()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let (mut open, mut failed, mut next) = (0u64, 0u64, 0u64);
    for (i, total) in stages.iter().enumerate() {
        // Open at most 64 at a time, as a crowd of players arrives, not all in one instant.
        let gate = Arc::new(tokio::sync::Semaphore::new(64));
        let mut opening = Vec::new();
        while next < *total {
            let (target, gate, stop) = (target.clone(), gate.clone(), stop_rx.clone());
            let n = next;
            opening.push(tokio::spawn(async move {
                let permit = gate.acquire_owned().await.ok();
                let ws = tokio::time::timeout(Duration::from_secs(30), target.open(n)).await;
                drop(permit);
                match ws {
                    Ok(Ok(ws)) => {
                        tokio::spawn(hold(ws, stop));
                        true
                    }
                    _ => false,
                }
            }));
            next += 1;
        }
        for t in opening {
            if t.await.unwrap_or(false) {
                open += 1;
            } else {
                failed += 1;
            }
        }
        println!("open {open} failed {failed}");
        // Hold until the harness says go on (a line), or stop (stdin closes).
        let mut line = String::new();
        let more = i + 1 < stages.len();
        loop {
            line.clear();
            let n = tokio::io::AsyncBufReadExt::read_line(&mut stdin, &mut line).await?;
            if n == 0 || more {
                break;
            }
        }
        if line.is_empty() {
            break;
        }
    }
    let _ = stop_tx.send(true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("closed");
    Ok(())
}

/// Where `hold-ws` connects, and how.
struct Target {
    url: String,
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsConnector>,
    key: String,
    sources: Vec<IpAddr>,
}

type Ws = tokio_tungstenite::WebSocketStream<Box<dyn Stream>>;

impl Target {
    /// The target of `--url` (with `--session-key`, `--sources`).
    fn of(args: &Args) -> anyhow::Result<Target> {
        let url = args.need("--url")?.to_string();
        let key = args
            .get("--session-key")
            .unwrap_or("defaultencryptionkey")
            .to_string();
        let sources = sources(args)?;
        let rest = url
            .strip_prefix("wss://")
            .map(|r| (true, r))
            .or_else(|| url.strip_prefix("ws://").map(|r| (false, r)));
        let Some((tls, rest)) = rest else {
            bail!("--url must be ws:// or wss://");
        };
        let host = rest.split('/').next().unwrap_or(rest);
        let connector = match tls {
            true => Some(tokio_rustls::TlsConnector::from(client_config(&[
                b"http/1.1",
            ])?)),
            false => None,
        };
        Ok(Target {
            url: url.clone(),
            addr: host.parse().with_context(|| format!("address {host:?}"))?,
            tls: connector,
            key,
            sources,
        })
    }

    /// WebSocket number `n`: its own Nakama user, from one of the source addresses in turn.
    async fn open(&self, n: u64) -> std::io::Result<Ws> {
        let source = self.sources[n as usize % self.sources.len()];
        let user = format!("bench-{}-{n}", std::process::id());
        let token = nakama_standin::token::issue(
            &self.key,
            &user,
            &user,
            &user,
            &Default::default(),
            24 * 3600,
        );
        let url = format!("{}?lang=en&status=true&token={token}", self.url);
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        let tcp = socket.connect(self.addr).await?;
        #[allow(deprecated)] // an RST instead of TIME_WAIT: no port runs out
        tcp.set_linger(Some(Duration::ZERO))?;
        let stream: Box<dyn Stream> = match &self.tls {
            Some(connector) => {
                let name = ServerName::try_from("localhost").map_err(std::io::Error::other)?;
                Box::new(connector.connect(name, tcp).await?)
            }
            None => Box::new(tcp),
        };
        // tungstenite zeroes its whole read buffer (128 KiB by default) before every read: on
        // the load core that was 40% of the WSS echo's time, for 64-byte messages.
        let config = WebSocketConfig::default().read_buffer_size(4096);
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
            .await
            .map_err(std::io::Error::other)?;
        Ok(ws)
    }
}

/// Keep `ws` open, answering pings, until `stop` changes; then close it.
async fn hold(mut ws: Ws, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            msg = ws.next() => match msg {
                // tungstenite queues the pong; flushing sends it.
                Some(Ok(Message::Ping(_))) => { let _ = ws.flush().await; }
                Some(Ok(_)) => {}
                _ => return,
            },
        }
    }
    let _ = ws.close(None).await;
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

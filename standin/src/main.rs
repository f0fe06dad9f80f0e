//! `nakama-standin`: see the crate documentation.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use nakama_standin::token;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

struct Node {
    name: String,
    server_key: String,
    session_key: String,
    ping_interval: Duration,
    /// How long a keep-alive HTTP/1.1 connection may wait for its next request before the node
    /// closes it: Nakama's `socket.idle_timeout_ms` (Go's `IdleTimeout`), 60 s by default.
    idle_timeout: Duration,
    healthy: AtomicBool,
    websockets: AtomicI64,
    requests: AtomicU64,
    health_checks: AtomicU64,
    /// TCP connections open now (the edge's pooled and in-use connections to this node).
    connections: AtomicI64,
    /// Email accounts and their passwords (Nakama keeps them in its database; one stand-in
    /// keeps its own).
    emails: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Go's net/http (Nakama's server) buffers this much of a handler's answer: a larger answer goes
/// out in chunks (`Transfer-Encoding: chunked`), a smaller one with a `Content-Length`.
const GO_RESPONSE_BUFFER: usize = 2048;

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let body: Bytes = body.into();
    let body = if body.len() > GO_RESPONSE_BUFFER {
        // No length announced: hyper sends it chunked, as Go does, a chunk per buffer's worth.
        let chunks: Vec<Result<hyper::body::Frame<Bytes>, Infallible>> = body
            .chunks(GO_RESPONSE_BUFFER)
            .map(|c| Ok(hyper::body::Frame::data(body.slice_ref(c))))
            .collect();
        BodyExt::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
            chunks,
        )))
    } else {
        Full::new(body).boxed()
    };
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(body)
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    full(status, "application/json", value.to_string())
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    // gRPC's codes, as Nakama's gateway gives them.
    let code = match status {
        StatusCode::BAD_REQUEST => 3,
        StatusCode::NOT_FOUND => 5,
        StatusCode::INTERNAL_SERVER_ERROR => 13,
        _ => 16,
    };
    json(
        status,
        serde_json::json!({"code": code, "message": message}),
    )
}

struct Args {
    name: String,
    listen: SocketAddr,
    grpc: Option<SocketAddr>,
    server_key: String,
    session_key: String,
    ping_interval: Duration,
    idle_timeout: Duration,
    shutdown_grace: Duration,
}

fn parse_secs(v: &str) -> anyhow::Result<Duration> {
    let v = v.trim_end_matches('s');
    Ok(Duration::from_secs_f64(
        v.parse().with_context(|| format!("bad duration {v:?}"))?,
    ))
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        name: "nakama".into(),
        listen: "127.0.0.1:7350".parse()?,
        grpc: None,
        server_key: "defaultkey".into(),
        session_key: "defaultencryptionkey".into(),
        ping_interval: Duration::from_secs(15),
        idle_timeout: Duration::from_secs(60),
        shutdown_grace: Duration::ZERO,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--name" => a.name = value()?,
            "--listen" => a.listen = value()?.parse()?,
            "--grpc" => a.grpc = Some(value()?.parse()?),
            "--server-key" => a.server_key = value()?,
            "--session-key" => a.session_key = value()?,
            "--ping-interval" => a.ping_interval = parse_secs(&value()?)?,
            "--idle-timeout" => a.idle_timeout = parse_secs(&value()?)?,
            "--shutdown-grace" => a.shutdown_grace = parse_secs(&value()?)?,
            other => anyhow::bail!(
                "unknown flag {other}\nusage: nakama-standin [--name N] [--listen ADDR] [--grpc ADDR] [--server-key K] \
                 [--session-key K] [--ping-interval SECS] [--idle-timeout SECS] [--shutdown-grace SECS]"
            ),
        }
    }
    Ok(a)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let node = Arc::new(Node {
        name: args.name.clone(),
        server_key: args.server_key,
        session_key: args.session_key,
        ping_interval: args.ping_interval,
        idle_timeout: args.idle_timeout,
        healthy: AtomicBool::new(true),
        websockets: AtomicI64::new(0),
        requests: AtomicU64::new(0),
        health_checks: AtomicU64::new(0),
        connections: AtomicI64::new(0),
        emails: Default::default(),
    });
    let http = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("bind {}", args.listen))?;
    let grpc = match args.grpc {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("bind {addr}"))?,
        ),
        None => None,
    };
    let http_addr = http.local_addr()?;
    // Nakama serves gRPC on its API port - 1.
    let grpc = match grpc {
        Some(grpc) => Some(grpc),
        None => match http_addr.port().checked_sub(1).filter(|p| *p > 0) {
            Some(port) => {
                let addr = SocketAddr::new(http_addr.ip(), port);
                Some(
                    TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("bind {addr} (the API port - 1, for gRPC)"))?,
                )
            }
            None => None,
        },
    };
    let grpc_addr = grpc.as_ref().map(|g| g.local_addr()).transpose()?;
    println!(
        "LISTENING name={} http={http_addr} grpc={}",
        node.name,
        grpc_addr.map_or_else(|| "none".to_string(), |a| a.to_string())
    );

    let mut servers = vec![tokio::spawn(serve(http, node.clone()))];
    if let Some(grpc) = grpc {
        servers.push(tokio::spawn(serve(grpc, node.clone())));
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    term.recv().await;
    // Nakama: keep accepting and keep /healthcheck green for the whole grace period.
    eprintln!(
        "{}: SIGTERM, shutting down in {:?}",
        node.name, args.shutdown_grace
    );
    tokio::time::sleep(args.shutdown_grace).await;
    for s in servers {
        s.abort();
    }
    // Exiting drops every socket: WebSockets end without a close frame, as Nakama's do.
    std::process::exit(0);
}

async fn serve(listener: TcpListener, node: Arc<Node>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let node = node.clone();
        tokio::spawn(async move {
            node.connections.fetch_add(1, Ordering::Relaxed);
            let counted = node.clone();
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // hyper's header deadline runs from the end of one answer to the next request's
            // head: Nakama's idle timeout on a keep-alive connection.
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(node.idle_timeout);
            let service =
                hyper::service::service_fn(move |req| handle(node.clone(), peer.ip(), req));
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
            counted.connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

fn query_param<'a, B>(req: &'a Request<B>, name: &str) -> Option<&'a str> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

fn bearer<B>(req: &Request<B>) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// Nakama's email login: 401 for a wrong password, 404 for an unknown account unless
/// `create=true`, 400 for a password under 8 characters.
async fn authenticate_email(node: &Node, req: Request<Incoming>) -> Response<Body> {
    if !basic_ok(node, &req) {
        return error(StatusCode::UNAUTHORIZED, "Server key invalid");
    }
    let create = query_param(&req, "create") == Some("true");
    let Some(body) = body_json(req).await else {
        return error(StatusCode::BAD_REQUEST, "bad body");
    };
    let (Some(email), Some(password)) = (body["email"].as_str(), body["password"].as_str()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "Email address and password are required.",
        );
    };
    if password.len() < 8 {
        return error(
            StatusCode::BAD_REQUEST,
            "Password must be at least 8 characters long.",
        );
    }
    let known = node
        .emails
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(email)
        .cloned();
    let created = match known {
        Some(stored) if stored == password => false,
        Some(_) => return error(StatusCode::UNAUTHORIZED, "Invalid credentials."),
        None if create => {
            node.emails
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(email.to_string(), password.to_string());
            true
        }
        None => return error(StatusCode::NOT_FOUND, "User account not found."),
    };
    let uid = token::user_id_for_device(email);
    let tid = uuid::Uuid::new_v4().to_string();
    session(
        node,
        &tid,
        &uid,
        &format!("user{}", &uid[..8]),
        &Default::default(),
        Some(created),
    )
}

fn basic_ok(node: &Node, req: &Request<Incoming>) -> bool {
    let expected =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:", node.server_key));
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        == Some(expected.as_str())
}

async fn handle(
    node: Arc<Node>,
    peer: IpAddr,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    // Requests as Nakama would see them; health checks and the test-control endpoints are
    // counted apart.
    if path == "/healthcheck" {
        node.health_checks.fetch_add(1, Ordering::Relaxed);
    } else if !path.starts_with("/standin/") {
        node.requests.fetch_add(1, Ordering::Relaxed);
    }
    let is_grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if is_grpc {
        return Ok(grpc(&node, &path));
    }
    let resp = match (req.method().clone(), path.as_str()) {
        (Method::GET, "/healthcheck") => {
            if node.healthy.load(Ordering::Relaxed) {
                json(StatusCode::OK, serde_json::json!({}))
            } else {
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "unhealthy (switched off by test)",
                )
            }
        }
        (Method::GET, "/") => full(StatusCode::OK, "text/plain", ""),
        (Method::POST, "/standin/health/fail") => {
            node.healthy.store(false, Ordering::Relaxed);
            json(StatusCode::OK, serde_json::json!({"healthy": false}))
        }
        (Method::POST, "/standin/health/pass") => {
            node.healthy.store(true, Ordering::Relaxed);
            json(StatusCode::OK, serde_json::json!({"healthy": true}))
        }
        (Method::GET, "/standin/stats") => json(
            StatusCode::OK,
            serde_json::json!({
                "node": node.name,
                "websockets": node.websockets.load(Ordering::Relaxed),
                "requests": node.requests.load(Ordering::Relaxed),
                "health_checks": node.health_checks.load(Ordering::Relaxed),
                "connections": node.connections.load(Ordering::Relaxed),
            }),
        ),
        (Method::POST, "/v2/account/authenticate/device") => authenticate_device(&node, req).await,
        (Method::POST, "/v2/account/authenticate/email") => authenticate_email(&node, req).await,
        (Method::POST, "/v2/account/session/refresh") => refresh(&node, req).await,
        (_, p) if p.starts_with("/v2/rpc/") => {
            // Nakama reads the payload before running the function.
            let id = p["/v2/rpc/".len()..].to_string();
            let (parts, body) = req.into_parts();
            let body_bytes = body.collect().await.map_or(0, |b| b.to_bytes().len());
            let req = Request::from_parts(parts, ());
            if id == "slow" {
                // A function that takes a while (a database call, say): ?ms=, default 1000.
                let ms = query_param(&req, "ms")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1000);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            rpc(&node, &req, &id, body_bytes, peer)
        }
        (Method::GET, "/ws") => websocket(node.clone(), &mut req, peer),
        // Nakama's answer to a path it does not serve.
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"code": 5, "message": "Not Found"}),
        ),
    };
    Ok(resp)
}

async fn body_json(req: Request<Incoming>) -> Option<serde_json::Value> {
    let bytes = req.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice(&bytes).ok()
}

/// A session as Nakama answers an authentication: a token and a refresh token of one session
/// id (`tid`). `created`: `None` for a refresh, whose answer has no `created`.
fn session(
    node: &Node,
    tid: &str,
    uid: &str,
    username: &str,
    vars: &serde_json::Map<String, serde_json::Value>,
    created: Option<bool>,
) -> Response<Body> {
    let key = &node.session_key;
    let mut answer = serde_json::json!({
        "token": token::issue(key, tid, uid, username, vars, 3600),
        "refresh_token": token::issue(key, tid, uid, username, vars, 7 * 24 * 3600),
    });
    if let Some(created) = created {
        answer["created"] = created.into();
    }
    json(StatusCode::OK, answer)
}

async fn authenticate_device(node: &Node, req: Request<Incoming>) -> Response<Body> {
    if !basic_ok(node, &req) {
        return error(StatusCode::UNAUTHORIZED, "Server key invalid");
    }
    let username = query_param(&req, "username").map(str::to_string);
    let Some(body) = body_json(req).await else {
        return error(StatusCode::BAD_REQUEST, "bad body");
    };
    let Some(id) = body["id"]
        .as_str()
        .filter(|id| (10..=128).contains(&id.len()))
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "Device ID invalid, must be 10-128 bytes.",
        );
    };
    let uid = token::user_id_for_device(id);
    let username = username.unwrap_or_else(|| format!("user{}", &uid[..8]));
    let tid = uuid::Uuid::new_v4().to_string();
    // Session vars, as Nakama takes them: strings only.
    let vars = body["vars"]
        .as_object()
        .map(|v| {
            v.iter()
                .filter(|(_, v)| v.is_string())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    session(node, &tid, &uid, &username, &vars, Some(true))
}

async fn refresh(node: &Node, req: Request<Incoming>) -> Response<Body> {
    if !basic_ok(node, &req) {
        return error(StatusCode::UNAUTHORIZED, "Server key invalid");
    }
    let Some(body) = body_json(req).await else {
        return error(StatusCode::BAD_REQUEST, "bad body");
    };
    let Some(claims) = body["token"]
        .as_str()
        .and_then(|t| token::verify(&node.session_key, t))
    else {
        return error(
            StatusCode::UNAUTHORIZED,
            "Refresh token invalid or expired.",
        );
    };
    let (tid, uid, usn) = (
        claims["tid"].as_str().unwrap_or(""),
        claims["uid"].as_str().unwrap_or(""),
        claims["usn"].as_str().unwrap_or(""),
    );
    // The same session, its vars kept: within one second, the same tokens (as Nakama's).
    let vars = claims["vrs"].as_object().cloned().unwrap_or_default();
    session(node, tid, uid, usn, &vars, None)
}

/// The client address Nakama gives the runtime (`ctx.clientIp`): the first entry of the first
/// `X-Forwarded-For`, else the peer's address. `X-Real-IP`, `CF-Connecting-IP` and the like
/// are not read.
fn client_ip<B>(req: &Request<B>, peer: IpAddr) -> String {
    req.headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map_or_else(|| peer.to_string(), str::to_string)
}

fn whoami<B>(
    node: &Node,
    req: &Request<B>,
    uid: Option<&str>,
    body_bytes: usize,
    peer: IpAddr,
) -> String {
    let h = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    serde_json::json!({
        "node": node.name,
        "uid": uid,
        "client_ip": client_ip(req, peer),
        "x_forwarded_for": h("x-forwarded-for"),
        "x_forwarded_proto": h("x-forwarded-proto"),
        "x_real_ip": h("x-real-ip"),
        "forwarded": h("forwarded"),
        "cf_connecting_ip": h("cf-connecting-ip"),
        // Every header as the node received it, and the body's size.
        "headers": req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned().into()))
            .collect::<serde_json::Map<String, serde_json::Value>>(),
        "body_bytes": body_bytes,
    })
    .to_string()
}

fn rpc<B>(
    node: &Node,
    req: &Request<B>,
    id: &str,
    body_bytes: usize,
    peer: IpAddr,
) -> Response<Body> {
    let claims = bearer(req).and_then(|t| token::verify(&node.session_key, t));
    let http_key_ok = query_param(req, "http_key") == Some("defaulthttpkey");
    if claims.is_none() && !http_key_ok {
        return error(StatusCode::UNAUTHORIZED, "Auth token or HTTP key required");
    }
    match id {
        "whoami" | "slow" => {
            let uid = claims.as_ref().and_then(|c| c["uid"].as_str());
            json(
                StatusCode::OK,
                serde_json::json!({"id": id, "payload": whoami(node, req, uid, body_bytes, peer)}),
            )
        }
        // An answer carrying hop-by-hop headers, as some servers and proxies behind Nakama
        // write them: none of them may reach a player.
        "hop_by_hop" => {
            let mut resp = json(
                StatusCode::OK,
                serde_json::json!({"id": id, "payload": "{}"}),
            );
            let h = resp.headers_mut();
            for (name, value) in [
                ("keep-alive", "timeout=5, max=100"),
                ("connection", "x-hop-secret"),
                ("x-hop-secret", "node-internal"),
                ("proxy-connection", "keep-alive"),
                ("trailer", "x-checksum"),
                ("upgrade", "h2c"),
            ] {
                h.insert(name, http::HeaderValue::from_static(value));
            }
            resp
        }
        // A runtime error in the function, as Nakama answers it.
        "crash" => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Error calling RPC function",
        ),
        _ => error(StatusCode::NOT_FOUND, "RPC function not found"),
    }
}

fn websocket(node: Arc<Node>, req: &mut Request<Incoming>, peer: IpAddr) -> Response<Body> {
    let token = query_param(req, "token").or_else(|| bearer(req));
    let Some(claims) = token.and_then(|t| token::verify(&node.session_key, t)) else {
        return error(StatusCode::UNAUTHORIZED, "Auth token invalid");
    };
    let Some(key) = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()))
    else {
        return error(StatusCode::BAD_REQUEST, "not a WebSocket upgrade");
    };
    let info = whoami(&node, req, claims["uid"].as_str(), 0, peer);
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        // Nakama reads sockets in 4 KiB (socket.read_buffer_size_bytes); tungstenite's default
        // of 128 KiB is zeroed again before every read.
        let config = WebSocketConfig::default().read_buffer_size(4096);
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        node.websockets.fetch_add(1, Ordering::Relaxed);
        realtime(&node, ws, &info).await;
        node.websockets.fetch_sub(1, Ordering::Relaxed);
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, key)
        .body(Full::new(Bytes::new()).boxed())
        .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "response"))
}

/// The realtime protocol, as much of it as tests use: envelopes `{cid, ping}` → `{cid, pong}`
/// and `{cid, rpc: {id: "whoami"}}` → `{cid, rpc: {id, payload}}`.
async fn realtime(node: &Node, ws: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>, info: &str) {
    let (mut tx, mut rx) = ws.split();
    let mut ping = tokio::time::interval(node.ping_interval);
    ping.tick().await;
    loop {
        tokio::select! {
            _ = ping.tick() => {
                if tx.send(Message::Ping(Bytes::from_static(b"nakama"))).await.is_err() { return; }
            }
            msg = rx.next() => {
                let Some(Ok(msg)) = msg else { return };
                let text = match msg {
                    Message::Text(t) => t.to_string(),
                    Message::Binary(b) => String::from_utf8_lossy(&b).to_string(),
                    Message::Close(_) => { let _ = tx.send(Message::Close(None)).await; return; }
                    _ => continue,
                };
                // The envelope a client sends most, answered without parsing JSON (so that the
                // stand-in is not what a message load measures).
                if let Some(cid) = text.strip_prefix(r#"{"cid":""#).and_then(|t| t.strip_suffix(r#"","ping":{}}"#)) {
                    if !cid.contains('"') && !cid.contains('\\') {
                        let pong = format!(r#"{{"cid":"{cid}","pong":{{}}}}"#);
                        if tx.send(Message::Text(pong.into())).await.is_err() { return; }
                        continue;
                    }
                }
                let Ok(envelope) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
                let cid = envelope.get("cid").cloned().unwrap_or(serde_json::Value::Null);
                let reply = if envelope.get("ping").is_some() {
                    serde_json::json!({"cid": cid, "pong": {}})
                } else if let Some(rpc) = envelope.get("rpc") {
                    match rpc["id"].as_str() {
                        Some("whoami") => serde_json::json!({"cid": cid, "rpc": {"id": "whoami", "payload": info}}),
                        _ => serde_json::json!({"cid": cid, "error": {"code": 5, "message": "RPC function not found"}}),
                    }
                } else {
                    continue;
                };
                if tx.send(Message::Text(reply.to_string().into())).await.is_err() { return; }
            }
        }
    }
}

/// gRPC over h2c: `Healthcheck` (empty response) and `RpcFunc` (an `Rpc` with the node's name).
fn grpc(node: &Node, path: &str) -> Response<Body> {
    let message: Vec<u8> = match path {
        "/nakama.api.Nakama/Healthcheck" => Vec::new(),
        "/nakama.api.Nakama/RpcFunc" => {
            let payload = serde_json::json!({"node": node.name}).to_string();
            let mut m = Vec::new();
            for (tag, value) in [(0x0a_u8, "whoami"), (0x12, payload.as_str())] {
                m.push(tag);
                m.push(value.len() as u8);
                m.extend_from_slice(value.as_bytes());
            }
            m
        }
        _ => {
            return Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/grpc")
                .header("grpc-status", "12")
                .header("grpc-message", "unknown method")
                .body(Full::new(Bytes::new()).boxed())
                .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "response"));
        }
    };
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(message.len() as u32);
    frame.put_slice(&message);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(vec![
        Ok::<_, Infallible>(hyper::body::Frame::data(frame.freeze())),
        Ok(hyper::body::Frame::trailers(trailers)),
    ]));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/grpc")
        .body(BodyExt::boxed(body))
        .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "response"))
}

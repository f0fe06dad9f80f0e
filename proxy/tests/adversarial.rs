//! What an adversarial probe found, shown fixed: cancelled requests are not replayed to other
//! nodes, retries are budgeted, trickling bodies are cut off without holding a node connection,
//! client-address and hop-by-hop headers do not pass, oversized heads get 431/414.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SLOW: &str = "/v2/rpc/slow?ms=400&http_key=defaulthttpkey";

async fn requests_seen(nodes: &[StandIn]) -> u64 {
    let mut total = 0;
    for n in nodes {
        total += n.stats().await["requests"].as_u64().unwrap();
    }
    total
}

async fn node_connections(nodes: &[StandIn]) -> i64 {
    let mut total = 0;
    for n in nodes {
        total += n.stats().await["connections"].as_i64().unwrap();
    }
    total
}

/// Wait until the edge has nothing in flight.
async fn settled(edge: &Edge) {
    edge.assert_metric("nakama_edge_http_requests_in_flight", 0.0)
        .await;
}

/// An HTTP/2 connection to the edge, driven in the background.
async fn h2_client(edge: &Edge) -> h2::client::SendRequest<bytes::Bytes> {
    let tls = edge.tls_connect(ip("127.0.0.1"), &[b"h2"]).await;
    let (client, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

fn h2_get(edge: &Edge, path: &str) -> http::Request<()> {
    http::Request::get(format!("https://localhost:{}{path}", edge.https.port()))
        .body(())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_h2_request_reset_at_once_reaches_at_most_one_node_and_is_not_retried() {
    let (nodes, edge) = cluster(&["a", "b", "c"]).await;
    let before = requests_seen(&nodes).await;
    let mut client = h2_client(&edge).await;
    for _ in 0..3 {
        client = client.ready().await.unwrap();
        let (_response, mut stream) = client.send_request(h2_get(&edge, SLOW), false).unwrap();
        stream.send_reset(h2::Reason::CANCEL);
    }
    settled(&edge).await;
    // Each cancelled request reached one node at most, and none was sent again.
    let seen = requests_seen(&nodes).await - before;
    assert!(seen <= 3, "{seen} requests reached the nodes for 3 sent");
    for n in ["a", "b", "c"] {
        assert_eq!(
            edge.metric(&format!(
                "nakama_edge_upstream_retries_total{{node=\"{n}\"}}"
            ))
            .await,
            0.0
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_h1_request_whose_client_hangs_up_reaches_at_most_one_node_and_is_not_retried() {
    let (nodes, edge) = cluster(&["a", "b", "c"]).await;
    let before = requests_seen(&nodes).await;
    for _ in 0..3 {
        let mut tls = edge.tls_connect(ip("127.0.0.1"), &[b"http/1.1"]).await;
        tls.write_all(format!("GET {SLOW} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
            .await
            .unwrap();
        tls.flush().await.unwrap();
        // Wait for the request to reach a node, then hang up.
        eventually("the request at a node", || async {
            edge.metric("nakama_edge_http_requests_in_flight").await >= 1.0
        })
        .await;
        drop(tls);
    }
    settled(&edge).await;
    let seen = requests_seen(&nodes).await - before;
    assert!(seen <= 3, "{seen} requests reached the nodes for 3 sent");
    for n in ["a", "b", "c"] {
        assert_eq!(
            edge.metric(&format!(
                "nakama_edge_upstream_retries_total{{node=\"{n}\"}}"
            ))
            .await,
            0.0
        );
    }
}

/// A node that passes its health checks but drops every other request before answering.
struct ResettingNode {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    dropped: Arc<AtomicUsize>,
}

impl ResettingNode {
    fn start() -> ResettingNode {
        let listener = TcpListener::bind(("127.0.0.1", free_port())).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicUsize::new(0));
        let (stop2, dropped2) = (stop.clone(), dropped.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let dropped = dropped2.clone();
                std::thread::spawn(move || {
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut buf = vec![0u8; 16384];
                    let mut have = Vec::new();
                    loop {
                        let Ok(n) = conn.read(&mut buf) else { return };
                        if n == 0 {
                            return;
                        }
                        have.extend_from_slice(&buf[..n]);
                        let Some(end) = have.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&have[..end]).to_string();
                        have.drain(..end + 4);
                        if head.starts_with("GET /healthcheck") {
                            let _ = conn.write_all(
                                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
                            );
                            return;
                        }
                        // Read, then gone without an answer.
                        dropped.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                });
            }
        });
        ResettingNode {
            addr,
            stop,
            dropped,
        }
    }
}

impl Drop for ResettingNode {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_past_a_node_that_fails_requests_are_bounded_by_a_budget() {
    let good = StandIn::start("good");
    let bad = ResettingNode::start();
    let nodes = format!(
        "{}[[nodes]]\nname = \"bad\"\naddress = \"{}\"\n",
        good.toml(),
        bad.addr
    );
    let edge = Edge::start(&nodes, "");
    edge.wait_healthy(&["good", "bad"]).await;
    let client = edge.client(None);
    let url = edge.url("/v2/rpc/whoami?http_key=defaulthttpkey");
    let (mut ok, mut failed) = (0u32, 0u32);
    // Bounded: 1,500 requests, 8 at a time.
    for _ in 0..1500 / 8 {
        let batch = (0..8).map(|_| client.get(&url).send());
        for r in futures_util::future::join_all(batch).await {
            match r {
                Ok(r) if r.status() == 200 => ok += 1,
                Ok(r) => {
                    assert_eq!(r.status(), 502, "a failed request is a 502");
                    failed += 1
                }
                Err(e) => panic!("the edge itself failed: {e}"),
            }
        }
    }
    let retries = edge
        .metric("nakama_edge_upstream_retries_total{node=\"bad\"}")
        .await;
    let refused = edge.metric("nakama_edge_retries_over_budget_total").await;
    let dropped = bad.dropped.load(Ordering::Relaxed) as f64;
    // Every request the bad node dropped was either retried (within the budget) or answered
    // 502 and counted as over the budget.
    assert!(dropped > 300.0, "the bad node saw {dropped}");
    assert!(refused > 0.0, "no retry was refused");
    assert_eq!(
        retries + refused,
        dropped,
        "retried {retries}, refused {refused}"
    );
    // The budget: 20 % of requests, with a floor of 10 a second over its 10 s window.
    let total = f64::from(ok + failed);
    assert!(
        retries <= total * 0.2 + 100.0,
        "{retries} retries for {total} requests"
    );
    assert_eq!(f64::from(failed), refused);
}

/// Send `request` over a raw HTTP/1.1 TLS connection; the answer's head (empty if the
/// connection closed without one).
async fn raw_h1(edge: &Edge, request: &[u8]) -> String {
    let mut tls = edge.tls_connect(ip("127.0.0.1"), &[b"http/1.1"]).await;
    // A peer that stops reading early may reset the rest of a huge request: fine.
    let _ = tls.write_all(request).await;
    let _ = tls.flush().await;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, tls.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            Ok(_) => break,
            Err(_) => panic!("no answer within {DEADLINE:?}"),
        }
    }
    String::from_utf8_lossy(&answer).to_string()
}

fn status(head: &str) -> &str {
    head.split_whitespace().nth(1).unwrap_or("none")
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_heads_get_431_and_an_oversized_target_414() {
    let (_nodes, edge) = cluster(&["a"]).await;
    let huge_header = format!(
        "GET /v2/rpc/whoami?http_key=defaulthttpkey HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1024 * 1024)
    );
    assert_eq!(status(&raw_h1(&edge, huge_header.as_bytes()).await), "431");
    let mut many =
        String::from("GET /v2/rpc/whoami?http_key=defaulthttpkey HTTP/1.1\r\nHost: localhost\r\n");
    for i in 0..100_000 {
        many.push_str(&format!("X-H{i}: 1\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(status(&raw_h1(&edge, many.as_bytes()).await), "431");
    // A target over Nakama's 5 KiB: 414; one over the 16 KiB the edge buffers for a head at
    // all: 431, like any head that size.
    let long_url = |len| {
        format!(
            "GET /v2/rpc/whoami?http_key=defaulthttpkey&pad={} HTTP/1.1\r\nHost: localhost\r\n\r\n",
            "b".repeat(len)
        )
    };
    assert_eq!(
        status(&raw_h1(&edge, long_url(10 * 1024).as_bytes()).await),
        "414"
    );
    assert_eq!(
        status(&raw_h1(&edge, long_url(100 * 1024).as_bytes()).await),
        "431"
    );
    // Just under the limits: served.
    let fine = format!(
        "GET /v2/rpc/whoami?http_key=defaulthttpkey HTTP/1.1\r\nHost: localhost\r\nX-Pad: {}\r\n\r\n",
        "c".repeat(3000)
    );
    assert_eq!(status(&raw_h1(&edge, fine.as_bytes()).await), "200");
    edge.assert_metric(
        "nakama_edge_http_requests_total{code=\"431\",node=\"none\",route=\"api\"}",
        3.0,
    )
    .await;
    edge.assert_metric(
        "nakama_edge_http_requests_total{code=\"414\",node=\"none\",route=\"api\"}",
        1.0,
    )
    .await;
}

/// Every header a player could use to claim an address, dashed and underscored.
const ADDRESS_HEADERS: [&str; 16] = [
    "X-Forwarded-For",
    "X-Real-IP",
    "Forwarded",
    "CF-Connecting-IP",
    "True-Client-IP",
    "Fastly-Client-IP",
    "Client-IP",
    "X-Original-Forwarded-For",
    "Forwarded-For",
    "X-Forwarded",
    "X-ProxyUser-Ip",
    "X-Envoy-External-Address",
    "X-Client-IP",
    "X-Cluster-Client-IP",
    "X_Forwarded_For",
    "CF_Connecting_IP",
];

fn forged_headers_reached(headers: &Value) -> Vec<String> {
    let map = headers.as_object().unwrap();
    let mut leaked: Vec<String> = ADDRESS_HEADERS
        .iter()
        .flat_map(|h| [h.to_string(), h.replace('-', "_")])
        .filter(|h| {
            map.iter().any(|(k, v)| {
                k.eq_ignore_ascii_case(h) && !(k == "x-forwarded-for" && v == "127.0.0.1")
            })
        })
        .collect();
    leaked.dedup();
    leaked
}

#[tokio::test(flavor = "multi_thread")]
async fn client_address_headers_never_reach_a_node_over_http1_and_h2() {
    let (_nodes, edge) = cluster(&["a"]).await;
    // HTTP/1.1, raw, so that underscore names are sent as written.
    let mut request =
        String::from("GET /v2/rpc/whoami?http_key=defaulthttpkey HTTP/1.1\r\nHost: localhost\r\n");
    for h in ADDRESS_HEADERS {
        request.push_str(&format!(
            "{h}: 203.0.113.7\r\n{}: 203.0.113.8\r\n",
            h.replace('-', "_")
        ));
    }
    request.push_str("Connection: close\r\n\r\n");
    let mut tls = edge.tls_connect(ip("127.0.0.1"), &[b"http/1.1"]).await;
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let body: Value = serde_json::from_str(body.trim()).unwrap();
    let who: Value = serde_json::from_str(body["payload"].as_str().unwrap()).unwrap();
    assert_eq!(
        forged_headers_reached(&who["headers"]),
        Vec::<String>::new()
    );
    assert_eq!(who["x_forwarded_for"], "127.0.0.1");

    // HTTP/2.
    let mut client = h2_client(&edge).await;
    let mut req = h2_get(&edge, "/v2/rpc/whoami?http_key=defaulthttpkey");
    for h in ADDRESS_HEADERS {
        for name in [
            h.to_ascii_lowercase(),
            h.to_ascii_lowercase().replace('-', "_"),
        ] {
            req.headers_mut().append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_static("203.0.113.9"),
            );
        }
    }
    client = client.ready().await.unwrap();
    let (response, _) = client.send_request(req, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    let who: Value = serde_json::from_str(body["payload"].as_str().unwrap()).unwrap();
    assert_eq!(
        forged_headers_reached(&who["headers"]),
        Vec::<String>::new()
    );
    assert_eq!(who["x_forwarded_for"], "127.0.0.1");
}

const HOP_BY_HOP: [&str; 6] = [
    "keep-alive",
    "x-hop-secret",
    "proxy-connection",
    "trailer",
    "upgrade",
    "te",
];

#[tokio::test(flavor = "multi_thread")]
async fn hop_by_hop_headers_are_not_forwarded_either_way() {
    let (_nodes, edge) = cluster(&["a"]).await;
    // To the node: a player's hop-by-hop headers stop at the edge.
    let request = "GET /v2/rpc/whoami?http_key=defaulthttpkey HTTP/1.1\r\nHost: localhost\r\n\
                   Connection: keep-alive, X-Hop-Secret\r\nX-Hop-Secret: player\r\nKeep-Alive: timeout=300\r\n\
                   Proxy-Connection: keep-alive\r\nTE: gzip\r\nTrailer: x-sum\r\nUpgrade: h2c\r\n\r\n";
    let mut tls = edge.tls_connect(ip("127.0.0.1"), &[b"http/1.1"]).await;
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 65536];
    let mut answer = Vec::new();
    loop {
        let n = tokio::time::timeout(DEADLINE, tls.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        answer.extend_from_slice(&buf[..n]);
        if n == 0 || answer.ends_with(b"}") {
            break;
        }
    }
    let answer = String::from_utf8_lossy(&answer).to_string();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body: Value =
        serde_json::from_str(answer[answer.find("\r\n\r\n").unwrap() + 4..].trim()).unwrap();
    let who: Value = serde_json::from_str(body["payload"].as_str().unwrap()).unwrap();
    let seen = who["headers"].as_object().unwrap();
    for h in HOP_BY_HOP {
        assert!(!seen.contains_key(h), "the node saw {h}: {seen:?}");
    }

    // To the player, over HTTP/1.1 and h2: the node's hop-by-hop headers stop at the edge.
    let url = edge.url("/v2/rpc/hop_by_hop?http_key=defaulthttpkey");
    for client in [
        reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(edge.certs.ca_pem.as_bytes()).unwrap(),
            )
            .tls_built_in_root_certs(false)
            .resolve("localhost", edge.https)
            .http1_only()
            .build()
            .unwrap(),
        edge.client(None),
    ] {
        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        for h in HOP_BY_HOP {
            assert!(
                r.headers().get(h).is_none(),
                "{h} reached the player: {:?}",
                r.headers()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn trickling_bodies_are_cut_off_after_request_body_without_holding_a_node_connection() {
    let (nodes, edge) = cluster_with(&["a"], "[timeouts]\nrequest_body = \"3s\"\n").await;
    let before = requests_seen(&nodes).await;
    let mut conns = Vec::new();
    for _ in 0..100 {
        let mut tls = edge.tls_connect(ip("127.0.0.1"), &[b"http/1.1"]).await;
        tls.write_all(
            b"POST /v2/rpc/whoami?http_key=defaulthttpkey HTTP/1.1\r\nHost: localhost\r\n\
              Content-Length: 100000\r\n\r\nx",
        )
        .await
        .unwrap();
        conns.push(tls);
    }
    // And over HTTP/2: ten streams declaring 1,000 bytes each.
    let mut client = h2_client(&edge).await;
    let mut streams = Vec::new();
    for _ in 0..10 {
        client = client.ready().await.unwrap();
        let req = http::Request::post(format!(
            "https://localhost:{}/v2/rpc/whoami?http_key=defaulthttpkey",
            edge.https.port()
        ))
        .header("content-length", "1000")
        .body(())
        .unwrap();
        streams.push(client.send_request(req, false).unwrap());
    }
    // While the bodies trickle, the node has neither a request nor a connection for them.
    let trickle_until = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < trickle_until {
        for c in conns.iter_mut() {
            let _ = c.write_all(b"x").await;
        }
        for (_, body) in streams.iter_mut() {
            let _ = body.send_data(bytes::Bytes::from_static(b"x"), false);
        }
        assert_eq!(
            requests_seen(&nodes).await,
            before,
            "a trickling body reached a node"
        );
        assert!(
            node_connections(&nodes).await <= 2,
            "node connections held for trickling bodies"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // After request_body: 408 and closed, every one.
    for mut c in conns {
        let mut answer = Vec::new();
        tokio::time::timeout(DEADLINE, c.read_to_end(&mut answer))
            .await
            .expect("closed after request_body")
            .ok();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    for (response, _body) in streams {
        let response = tokio::time::timeout(DEADLINE, response)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), 408);
    }
    assert_eq!(requests_seen(&nodes).await, before);
    edge.assert_metric(
        "nakama_edge_http_requests_total{code=\"408\",node=\"none\",route=\"api\"}",
        110.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn whole_bodies_up_to_256_kib_are_forwarded_over_http1_and_h2() {
    let (nodes, edge) = cluster(&["a"]).await;
    let url = edge.url("/v2/rpc/whoami?http_key=defaulthttpkey");
    let h1 = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(edge.certs.ca_pem.as_bytes()).unwrap())
        .tls_built_in_root_certs(false)
        .resolve("localhost", edge.https)
        .http1_only()
        .build()
        .unwrap();
    // Over 256 KiB: refused on its length before it is read. The client, still writing, reads
    // the 413 (the edge reads and drops the rest before closing, rather than resetting).
    let sizes = [1usize, 1000, 64 * 1024, 64 * 1024 + 1, 200_000, 256 * 1024];
    let too_large = [256 * 1024 + 1, 4 << 20];
    for client in [h1, edge.client(None)] {
        for size in sizes.into_iter().chain(too_large) {
            let r = client
                .post(&url)
                .body(vec![b'7'; size])
                .send()
                .await
                .unwrap();
            if too_large.contains(&size) {
                assert_eq!(r.status(), 413, "{size} bytes");
                continue;
            }
            assert_eq!(r.status(), 200, "{size} bytes");
            let body: Value = r.json().await.unwrap();
            let who: Value = serde_json::from_str(body["payload"].as_str().unwrap()).unwrap();
            assert_eq!(who["body_bytes"], size, "{size} bytes");
        }
    }
    // Chunked, so refused only once 256 KiB have been read, by curl.
    let big = edge.dir().join("big-body");
    std::fs::write(&big, vec![b'7'; 4 << 20]).unwrap();
    let out = edge.curl(&[
        "--http1.1",
        "-H",
        "transfer-encoding: chunked",
        "-H",
        "expect:",
        "--data-binary",
        &format!("@{}", big.display()),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &url,
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "413",
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{out:?}");
    assert!(requests_seen(&nodes).await > 0);
}

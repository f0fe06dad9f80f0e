//! Edge protection as an attacker and an operator see it: the firewall before TLS, the
//! console sealed, rate and connection limits, slow clients, PROXY protocol, size and framing
//! limits, and the TLS policy.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Write `request` and read one HTTP/1.1 response: (status, head, body).
async fn exchange(stream: &mut Tls, request: &[u8]) -> (u16, String, String) {
    stream.write_all(request).await.unwrap();
    read_response(stream).await
}

async fn read_response(stream: &mut Tls) -> (u16, String, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut chunk))
            .await
            .unwrap()
            .unwrap_or(0);
        assert!(
            n > 0,
            "connection closed before a response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    }
    (
        status,
        head,
        String::from_utf8_lossy(&buf[head_end..head_end + length]).to_string(),
    )
}

/// Whether the other side has closed `stream` (EOF or an error), waiting up to the deadline.
async fn closed_by_peer(stream: &mut Tls) -> bool {
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(DEADLINE, stream.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

const WHOAMI: &[u8] =
    b"GET /v2/rpc/whoami?http_key=defaulthttpkey HTTP/1.1\r\nHost: localhost\r\n\r\n";

async fn rejected(edge: &Edge, reason: &str) -> f64 {
    edge.metric(&format!(
        "nakama_edge_connections_rejected_total{{reason=\"{reason}\"}}"
    ))
    .await
}

#[tokio::test]
async fn a_denied_address_is_cut_off_before_the_handshake_and_lists_change_live() {
    let a = StandIn::start("a");
    let edge = Edge::start(&a.toml(), "[firewall]\ndeny = [\"127.0.0.2/32\"]\n");
    edge.wait_healthy(&["a"]).await;
    let refused = edge
        .try_tls_connect_to(edge.https, ip("127.0.0.2"), &[b"http/1.1"])
        .await;
    assert!(refused.is_err(), "127.0.0.2 got a TLS session");
    assert_eq!(rejected(&edge, "firewall").await, 1.0);
    assert_eq!(
        edge.metric("nakama_edge_tls_handshakes_total{result=\"error\"}")
            .await,
        0.0,
        "no TLS work was done"
    );
    let mut ok = edge.tls_connect(ip("127.0.0.1"), &[b"http/1.1"]).await;
    assert_eq!(exchange(&mut ok, WHOAMI).await.0, 200);

    edge.write_config(&a.toml(), "[firewall]\ndeny = [\"127.0.0.3/32\"]\n");
    eventually("127.0.0.3 denied after the reload", || async {
        edge.try_tls_connect_to(edge.https, ip("127.0.0.3"), &[b"http/1.1"])
            .await
            .is_err()
    })
    .await;
    assert!(edge
        .try_tls_connect_to(edge.https, ip("127.0.0.2"), &[b"http/1.1"])
        .await
        .is_ok());
    assert_eq!(
        exchange(&mut ok, WHOAMI).await.0,
        200,
        "an allowed connection survives the reload"
    );
}

#[tokio::test]
async fn the_console_is_reachable_only_through_its_listener_from_console_allow() {
    let a = StandIn::start("a");
    let console = StandIn::start("console");
    let nodes = format!("{}console = \"{}\"\n", a.toml(), console.http);
    let edge = Edge::start_at(
        Ports::with_console(),
        TempDir::new("edge"),
        &nodes,
        "[firewall]\nconsole_allow = [\"127.0.0.3/32\"]\n",
    );
    edge.wait_healthy(&["a"]).await;
    let console_port = console.http.port();
    let before = console.stats().await["requests"].as_u64().unwrap();

    // The public listener never forwards to the console, whatever the request says.
    let tricks = [
        format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{console_port}\r\n\r\n"),
        format!("GET http://127.0.0.1:{console_port}/ HTTP/1.1\r\nHost: 127.0.0.1:{console_port}\r\n\r\n"),
        format!("GET //127.0.0.1:{console_port}/ HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        "GET /v2/console/authenticate HTTP/1.1\r\nHost: localhost:7351\r\n\r\n".to_string(),
        format!("GET / HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-Host: 127.0.0.1:{console_port}\r\nX-Original-URL: http://127.0.0.1:{console_port}/\r\n\r\n"),
        format!("GET /../../:{console_port}/ HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        format!("CONNECT 127.0.0.1:{console_port} HTTP/1.1\r\nHost: 127.0.0.1:{console_port}\r\n\r\n"),
    ];
    for trick in &tricks {
        let mut s = edge.tls_connect(ip("127.0.0.1"), &[b"http/1.1"]).await;
        s.write_all(trick.as_bytes()).await.unwrap();
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut sink)).await;
    }
    assert_eq!(
        console.stats().await["requests"].as_u64().unwrap(),
        before,
        "a public request reached the console"
    );

    // The console listener: refused from a peer not in console_allow, before TLS...
    let console_addr = edge.console.unwrap();
    assert!(edge
        .try_tls_connect_to(console_addr, ip("127.0.0.1"), &[b"http/1.1"])
        .await
        .is_err());
    assert_eq!(rejected(&edge, "console").await, 1.0);
    // ...and proxied to the node's console for one that is.
    let mut s = edge
        .try_tls_connect_to(console_addr, ip("127.0.0.3"), &[b"http/1.1"])
        .await
        .unwrap();
    let (status, _, body) = exchange(&mut s, WHOAMI).await;
    assert_eq!(status, 200);
    assert!(body.contains("\\\"node\\\":\\\"console\\\""), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_stays_on_one_nodes_console_unless_they_pick_another() {
    let nodes: Vec<StandIn> = ["a", "b", "c"].iter().map(|n| StandIn::start(n)).collect();
    let consoles: Vec<StandIn> = ["console-a", "console-b", "console-c"]
        .iter()
        .map(|n| StandIn::start(n))
        .collect();
    let toml: String = nodes
        .iter()
        .zip(&consoles)
        .map(|(n, c)| format!("{}console = \"{}\"\n", n.toml(), c.http))
        .collect();
    let edge = Edge::start_at(
        Ports::with_console(),
        TempDir::new("edge"),
        &toml,
        "[firewall]\nconsole_allow = [\"127.0.0.0/24\"]\n",
    );
    edge.wait_healthy(&["a", "b", "c"]).await;
    let console_addr = edge.console.unwrap();
    let operator = |source: &str| {
        reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(edge.certs.ca_pem.as_bytes()).unwrap(),
            )
            .tls_built_in_root_certs(false)
            .local_address(ip(source))
            .resolve("localhost", console_addr)
            .http1_only()
            .build()
            .unwrap()
    };
    let url = |query: &str| {
        format!(
            "https://localhost:{}/v2/rpc/whoami?http_key=defaulthttpkey{query}",
            console_addr.port()
        )
    };
    // The console node that answered, and the cookie it set.
    let ask = |client: reqwest::Client, query: &'static str, cookie: Option<String>| {
        let url = url(query);
        async move {
            let mut r = client.get(url);
            if let Some(c) = cookie {
                r = r.header("cookie", c);
            }
            let r = r.send().await.unwrap();
            assert_eq!(r.status(), 200);
            let set = r
                .headers()
                .get("set-cookie")
                .map(|v| v.to_str().unwrap().to_string());
            let v: Value = r.json().await.unwrap();
            let payload: Value = serde_json::from_str(v["payload"].as_str().unwrap()).unwrap();
            (payload["node"].as_str().unwrap().to_string(), set)
        }
    };
    // Sixteen operators: the nodes' places on the ring follow their (random) ports, so five
    // operators all landed on one node now and then (a chance of 3 in 243 on an even ring;
    // seen once in five runs); sixteen all on one node is a chance in fourteen million.
    let mut seen = std::collections::BTreeSet::new();
    for last in 3..19 {
        let source = format!("127.0.0.{last}");
        let client = operator(&source);
        let (first, _) = ask(client.clone(), "", None).await;
        for _ in 0..3 {
            assert_eq!(
                ask(client.clone(), "", None).await.0,
                first,
                "{source} moved"
            );
        }
        seen.insert(first);
    }
    assert!(seen.len() >= 2, "sixteen operators all on {seen:?}");

    // An operator picks node c: answered by c's console, kept by a cookie.
    let client = operator("127.0.0.3");
    let (node, cookie) = ask(client.clone(), "&node=c", None).await;
    assert_eq!(node, "console-c");
    let cookie = cookie.expect("a cookie keeps the pick");
    assert!(cookie.starts_with("nakama_edge_node=c;"), "{cookie}");
    let pair = cookie.split(';').next().unwrap().to_string();
    for _ in 0..3 {
        assert_eq!(
            ask(client.clone(), "", Some(pair.clone())).await.0,
            "console-c"
        );
    }
}

#[tokio::test]
async fn a_flooding_client_gets_429_with_retry_after_while_another_is_served() {
    let (_nodes, edge) = cluster_with(
        &["a"],
        "[rate_limit]\nrequests_per_second = 10\nburst = 10\nauth_requests_per_minute = 3\nconnections_per_ip = 3\nnew_connections_per_second = 1000\n",
    )
    .await;
    let flood = edge.client(Some(ip("127.0.0.2")));
    let calm = edge.client(Some(ip("127.0.0.3")));
    let (mut limited, mut served) = (0, 0);
    let mut retry_after = None;
    for i in 0..60 {
        let r = flood
            .get(edge.url("/v2/rpc/whoami?http_key=defaulthttpkey"))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => served += 1,
            429 => {
                limited += 1;
                retry_after = r
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            }
            other => panic!("unexpected {other}"),
        }
        if i % 10 == 0 {
            // The calm client, interleaved with the flood, is never held back.
            assert_eq!(whoami_http(&edge, &calm).await.unwrap()["node"], "a");
        }
    }
    assert!(
        served >= 10 && limited >= 30,
        "served {served}, limited {limited}"
    );
    assert!(
        retry_after.is_some_and(|s| s >= 1),
        "Retry-After: {retry_after:?}"
    );

    // Authentication has its own, stricter budget.
    let auth = edge.client(Some(ip("127.0.0.4")));
    let mut statuses = Vec::new();
    for i in 0..4 {
        let r = auth
            .post(edge.url("/v2/account/authenticate/device"))
            .basic_auth("defaultkey", Some(""))
            .json(&serde_json::json!({"id": format!("auth-flood-{i:04}")}))
            .send()
            .await
            .unwrap();
        statuses.push((
            r.status().as_u16(),
            r.headers().get("retry-after").is_some(),
        ));
    }
    assert_eq!(
        statuses,
        [(200, false), (200, false), (200, false), (429, true)]
    );
}

#[tokio::test]
async fn concurrent_connections_per_client_are_capped() {
    let (_nodes, edge) = cluster_with(
        &["a"],
        "[rate_limit]\nrequests_per_second = 1000\nburst = 1000\nconnections_per_ip = 3\nnew_connections_per_second = 1000\n",
    )
    .await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut s = edge.tls_connect(ip("127.0.0.5"), &[b"http/1.1"]).await;
        assert_eq!(exchange(&mut s, WHOAMI).await.0, 200);
        open.push(s);
    }
    assert!(edge
        .try_tls_connect_to(edge.https, ip("127.0.0.5"), &[b"http/1.1"])
        .await
        .is_err());
    assert_eq!(rejected(&edge, "connection_limit").await, 1.0);
    assert!(
        edge.try_tls_connect_to(edge.https, ip("127.0.0.6"), &[b"http/1.1"])
            .await
            .is_ok(),
        "others unaffected"
    );
    drop(open.pop());
    eventually("a freed slot", || async {
        edge.try_tls_connect_to(edge.https, ip("127.0.0.5"), &[b"http/1.1"])
            .await
            .is_ok()
    })
    .await;
}

#[tokio::test]
async fn a_slowloris_is_cut_off_while_others_are_served() {
    let (_nodes, edge) = cluster_with(&["a"], "[timeouts]\nrequest_header = \"1s\"\n").await;
    let edge = std::sync::Arc::new(edge);
    let slow = {
        let edge = edge.clone();
        tokio::spawn(async move {
            let mut s = edge.tls_connect(ip("127.0.0.2"), &[b"http/1.1"]).await;
            s.write_all(b"GET /v2/rpc/whoami HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
                .await
                .unwrap();
            let started = Instant::now();
            // One byte every 200 ms, at most 60 of them (12 s).
            for sent in 0..60 {
                if s.write_all(b"a").await.is_err() || s.flush().await.is_err() {
                    return (sent, started.elapsed());
                }
                let mut b = [0u8; 256];
                if let Ok(r) =
                    tokio::time::timeout(Duration::from_millis(200), s.read(&mut b)).await
                {
                    if matches!(r, Ok(0) | Err(_)) {
                        return (sent, started.elapsed());
                    }
                }
            }
            (60, started.elapsed())
        })
    };
    let client = edge.client(None);
    for _ in 0..10 {
        assert_eq!(whoami_http(&edge, &client).await.unwrap()["node"], "a");
    }
    let (sent, took) = slow.await.unwrap();
    assert!(sent < 60, "the slow client was never cut off");
    assert!(took < Duration::from_secs(8), "cut off after {took:?}");
}

#[tokio::test]
async fn a_websocket_outlives_the_http_idle_timeout() {
    let a = StandIn::start_with(
        "a",
        "127.0.0.1:0".parse().unwrap(),
        &["--ping-interval", "3600"],
    );
    let edge = Edge::start(
        &a.toml(),
        "[timeouts]\nhttp_idle = \"1s\"\nwebsocket_idle = \"30s\"\n",
    );
    edge.wait_healthy(&["a"]).await;
    let client = edge.client(None);
    let session = edge.authenticate(&client, "idle-socket").await;
    let mut ws = edge
        .websocket(&session.token, ip("127.0.0.1"))
        .await
        .unwrap();
    assert_eq!(ws.node().await, "a");
    let mut keepalive = edge.tls_connect(ip("127.0.0.1"), &[b"http/1.1"]).await;
    assert_eq!(exchange(&mut keepalive, WHOAMI).await.0, 200);
    let idle_start = Instant::now();
    // An idle HTTP connection is closed after http_idle (1 s)...
    assert!(closed_by_peer(&mut keepalive).await);
    assert!(idle_start.elapsed() < Duration::from_secs(5));
    // ...and a WebSocket idle for longer than that is not: both sides silent past 2 s.
    while idle_start.elapsed() < Duration::from_millis(2500) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ws.node().await, "a");
}

fn proxy_v2(client: std::net::SocketAddr, server: std::net::SocketAddr) -> Vec<u8> {
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (client, server),
    )
    .build()
    .unwrap()
}

/// A TLS connection from `source` that first sends `preamble` (a PROXY header).
async fn connect_with_preamble(edge: &Edge, source: &str, preamble: &[u8]) -> std::io::Result<Tls> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::new(ip(source), 0))?;
    let mut tcp = socket.connect(edge.https).await?;
    tcp.write_all(preamble).await?;
    let connector = tokio_rustls::TlsConnector::from(edge.certs.client_config(&[b"http/1.1"]));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(DEADLINE, connector.connect(name, tcp)).await?
}

async fn forwarded_for(stream: &mut Tls) -> String {
    let (status, _, body) = exchange(stream, WHOAMI).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let seen: serde_json::Value = serde_json::from_str(v["payload"].as_str().unwrap()).unwrap();
    seen["x_forwarded_for"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn proxy_protocol_is_believed_from_trusted_proxies_only() {
    let (_nodes, edge) = cluster_with(
        &["a"],
        "[firewall]\ntrusted_proxies = [\"127.0.0.5/32\"]\ndeny = [\"198.51.100.66/32\"]\n",
    )
    .await;
    let v1 = format!(
        "PROXY TCP4 198.51.100.7 127.0.0.1 51234 {}\r\n",
        edge.https.port()
    );
    let mut s = connect_with_preamble(&edge, "127.0.0.5", v1.as_bytes())
        .await
        .unwrap();
    assert_eq!(
        forwarded_for(&mut s).await,
        "198.51.100.7",
        "v1 from a trusted proxy"
    );

    let v2 = proxy_v2(
        "[2001:db8::7]:51234".parse().unwrap(),
        "[2001:db8::1]:443".parse().unwrap(),
    );
    let mut s = connect_with_preamble(&edge, "127.0.0.5", &v2)
        .await
        .unwrap();
    assert_eq!(
        forwarded_for(&mut s).await,
        "2001:db8::7",
        "v2 from a trusted proxy"
    );

    // The firewall judges the client the header names.
    let denied = format!(
        "PROXY TCP4 198.51.100.66 127.0.0.1 51234 {}\r\n",
        edge.https.port()
    );
    assert!(connect_with_preamble(&edge, "127.0.0.5", denied.as_bytes())
        .await
        .is_err());
    assert_eq!(rejected(&edge, "firewall").await, 1.0);

    // From anyone else a PROXY header is a protocol error, not a claim.
    assert!(connect_with_preamble(&edge, "127.0.0.1", v1.as_bytes())
        .await
        .is_err());
    assert!(connect_with_preamble(&edge, "127.0.0.1", &v2)
        .await
        .is_err());
    // And a trusted proxy that sends none is refused.
    assert!(connect_with_preamble(&edge, "127.0.0.5", b"")
        .await
        .is_err());
    let mut plain = edge.tls_connect(ip("127.0.0.1"), &[b"http/1.1"]).await;
    assert_eq!(forwarded_for(&mut plain).await, "127.0.0.1");
}

#[tokio::test]
async fn oversized_heads_and_bodies_and_ambiguous_framing_are_refused() {
    let (nodes, edge) = cluster(&["a"]).await;
    let requests_before = nodes[0].stats().await["requests"].as_u64().unwrap();
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (format!("GET /v2/rpc/whoami HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n", "a".repeat(6000)).into_bytes(), 431),
        (b"POST /v2/rpc/whoami HTTP/1.1\r\nHost: localhost\r\nContent-Length: 300000\r\n\r\n".to_vec(), 413),
        (b"POST /v2/rpc/whoami HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello".to_vec(), 400),
        (b"POST /v2/rpc/whoami HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".to_vec(), 400),
        (b"GET /v2/rpc/whoami HTTP/1.1\r\nHost: localhost\r\nX-Folded: a\r\n b\r\n\r\n".to_vec(), 400),
    ];
    for (request, expected) in cases {
        let mut s = edge.tls_connect(ip("127.0.0.1"), &[b"http/1.1"]).await;
        let (status, head, _) = exchange(&mut s, &request).await;
        assert_eq!(
            status,
            expected,
            "{}\n-> {head}",
            String::from_utf8_lossy(&request[..request.len().min(120)])
        );
    }
    // Content-Length beside Transfer-Encoding (CL.TE smuggling): framed by chunked, as RFC 9112
    // requires, and the connection closed after the response, so the request hidden in what
    // Content-Length would call the body is never read as a request.
    let smuggled = "GET /v2/rpc/whoami?http_key=defaulthttpkey HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let request = format!(
        "POST /v2/rpc/whoami?http_key=defaulthttpkey HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\
         Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
        5 + smuggled.len()
    );
    let mut s = edge.tls_connect(ip("127.0.0.1"), &[b"http/1.1"]).await;
    let (status, head, _) = exchange(&mut s, request.as_bytes()).await;
    assert_eq!(status, 200, "{head}");
    assert!(
        closed_by_peer(&mut s).await,
        "a second (smuggled) response came back"
    );

    // A chunked body that grows past 256 KiB.
    let mut s = edge.tls_connect(ip("127.0.0.1"), &[b"http/1.1"]).await;
    s.write_all(b"POST /v2/rpc/whoami?http_key=defaulthttpkey HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 16384, "b".repeat(16384));
    for _ in 0..20 {
        if s.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    assert_eq!(read_response(&mut s).await.0, 413);
    let reached = nodes[0].stats().await["requests"].as_u64().unwrap() - requests_before;
    // Of all these, only the CL.TE request (answered 200) reached the node: the refused heads
    // and bodies, the growing chunked one included (bodies are read before a node is picked),
    // did not.
    assert_eq!(reached, 1);
}

#[tokio::test]
async fn the_tls_policy_offers_nothing_below_tls_1_2_and_no_weak_cipher() {
    let (_nodes, edge) = cluster(&["a"]).await;
    let out = std::process::Command::new("sslscan")
        .args(["--no-colour", "--no-heartbleed", &edge.https.to_string()])
        .output()
        .expect("sslscan is needed (Debian package sslscan; .ci/deps installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    for (protocol, state) in [
        ("SSLv2", "disabled"),
        ("SSLv3", "disabled"),
        ("TLSv1.0", "disabled"),
        ("TLSv1.1", "disabled"),
        ("TLSv1.2", "enabled"),
        ("TLSv1.3", "enabled"),
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(protocol))
            .unwrap_or_else(|| panic!("{protocol} missing:\n{text}"));
        assert!(line.contains(state), "{line}\n{text}");
    }
    let ciphers: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("Accepted") || l.starts_with("Preferred"))
        .collect();
    assert!(!ciphers.is_empty(), "{text}");
    for c in &ciphers {
        assert!(
            c.contains("GCM") || c.contains("CHACHA20"),
            "weak cipher: {c}"
        );
        assert!(!c.contains("TLSv1.0") && !c.contains("TLSv1.1"), "{c}");
    }
    assert!(!text.contains("Compression enabled"), "{text}");
}

#[tokio::test]
async fn a_client_sending_an_ip_address_as_sni_is_served_without_a_warn_line() {
    let (_nodes, edge) = cluster(&["a"]).await;
    let https = edge.https;
    let ip_sni = move || {
        let mut child = std::process::Command::new("openssl")
            .args(["s_client", "-quiet", "-connect"])
            .arg(https.to_string())
            .args(["-servername", "127.0.0.1"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl is needed");
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"GET /healthcheck HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        // -quiet ignores the end of input: the answer's close ends it.
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for _ in 0..3 {
        let answer = tokio::task::spawn_blocking(ip_sni).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    let log = edge.log();
    assert!(
        !log.lines().any(|l| l.contains("WARN") && l.contains("SNI")),
        "{log}"
    );
}

#[tokio::test]
async fn tcp_probes_are_not_counted_as_tls_failures_but_garbage_is() {
    let (_nodes, edge) = cluster(&["a"]).await;
    let errors = || async {
        edge.metric("nakama_edge_tls_handshakes_total{result=\"error\"}")
            .await
    };
    for _ in 0..3 {
        drop(tokio::net::TcpStream::connect(edge.https).await.unwrap());
    }
    let mut garbage = tokio::net::TcpStream::connect(edge.https).await.unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, garbage.read_to_end(&mut sink)).await;
    eventually("the garbage counted", || async { errors().await == 1.0 }).await;
    // A bare connection after it, then a real handshake: still one error.
    drop(tokio::net::TcpStream::connect(edge.https).await.unwrap());
    let _ok = edge.tls_connect(ip("127.0.0.1"), &[b"h2"]).await;
    eventually("the handshake counted", || async {
        edge.metric("nakama_edge_tls_handshakes_total{result=\"ok\"}")
            .await
            == 1.0
    })
    .await;
    assert_eq!(errors().await, 1.0);
}

#[tokio::test]
async fn a_client_that_never_finishes_the_tls_handshake_is_dropped() {
    let (_nodes, edge) = cluster_with(&["a"], "[timeouts]\ntls_handshake = \"1s\"\n").await;
    let mut silent = tokio::net::TcpStream::connect(edge.https).await.unwrap();
    let started = Instant::now();
    let mut b = [0u8; 16];
    let n = tokio::time::timeout(DEADLINE, silent.read(&mut b))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without a byte");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "after {:?}",
        started.elapsed()
    );
    eventually("counted as a failed handshake", || async {
        edge.metric("nakama_edge_tls_handshakes_total{result=\"error\"}")
            .await
            == 1.0
    })
    .await;
}

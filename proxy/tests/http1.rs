//! HTTP/1.1 as a player's client sees it on one TLS connection: keep-alive, pipelining,
//! chunked answers, HEAD, `Connection: close`, chunked request bodies and refused framing
//! mid-connection, nodes restarted behind kept connections, a silent node.

mod support;

use std::time::Duration;

use support::raw::Raw;
use support::*;

fn whoami(extra: &str) -> String {
    format!("GET /v2/rpc/whoami?http_key=defaulthttpkey HTTP/1.1\r\nhost: localhost\r\n{extra}\r\n")
}

async fn edge_of(names: &[&str]) -> (Vec<StandIn>, Edge) {
    let nodes: Vec<StandIn> = names.iter().map(|n| StandIn::start(n)).collect();
    let toml: String = nodes.iter().map(StandIn::toml).collect();
    let edge = Edge::start(&toml, "");
    edge.wait_healthy(names).await;
    (nodes, edge)
}

async fn raw_h1(
    edge: &Edge,
    source: &str,
) -> Raw<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tls = edge.tls_connect(ip(source), &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    Raw::new(tls)
}

#[tokio::test]
async fn one_keep_alive_connection_goes_round_robin_with_the_edges_forwarded_headers() {
    let (_nodes, edge) = edge_of(&["a", "b"]).await;
    let mut conn = raw_h1(&edge, "127.0.0.2").await;
    let mut nodes = Vec::new();
    for _ in 0..6 {
        conn.send(
            whoami(
                "x-forwarded-for: 6.6.6.6\r\nx-real-ip: 6.6.6.6\r\nX_Forwarded_For: 6.6.6.6\r\n\
                 x-forwarded-proto: http\r\nconnection: keep-alive, x-hop\r\nx-hop: secret\r\n\
                 keep-alive: timeout=5\r\nx-game: kept\r\n",
            )
            .as_bytes(),
        )
        .await;
        let a = conn.answer().await;
        assert_eq!(a.status, 200);
        let seen = a.seen();
        assert_eq!(seen["x_forwarded_for"], "127.0.0.2", "{seen}");
        assert_eq!(seen["x_forwarded_proto"], "https", "{seen}");
        let headers = seen["headers"].as_object().unwrap();
        for gone in [
            "x-real-ip",
            "x_forwarded_for",
            "x-hop",
            "keep-alive",
            "connection",
        ] {
            assert!(
                !headers.contains_key(gone),
                "{gone} reached the node: {seen}"
            );
        }
        assert_eq!(headers["x-game"], "kept");
        assert_eq!(headers["x-forwarded-for"], "127.0.0.2", "one, the edge's");
        nodes.push(seen["node"].as_str().unwrap().to_string());
    }
    assert_eq!(nodes, ["a", "b", "a", "b", "a", "b"]);

    // The node's hop-by-hop headers stop at the edge.
    conn.send(
        b"GET /v2/rpc/hop_by_hop?http_key=defaulthttpkey HTTP/1.1\r\nhost: localhost\r\n\r\n",
    )
    .await;
    let a = conn.answer().await;
    assert_eq!(a.status, 200);
    for gone in [
        "keep-alive",
        "connection",
        "x-hop-secret",
        "proxy-connection",
        "trailer",
        "upgrade",
    ] {
        assert!(a.header(gone).is_none(), "{gone} reached the player: {a:?}");
    }

    // Counted per status code and node.
    let metrics = edge.metrics().await;
    let served: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("nakama_edge_http_requests_total{")
                && l.contains("code=\"200\"")
                && l.contains("route=\"api\"")
                && (l.contains("node=\"a\"") || l.contains("node=\"b\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(served >= 7.0, "{metrics}");
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_bodies_and_all() {
    let (_nodes, edge) = edge_of(&["a"]).await;
    let mut conn = raw_h1(&edge, "127.0.0.1").await;
    let body = "x".repeat(3000);
    let pipelined = format!(
        "{}POST /v2/rpc/whoami?http_key=defaulthttpkey HTTP/1.1\r\nhost: localhost\r\ncontent-length: {}\r\n\r\n{body}{}",
        whoami("x-order: 1\r\n"),
        body.len(),
        whoami("x-order: 3\r\n"),
    );
    conn.send(pipelined.as_bytes()).await;
    let first = conn.answer().await.seen();
    let second = conn.answer().await.seen();
    let third = conn.answer().await.seen();
    assert_eq!(first["headers"]["x-order"], "1");
    assert_eq!(second["body_bytes"], 3000, "{second}");
    assert_eq!(third["headers"]["x-order"], "3");
}

#[tokio::test]
async fn a_large_answer_comes_chunked_and_whole_and_the_connection_carries_on() {
    let (_nodes, edge) = edge_of(&["a"]).await;
    let mut conn = raw_h1(&edge, "127.0.0.1").await;
    // Over Go's 2 KiB response buffer: Nakama (and the stand-in) answer in chunks.
    let pad = "p".repeat(4000);
    for _ in 0..3 {
        conn.send(whoami(&format!("x-pad: {pad}\r\n")).as_bytes())
            .await;
        let a = conn.answer().await;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("transfer-encoding"), Some("chunked"));
        assert_eq!(a.seen()["headers"]["x-pad"], pad.as_str());
    }
    conn.send(whoami("").as_bytes()).await;
    assert_eq!(conn.answer().await.status, 200);
}

#[tokio::test]
async fn head_answers_have_no_body_and_connection_close_closes() {
    let (_nodes, edge) = edge_of(&["a"]).await;
    let mut conn = raw_h1(&edge, "127.0.0.1").await;
    conn.send(b"HEAD /v2/rpc/whoami?http_key=defaulthttpkey HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await;
    let a = conn.answer_to(true).await;
    assert_eq!(a.status, 200);
    assert!(
        a.header("content-length").is_some_and(|n| n != "0"),
        "{a:?}"
    );
    // Nothing but the next answer follows: no body went out for the HEAD.
    conn.send(b"GET /healthcheck HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await;
    let a = conn.answer().await;
    assert_eq!((a.status, a.body.as_slice()), (200, &b"{}"[..]));
    assert_eq!(a.header("connection"), Some("close"));
    assert!(
        conn.closed().await,
        "the edge closes after Connection: close"
    );
}

#[tokio::test]
async fn chunked_bodies_and_refused_framing_mid_connection() {
    let (_nodes, edge) = edge_of(&["a"]).await;
    let mut conn = raw_h1(&edge, "127.0.0.1").await;
    conn.send(whoami("").as_bytes()).await;
    assert_eq!(conn.answer().await.status, 200);
    // A chunked request body: read first, then sent to the node with its length.
    conn.send(
        b"POST /v2/rpc/whoami?http_key=defaulthttpkey HTTP/1.1\r\nhost: localhost\r\n\
          transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let a = conn.answer().await;
    assert_eq!(a.status, 200);
    assert_eq!(a.seen()["body_bytes"], 5);
    conn.send(whoami("").as_bytes()).await;
    assert_eq!(conn.answer().await.status, 200);
    // Framing that cannot be trusted is refused, and the connection closes.
    conn.send(
        b"POST /v2/rpc/whoami HTTP/1.1\r\nhost: localhost\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
    )
    .await;
    assert_eq!(conn.answer().await.status, 400);
}

#[tokio::test]
async fn a_node_restarted_behind_idle_connections_costs_no_request() {
    let (mut nodes, edge) = edge_of(&["a"]).await;
    let address = nodes[0].http;
    let grpc = nodes[0].grpc;
    let mut conn = raw_h1(&edge, "127.0.0.1").await;
    // Requests leave idle connections to the node in the edge's pool.
    for _ in 0..3 {
        conn.send(whoami("").as_bytes()).await;
        assert_eq!(conn.answer().await.status, 200);
    }
    nodes[0].kill();
    let grpc_flag = grpc.to_string();
    nodes[0] = StandIn::start_with("a", address, &["--grpc", &grpc_flag]);
    edge.wait_healthy(&["a"]).await;
    // A login is not idempotent: it is not sent twice, but a connection the node closed
    // before it was sent is not this request's failure.
    conn.send(
        b"POST /v2/account/authenticate/device?create=true HTTP/1.1\r\nhost: localhost\r\n\
          authorization: Basic ZGVmYXVsdGtleTo=\r\ncontent-type: application/json\r\n\
          content-length: 30\r\n\r\n{\"id\":\"restarted-node-device\"}",
    )
    .await;
    let a = conn.answer().await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    eventually("the access log names the protocol", || async {
        edge.log().contains("alpn=\"http/1.1\"")
    })
    .await;
}

#[tokio::test]
async fn a_slow_body_gets_408_and_the_connection_closes() {
    let a = StandIn::start("a");
    let edge = Edge::start(&a.toml(), "[timeouts]\nrequest_body = \"1s\"\n");
    edge.wait_healthy(&["a"]).await;
    let mut conn = raw_h1(&edge, "127.0.0.1").await;
    conn.send(
        b"POST /v2/rpc/whoami?http_key=defaulthttpkey HTTP/1.1\r\nhost: localhost\r\ncontent-length: 10\r\n\r\nabc",
    )
    .await;
    let answer = conn.answer().await;
    assert_eq!(answer.status, 408);
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(conn.closed().await);
    assert_eq!(
        a.stats().await["requests"],
        serde_json::json!(0),
        "nothing reached the node"
    );
}

#[tokio::test]
async fn a_node_silent_past_upstream_read_gets_504_and_the_request_goes_nowhere_else() {
    let (nodes, edge) = cluster_with(&["a", "b"], "[timeouts]\nupstream_read = \"1s\"\n").await;
    let requests = || async {
        let mut total = 0;
        for node in &nodes {
            total += node.stats().await["requests"].as_u64().unwrap();
        }
        total
    };
    let stuck = "/v2/rpc/slow?ms=600000&http_key=defaulthttpkey";
    let before = requests().await;
    // This path: 504 though the request is idempotent, and the connection carries on.
    let mut conn = raw_h1(&edge, "127.0.0.1").await;
    conn.send(format!("GET {stuck} HTTP/1.1\r\nhost: localhost\r\n\r\n").as_bytes())
        .await;
    assert_eq!(conn.answer().await.status, 504);
    assert_eq!(requests().await, before + 1, "not sent to the other node");
    conn.send(whoami("").as_bytes()).await;
    assert_eq!(conn.answer().await.status, 200);
    // HTTP/2: the same.
    let h2 = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(edge.certs.ca_pem.as_bytes()).unwrap())
        .tls_built_in_root_certs(false)
        .resolve("localhost", edge.https)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let r = h2.get(edge.url(stuck)).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 504);
    assert_eq!(requests().await, before + 3, "one more, and the whoami");
    eventually("both 504s in the access log", || async {
        edge.log().matches("status=504").count() == 2
    })
    .await;
}

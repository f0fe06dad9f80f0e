//! HTTP/1.1 conformance at the edge, tried as an attacker would: raw bytes from a player on
//! both listeners (plain, with `http_redirect = false`, and TLS), and a raw node that records
//! every byte it receives and answers exactly as each test scripts. Each class of the review
//! behind this suite has its cases: request smuggling through `Connection`, lengths and hosts
//! that must be refused, a partial head held open, a POST sent twice, and a node's answers
//! framed two ways, badly, or followed by bytes nobody asked for.

mod support;

use std::time::{Duration, Instant};

use support::raw::Raw;
use support::raw_node::{ok, RawNode, Reply, Seen};
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A player's transport.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The two listeners a player's HTTP/1.1 reaches the edge on.
#[derive(Debug, Clone, Copy)]
enum Over {
    /// The http listener, proxying (`http_redirect = false`).
    Plain,
    /// The https listener, ALPN http/1.1.
    Tls,
}

const BOTH: [Over; 2] = [Over::Plain, Over::Tls];

async fn connect(edge: &Edge, over: Over) -> Raw<Box<dyn Io>> {
    let stream: Box<dyn Io> = match over {
        Over::Plain => Box::new(tokio::net::TcpStream::connect(edge.http).await.unwrap()),
        Over::Tls => Box::new(edge.tls_connect(ip("127.0.0.1"), &[b"http/1.1"]).await),
    };
    Raw::new(stream)
}

/// An edge in front of `nodes` (name, node), proxying on both listeners.
async fn edge_for(nodes: &[(&str, &RawNode)], sections: &str) -> Edge {
    let toml: String = nodes.iter().map(|(name, n)| n.toml(name)).collect();
    let edge = Edge::start(&toml, &format!("http_redirect = false\n{sections}"));
    let names: Vec<&str> = nodes.iter().map(|(name, _)| *name).collect();
    edge.wait_healthy(&names).await;
    edge
}

/// Everything the connection still brings until the edge closes it (at most 10 s); `None` if
/// it stays open.
async fn rest_until_closed<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Vec<u8>> {
    let mut all = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(all),
            Ok(Ok(n)) => all.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The requests `bytes` (all a node connection brought) hold, one by one, each framed by its
/// own `Content-Length` (the only framing the edge sends a node).
fn requests_in(mut bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut requests = Vec::new();
    while !bytes.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(head)) = req.parse(bytes) else {
            panic!("not a whole request: {:?}", String::from_utf8_lossy(bytes));
        };
        assert!(
            !req.headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding")),
            "the edge frames what it sends with a length"
        );
        let length: usize = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map_or(0, |h| {
                std::str::from_utf8(h.value).unwrap().parse().unwrap()
            });
        let target = req.path.unwrap().to_string();
        requests.push((target, bytes[head..head + length].to_vec()));
        bytes = &bytes[head + length..];
    }
    requests
}

/// Every request every node connection brought (health checks aside).
fn all_requests(node: &RawNode) -> Vec<(String, Vec<u8>)> {
    let connections: std::collections::BTreeSet<usize> =
        node.requests().iter().map(|s| s.conn).collect();
    connections
        .into_iter()
        .flat_map(|c| requests_in(&node.bytes_of(c)))
        .filter(|(target, _)| !target.starts_with("/healthcheck"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_is_itself_a_request_reaches_the_node_as_one_body_whatever_connection_names() {
    let node = RawNode::start(|_, _| ok()).await;
    let edge = edge_for(&[("n", &node)], "").await;
    let smuggled =
        "GET /x HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6\r\nContent-Length: 0\r\n\r\n";
    let mut sent = 0;
    for over in BOTH {
        for connection in [
            "content-length",
            "host, content-length",
            "transfer-encoding",
        ] {
            let mut player = connect(&edge, over).await;
            let framing = if connection == "transfer-encoding" {
                format!(
                    "transfer-encoding: chunked\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
                    smuggled.len()
                )
            } else {
                format!("content-length: {}\r\n\r\n{smuggled}", smuggled.len())
            };
            player
                .send(
                    format!(
                        "POST /v2/rpc/echo HTTP/1.1\r\nhost: play.example.com\r\n\
                         connection: {connection}\r\n{framing}"
                    )
                    .as_bytes(),
                )
                .await;
            // A player behind the attacker, on the same connection.
            player
                .send(b"GET /v2/rpc/next HTTP/1.1\r\nhost: play.example.com\r\n\r\n")
                .await;
            assert_eq!(player.answer().await.status, 200, "{over:?} {connection}");
            assert_eq!(player.answer().await.status, 200, "{over:?} {connection}");
            sent += 2;
        }
    }
    eventually("every request at the node", || async {
        node.requests().len() == sent
    })
    .await;
    // Byte for byte, the node got the requests the players sent and no other: the smuggled
    // one only ever as a body, framed by the length of the body the edge read.
    let seen = all_requests(&node);
    assert_eq!(seen.len(), sent, "{seen:?}");
    assert!(seen.iter().all(|(target, _)| target != "/x"), "{seen:?}");
    for (target, body) in &seen {
        match target.as_str() {
            "/v2/rpc/echo" => assert_eq!(body, smuggled.as_bytes()),
            "/v2/rpc/next" => assert!(body.is_empty()),
            other => panic!("{other}"),
        }
    }
    for request in node.requests() {
        assert_eq!(
            request.header("host"),
            Some("play.example.com"),
            "{request:?}"
        );
        assert_eq!(request.count("x-forwarded-for"), 1, "{request:?}");
        assert_eq!(request.header("x-forwarded-for"), Some("127.0.0.1"));
        assert_eq!(request.header("connection"), None, "{request:?}");
    }
}

/// A request the edge must refuse: 400 (or another 4xx), then a closed connection, and
/// nothing at the node.
async fn refused(edge: &Edge, node: &RawNode, over: Over, request: &[u8], status: u16) {
    let before = node.requests().len();
    let mut player = connect(edge, over).await;
    player.send(request).await;
    let answer = player.answer().await;
    let shown = String::from_utf8_lossy(request);
    assert_eq!(answer.status, status, "{over:?} {shown:?}");
    assert!(player.closed().await, "{over:?} {shown:?}: left open");
    assert_eq!(
        node.requests().len(),
        before,
        "{over:?} {shown:?} reached the node"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_or_conflicting_lengths_hosts_and_authorizations_get_400_and_a_closed_connection() {
    let node = RawNode::start(|_, _| ok()).await;
    let edge = edge_for(&[("n", &node)], "").await;
    let cases: [&[u8]; 10] = [
        b"POST /v2/rpc/x HTTP/1.1\r\nhost: a\r\ncontent-length: +2\r\n\r\nok",
        b"POST /v2/rpc/x HTTP/1.1\r\nhost: a\r\ncontent-length: 2\xa0\r\n\r\nok",
        b"POST /v2/rpc/x HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nokk",
        b"POST /v2/rpc/x HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"POST /v2/rpc/x HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
        b"GET /v2/rpc/x HTTP/1.1\r\n\r\n",
        b"GET /v2/rpc/x HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
        b"GET /v2/rpc/x HTTP/1.1\r\nhost: a b\r\n\r\n",
        b"GET /v2/rpc/x HTTP/1.1\r\nhost: a\r\nauthorization: Bearer one\r\nauthorization: Bearer two\r\n\r\n",
        b"GET  /v2/rpc/x HTTP/1.1\r\nhost: a\r\n\r\n",
    ];
    for over in BOTH {
        for case in cases {
            refused(&edge, &node, over, case, 400).await;
        }
        refused(
            &edge,
            &node,
            over,
            b"CONNECT node:7351 HTTP/1.1\r\nhost: node:7351\r\n\r\n",
            405,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_length_beside_chunked_is_read_as_chunked_and_the_connection_closes_after() {
    // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, and the server closes the
    // connection after answering. hyper reads the body so; the node gets it with its length.
    let node = RawNode::start(|_, _| ok()).await;
    let edge = edge_for(&[("n", &node)], "").await;
    for over in BOTH {
        let mut player = connect(&edge, over).await;
        player
            .send(
                b"POST /v2/rpc/both HTTP/1.1\r\nhost: a\r\ncontent-length: 100\r\n\
                  transfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n\
                  GET /v2/rpc/smuggled HTTP/1.1\r\nhost: a\r\n\r\n",
            )
            .await;
        assert_eq!(player.answer().await.status, 200);
        assert!(player.closed().await, "{over:?}");
    }
    let seen = all_requests(&node);
    assert_eq!(seen.len(), 2, "{seen:?}");
    for (target, body) in seen {
        assert_eq!(
            (target.as_str(), body.as_slice()),
            ("/v2/rpc/both", &b"ok"[..])
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn heads_ending_in_bare_line_feeds_are_answered() {
    let node = RawNode::start(|_, _| ok()).await;
    let edge = edge_for(&[("n", &node)], "").await;
    for over in BOTH {
        for request in [
            &b"GET /v2/rpc/x HTTP/1.1\r\nhost: a\n\r\n"[..],
            b"GET /v2/rpc/x HTTP/1.1\nhost: a\n\n",
        ] {
            let mut player = connect(&edge, over).await;
            player.send(request).await;
            let answered = tokio::time::timeout(Duration::from_secs(5), player.answer()).await;
            assert_eq!(answered.map(|a| a.status).ok(), Some(200), "{over:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partial_head_after_a_complete_request_is_cut_off_at_request_header() {
    let node = RawNode::start(|_, _| ok()).await;
    let edge = edge_for(
        &[("n", &node)],
        "[timeouts]\nrequest_header = \"1s\"\nhttp_idle = \"60s\"\n",
    )
    .await;
    for over in BOTH {
        let mut player = connect(&edge, over).await;
        // One byte of the next request in the same write as the first, and one in a write of
        // its own after the answer.
        player
            .send(b"GET /v2/rpc/x HTTP/1.1\r\nhost: a\r\n\r\nG")
            .await;
        assert_eq!(player.answer().await.status, 200);
        let started = Instant::now();
        assert!(
            rest_until_closed(&mut player.stream).await.is_some(),
            "{over:?}: still open"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{over:?}");

        let mut player = connect(&edge, over).await;
        player
            .send(b"GET /v2/rpc/x HTTP/1.1\r\nhost: a\r\n\r\n")
            .await;
        assert_eq!(player.answer().await.status, 200);
        player.send(b"GET /v2/rp").await;
        let started = Instant::now();
        assert!(
            rest_until_closed(&mut player.stream).await.is_some(),
            "{over:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{over:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_player_that_stops_sending_after_its_request_still_gets_the_answer() {
    // The stand-in's `slow` RPC answers after 400 ms: the player's end of sending (a FIN;
    // over TLS a close_notify first) reaches the edge while the request is at the node.
    let (nodes, edge) = cluster_with(&["a"], "http_redirect = false\n").await;
    for over in BOTH {
        let mut player = connect(&edge, over).await;
        player
            .send(b"GET /v2/rpc/slow?ms=400&http_key=defaulthttpkey HTTP/1.1\r\nhost: a\r\n\r\n")
            .await;
        player.stream.shutdown().await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), player.answer()).await;
        assert_eq!(answer.map(|a| a.status).ok(), Some(200), "{over:?}");
        assert!(
            player.closed().await,
            "{over:?}: left open after the answer"
        );
    }
    assert_eq!(nodes[0].stats().await["requests"].as_u64(), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_closes_idle_and_partial_connections_and_the_process_exits() {
    let node = RawNode::start(|_, _| ok()).await;
    let grace = Duration::from_secs(8);
    let mut edge = edge_for(&[("n", &node)], "grace_period = \"8s\"\n").await;
    let mut idle = Vec::new();
    let mut partial = Vec::new();
    for over in BOTH {
        let mut player = connect(&edge, over).await;
        player
            .send(b"GET /v2/rpc/x HTTP/1.1\r\nhost: a\r\n\r\n")
            .await;
        assert_eq!(player.answer().await.status, 200);
        idle.push(player);
        let mut player = connect(&edge, over).await;
        player
            .send(b"GET /v2/rpc/x HTTP/1.1\r\nhost: a\r\n\r\nGET /v2")
            .await;
        assert_eq!(player.answer().await.status, 200);
        partial.push(player);
    }
    let signalled = Instant::now();
    edge.signal(libc::SIGTERM);
    // Closed halfway through the grace period (a request racing the close is still
    // answered before then), not left for the process's exit at its end.
    for player in idle.iter_mut().chain(partial.iter_mut()) {
        assert!(
            rest_until_closed(&mut player.stream).await.is_some(),
            "left open through a shutdown"
        );
        assert!(
            signalled.elapsed() < grace * 3 / 4,
            "{:?}",
            signalled.elapsed()
        );
    }
    assert!(edge
        .exited("SIGTERM with only idle and partial connections")
        .await
        .success());
    assert!(
        signalled.elapsed() < grace,
        "exited at the grace period's end, not before"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_post_its_node_read_then_dropped_is_not_sent_again_and_a_get_is() {
    // Node a answers GET /balance, and reads a POST or GET /flaky then closes the connection
    // (kept from an earlier request) without answering; b answers everything.
    let a = RawNode::start(|seen, _| match seen.target() {
        "/v2/rpc/balance" => ok(),
        _ => Reply::Close,
    })
    .await;
    let b = RawNode::start(|_, _| ok()).await;
    let edge = edge_for(&[("a", &a), ("b", &b)], "").await;
    let mut posts_sent = 0;
    for over in BOTH {
        let mut player = connect(&edge, over).await;
        for i in 0..4 {
            // Connections to both nodes, kept for the next requests.
            for _ in 0..2 {
                player.send(&get("/v2/rpc/balance")).await;
                assert_eq!(player.answer().await.status, 200);
            }
            player
                .send(
                    format!(
                        "POST /v2/rpc/purchase HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\n\r\n{i}"
                    )
                    .as_bytes(),
                )
                .await;
            let status = player.answer().await.status;
            assert!(status == 200 || status == 502, "{over:?} {status}");
            posts_sent += 1;
            player.send(&get("/v2/rpc/flaky")).await;
            assert_eq!(
                player.answer().await.status,
                200,
                "{over:?}: a GET is retried"
            );
        }
    }
    let count = |n: &RawNode, path: &str| {
        n.requests()
            .iter()
            .filter(|s: &&Seen| s.target() == path)
            .count()
    };
    let purchase = "/v2/rpc/purchase";
    // Each POST reached exactly one node, once: those a read got a 502, the others b's 200.
    assert_eq!(
        count(&a, purchase) + count(&b, purchase),
        posts_sent,
        "a POST was sent twice"
    );
    assert!(
        count(&a, purchase) > 0,
        "round-robin never sent a POST to a"
    );
    assert_eq!(
        count(&b, "/v2/rpc/flaky"),
        posts_sent,
        "every GET answered by b"
    );
}

/// A raw node answering by path: framings that must not reach a player, and some that may.
fn tricky_node(seen: &Seen, _: usize) -> Reply {
    let send = |bytes: &[u8]| Reply::Send(bytes.to_vec());
    match seen.target() {
        "/both" => send(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ),
        "/plus" => send(b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok"),
        "/garbage" => send(b"HTTPX 200 OK\r\n\r\n"),
        "/conn-cl" => send(b"HTTP/1.1 200 OK\r\nconnection: content-length\r\ncontent-length: 2\r\n\r\nok"),
        "/conn-te" => send(
            b"HTTP/1.1 200 OK\r\nconnection: transfer-encoding\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ),
        "/empty-chunk" => send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n\r\n"),
        "/early-hints" => send(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
        "/extra" => send(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged",
        ),
        _ => ok(),
    }
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: a\r\n\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nodes_answer_framed_two_ways_or_badly_gets_502_and_its_connection_goes() {
    let node = RawNode::start(tricky_node).await;
    let edge = edge_for(&[("n", &node)], "").await;
    for over in BOTH {
        for path in ["/both", "/plus", "/garbage"] {
            let mut player = connect(&edge, over).await;
            player.send(&get(path)).await;
            assert_eq!(player.answer().await.status, 502, "{over:?} {path}");
            // The player's connection carries on; the node's was dropped.
            player.send(&get("/after")).await;
            let after = player.answer().await;
            assert_eq!((after.status, after.body.as_slice()), (200, &b"{}"[..]));
            let requests = node.requests();
            let [.., bad, next] = requests.as_slice() else {
                panic!("{requests:?}")
            };
            assert_eq!(bad.target(), path);
            assert_ne!(
                bad.conn, next.conn,
                "{over:?} {path}: the connection was kept"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nodes_answer_reaches_the_player_framed_by_the_edge() {
    let node = RawNode::start(tricky_node).await;
    let edge = edge_for(&[("n", &node)], "").await;
    for over in BOTH {
        let mut player = connect(&edge, over).await;
        // Connection naming the framing headers does not unframe the answer.
        for path in ["/conn-cl", "/conn-te", "/early-hints"] {
            player.send(&get(path)).await;
            let a = player.answer().await;
            assert_eq!(
                (a.status, a.body.as_slice()),
                (200, &b"ok"[..]),
                "{over:?} {path}"
            );
            assert!(a.header("connection").is_none(), "{over:?} {path}: {a:?}");
        }
        // Bytes after a whole answer never reach the next request.
        player.send(&get("/extra")).await;
        assert_eq!(player.answer().await.body, b"ok");
        player.send(&get("/after")).await;
        let after = player.answer().await;
        assert_eq!(
            after.body, b"{}",
            "{over:?}: the node's extra bytes were relayed"
        );

        // A chunked body whose size line is empty is not a last chunk: the answer is cut
        // off, never presented as whole.
        let mut player = connect(&edge, over).await;
        player.send(&get("/empty-chunk")).await;
        let rest = rest_until_closed(&mut player.stream)
            .await
            .expect("the connection closes");
        let text = String::from_utf8_lossy(&rest);
        assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
        assert!(
            !text.ends_with("0\r\n\r\n"),
            "{over:?}: ended as if whole: {text:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn expect_100_continue_is_answered_by_the_edge_and_the_node_gets_the_body() {
    let node = RawNode::start(|_, _| ok()).await;
    let edge = edge_for(&[("n", &node)], "").await;
    for over in BOTH {
        let mut player = connect(&edge, over).await;
        player
            .send(b"POST /v2/rpc/x HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n")
            .await;
        let interim = player.answer_to(true).await;
        assert_eq!(interim.status, 100, "{over:?}");
        player.send(b"hello").await;
        assert_eq!(player.answer().await.status, 200);
        let last = node.requests().pop().unwrap();
        assert_eq!(last.body, b"hello");
        assert_eq!(last.header("expect"), None, "{last:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kept_node_connection_the_node_closes_is_closed_by_the_edge_at_once() {
    // The node answers, then closes its side, as Nakama does after its keep-alive timeout.
    let node = RawNode::start(|_, _| {
        Reply::SendAndHalfClose(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}".to_vec())
    })
    .await;
    let edge = edge_for(&[("n", &node)], "[health_check]\ninterval = \"1h\"\n").await;
    for over in BOTH {
        let mut player = connect(&edge, over).await;
        for _ in 0..3 {
            player.send(&get("/v2/rpc/x")).await;
            assert_eq!(player.answer().await.status, 200);
        }
    }
    // Every connection the node closed is closed on the edge's side too: none is left half
    // open (the node's side of each ends when the edge's does).
    eventually("no node connection left open", || async {
        node.open() == 0
    })
    .await;
}

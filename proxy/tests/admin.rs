//! The admin API and the plain-HTTP listener.

mod support;

use support::*;

#[tokio::test]
async fn readiness_waits_for_a_routable_node() {
    let mut a = StandIn::start("a");
    let edge = Edge::start(&a.toml(), "");
    let admin = format!("http://{}", edge.admin);
    eventually("healthz", || async {
        reqwest::get(format!("{admin}/healthz"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    edge.wait_healthy(&["a"]).await;
    a.kill();
    eventually("readyz 503 with no routable node", || async {
        reqwest::get(format!("{admin}/readyz"))
            .await
            .is_ok_and(|r| r.status() == 503)
    })
    .await;
    assert_eq!(
        reqwest::get(format!("{admin}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn nodes_and_drain_api() {
    let a = StandIn::start("a");
    let edge = Edge::start(&a.toml(), "");
    edge.wait_healthy(&["a"]).await;
    let nodes = edge.nodes().await;
    assert_eq!(nodes.len(), 1);
    let n = &nodes[0];
    assert_eq!(n["name"], "a");
    assert_eq!(n["address"], a.http.to_string());
    assert_eq!(n["state"], "healthy");
    assert_eq!(n["health"], "healthy");
    assert_eq!(n["http_in_flight"], 0);
    assert_eq!(n["websockets"], 0);

    assert_eq!(edge.admin_post("/nodes/nope/drain").await, 404);
    assert_eq!(edge.admin_post("/nodes/a/drain").await, 200);
    assert_eq!(edge.node_state("a").await, "draining");
    let client = edge.client(None);
    assert_eq!(
        whoami_http(&edge, &client).await.unwrap_err(),
        "status 503 Service Unavailable"
    );
    assert_eq!(edge.admin_post("/nodes/a/undrain").await, 200);
    let get = reqwest::get(format!("http://{}/nodes/a/drain", edge.admin))
        .await
        .unwrap();
    assert_eq!(get.status(), 405);
    assert_eq!(edge.admin_post("/metrics").await, 405);
    assert_eq!(
        reqwest::get(format!("http://{}/nothing", edge.admin))
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test]
async fn an_open_websocket_is_counted_as_a_websocket_not_as_a_request_in_flight() {
    let a = StandIn::start("a");
    let edge = Edge::start(&a.toml(), "");
    edge.wait_healthy(&["a"]).await;
    let client = edge.client(None);
    let s = edge.authenticate(&client, "in-flight-device").await;
    let ws = edge.websocket(&s.token, ip("127.0.0.1")).await.unwrap();
    // What `drain --wait` waits for: the upgrade request ended with its 101.
    eventually("one WebSocket and no request in flight", || async {
        edge.nodes()
            .await
            .iter()
            .any(|n| n["name"] == "a" && n["websockets"] == 1 && n["http_in_flight"] == 0)
    })
    .await;
    ws.close().await;
    eventually("nothing open", || async {
        edge.nodes()
            .await
            .iter()
            .any(|n| n["name"] == "a" && n["websockets"] == 0 && n["http_in_flight"] == 0)
    })
    .await;
}

#[tokio::test]
async fn metrics_count_requests_by_code_route_and_node() {
    let a = StandIn::start("a");
    let edge = Edge::start(&a.toml(), "");
    edge.wait_healthy(&["a"]).await;
    let client = edge.client(None);
    for _ in 0..3 {
        whoami_http(&edge, &client).await.unwrap();
    }
    let r = client.get(edge.url("/v2/rpc/whoami")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let s = edge.authenticate(&client, "metrics-device").await;
    let ws = edge.websocket(&s.token, ip("127.0.0.1")).await.unwrap();
    eventually("websocket gauge", || async {
        edge.metric("nakama_edge_websocket_connections{node=\"a\"}")
            .await
            == 1.0
    })
    .await;
    ws.close().await;
    let m = |s: &'static str| {
        let edge = &edge;
        async move { edge.metric(s).await }
    };
    eventually("101 counted when the socket ends", || async {
        m("nakama_edge_http_requests_total{code=\"101\",node=\"a\",route=\"websocket\"}").await
            == 1.0
    })
    .await;
    assert_eq!(
        m("nakama_edge_http_requests_total{code=\"200\",node=\"a\",route=\"api\"}").await,
        4.0,
        "3 rpc + 1 auth"
    );
    assert_eq!(
        m("nakama_edge_http_requests_total{code=\"401\",node=\"a\",route=\"api\"}").await,
        1.0
    );
    assert_eq!(
        m("nakama_edge_websocket_connections{node=\"a\"}").await,
        0.0
    );
    assert_eq!(m("nakama_edge_node_up{node=\"a\"}").await, 1.0);
    assert_eq!(m("nakama_edge_node_draining{node=\"a\"}").await, 0.0);
    assert!(m("nakama_edge_tls_handshakes_total{result=\"ok\"}").await >= 2.0);
    assert_eq!(
        m("nakama_edge_http_request_duration_seconds_count{route=\"api\"}").await,
        5.0
    );
}

#[tokio::test]
async fn the_http_listener_redirects_and_reserves_the_acme_path() {
    let a = StandIn::start("a");
    let edge = Edge::start(&a.toml(), "");
    edge.wait_healthy(&["a"]).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = client
        .get(format!(
            "http://{}/v2/rpc/whoami?http_key=defaulthttpkey",
            edge.http
        ))
        .header("host", "play.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"],
        format!(
            "https://play.example.com:{}/v2/rpc/whoami?http_key=defaulthttpkey",
            edge.https.port()
        )
    );
    let r = client
        .get(format!(
            "http://{}/.well-known/acme-challenge/some-token",
            edge.http
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "not redirected, not proxied");
    edge.assert_metric(
        "nakama_edge_http_requests_total{code=\"404\",node=\"none\",route=\"acme\"}",
        1.0,
    )
    .await;
    edge.assert_metric(
        "nakama_edge_http_requests_total{code=\"308\",node=\"none\",route=\"redirect\"}",
        1.0,
    )
    .await;
}

#[tokio::test]
async fn the_http_listener_proxies_when_redirect_is_off() {
    let a = StandIn::start("a");
    let edge = Edge::start(&a.toml(), "");
    edge.wait_healthy(&["a"]).await;
    let plain = format!("http://{}/v2/rpc/whoami?http_key=defaulthttpkey", edge.http);
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    assert_eq!(no_redirects.get(&plain).send().await.unwrap().status(), 308);
    // Turn the redirect off: a listener setting that is not an address, so it applies live.
    let text = edge
        .config_text(&a.toml(), "")
        .replace("[listeners]\n", "[listeners]\nhttp_redirect = false\n");
    edge.write_raw_config(&text);
    eventually("proxied over plain HTTP", || async {
        let r = no_redirects.get(&plain).send().await;
        match r {
            Ok(r) if r.status() == 200 => {
                let v: serde_json::Value = r.json().await.unwrap();
                let seen: serde_json::Value =
                    serde_json::from_str(v["payload"].as_str().unwrap()).unwrap();
                seen["x_forwarded_proto"] == "http"
            }
            _ => false,
        }
    })
    .await;
}

#[tokio::test]
async fn the_admin_api_answers_only_admin_allow() {
    let a = StandIn::start("a");
    // Loopback is allowed by default; here only 127.0.0.1 is.
    let edge = Edge::start(&a.toml(), "[firewall]\nadmin_allow = [\"127.0.0.1/32\"]\n");
    edge.wait_healthy(&["a"]).await;
    let from = |source: &str| {
        reqwest::Client::builder()
            .local_address(ip(source))
            .build()
            .unwrap()
            .get(format!("http://{}/healthz", edge.admin))
            .send()
    };
    assert_eq!(from("127.0.0.1").await.unwrap().status(), 200);
    assert!(
        from("127.0.0.2").await.is_err(),
        "a peer outside admin_allow got an answer"
    );
    edge.assert_metric(
        "nakama_edge_connections_rejected_total{reason=\"firewall\"}",
        1.0,
    )
    .await;
}

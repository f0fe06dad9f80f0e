//! How players are spread over nodes: round-robin for the API, sticky per user for
//! WebSockets, gRPC to the gRPC port, and what Nakama sees of the client's address.

mod support;

use std::collections::HashMap;

use support::*;

#[tokio::test]
async fn api_calls_are_spread_round_robin_by_weight() {
    let (a, b, c) = (
        StandIn::start("a"),
        StandIn::start("b"),
        StandIn::start("c"),
    );
    let nodes = format!("{}{}weight = 2\n{}", a.toml(), b.toml(), c.toml());
    let edge = Edge::start(&nodes, "");
    edge.wait_healthy(&["a", "b", "c"]).await;
    let client = edge.client(None);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..40 {
        let who = whoami_http(&edge, &client).await.unwrap();
        *seen
            .entry(who["node"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    // Weights 1:2:1 over 40 requests: exactly 10, 20, 10 when nothing else is routed.
    assert_eq!((seen["a"], seen["b"], seen["c"]), (10, 20, 10), "{seen:?}");
}

#[tokio::test]
async fn x_forwarded_for_is_replaced_and_client_ip_headers_are_dropped() {
    let a = StandIn::start("a");
    let edge = Edge::start(&a.toml(), "");
    edge.wait_healthy(&["a"]).await;
    let client = edge.client(Some(ip("127.0.0.2")));
    let r = client
        .get(edge.url("/v2/rpc/whoami?http_key=defaulthttpkey"))
        .header("X-Forwarded-For", "6.6.6.6")
        .header("X-Real-IP", "6.6.6.6")
        .header("Forwarded", "for=6.6.6.6")
        .header("CF-Connecting-IP", "6.6.6.6")
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    let seen: serde_json::Value = serde_json::from_str(v["payload"].as_str().unwrap()).unwrap();
    assert_eq!(seen["x_forwarded_for"], "127.0.0.2", "{seen}");
    assert_eq!(seen["x_forwarded_proto"], "https");
    assert!(
        seen["x_real_ip"].is_null()
            && seen["forwarded"].is_null()
            && seen["cf_connecting_ip"].is_null(),
        "{seen}"
    );
}

#[tokio::test]
async fn a_user_keeps_their_node_across_reconnects_from_new_addresses_and_token_refreshes() {
    let (_nodes, edge) = cluster(&["a", "b", "c"]).await;
    let client = edge.client(None);
    let mut first_nodes = HashMap::new();
    let mut sessions = Vec::new();
    for i in 0..24 {
        let device = format!("sticky-device-{i:04}");
        let session = edge.authenticate(&client, &device).await;
        let mut ws = edge
            .websocket(&session.token, ip("127.0.0.1"))
            .await
            .unwrap();
        let node = ws.node().await;
        ws.close().await;

        // Reconnect from other addresses.
        for source in ["127.0.0.2", "127.0.0.3"] {
            let mut ws = edge.websocket(&session.token, ip(source)).await.unwrap();
            assert_eq!(ws.node().await, node, "{device} from {source}");
            ws.close().await;
        }
        first_nodes.insert(device.clone(), node);
        sessions.push((device, session));
    }
    // And with a refreshed token: Nakama gives the same token to a refresh within the second
    // the session was made, so the refreshes come in the next one.
    let unix_secs = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let made = unix_secs();
    eventually("the next second", || async { unix_secs() > made }).await;
    for (device, session) in &sessions {
        let (_, refreshed) = with_server_key(
            &edge.client(Some(ip("127.0.0.3"))),
            edge.url("/v2/account/session/refresh"),
            serde_json::json!({"token": session.refresh_token}),
        )
        .await;
        let new_token = refreshed["token"].as_str().unwrap();
        assert_ne!(new_token, session.token);
        let mut ws = edge.websocket(new_token, ip("127.0.0.2")).await.unwrap();
        assert_eq!(
            ws.node().await,
            first_nodes[device],
            "{device} after refresh"
        );
        ws.close().await;
    }
    let used: std::collections::HashSet<_> = first_nodes.values().collect();
    assert_eq!(
        used.len(),
        3,
        "users spread over all nodes: {first_nodes:?}"
    );
}

#[tokio::test]
async fn a_bad_token_is_refused_by_the_node_before_the_upgrade() {
    let a = StandIn::start("a");
    let edge = Edge::start(&a.toml(), "");
    edge.wait_healthy(&["a"]).await;
    let err = edge
        .websocket("not-a-token", ip("127.0.0.1"))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("401"), "{err}");
}

#[tokio::test]
async fn grpc_goes_to_the_grpc_port_over_h2() {
    let (_nodes, edge) = cluster(&["a", "b"]).await;
    let mut nodes = Vec::new();
    for _ in 0..4 {
        let text = edge.grpc("/nakama.api.Nakama/RpcFunc", &[]);
        assert!(text.starts_with("HTTP/2 200"), "{text}");
        assert!(text.contains("grpc-status: 0"), "trailers relayed: {text}");
        let node = text
            .split("\"node\":\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap()
            .to_string();
        nodes.push(node);
    }
    nodes.sort();
    assert_eq!(nodes, ["a", "a", "b", "b"]);
}

#[tokio::test]
async fn with_sticky_key_client_ip_websockets_follow_the_address() {
    let (_nodes, edge) =
        cluster_with(&["a", "b", "c"], "[routing]\nsticky_key = \"client_ip\"\n").await;
    let client = edge.client(None);
    let mut by_source: HashMap<&str, std::collections::HashSet<String>> = HashMap::new();
    for i in 0..8 {
        let s = edge
            .authenticate(&client, &format!("ip-sticky-{i:03}"))
            .await;
        for source in ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"] {
            let mut ws = edge.websocket(&s.token, ip(source)).await.unwrap();
            by_source.entry(source).or_default().insert(ws.node().await);
            ws.close().await;
        }
    }
    for (source, nodes) in &by_source {
        assert_eq!(
            nodes.len(),
            1,
            "every user from {source} lands on one node: {nodes:?}"
        );
    }
}

//! Nodes leaving and returning: killed, failing health checks, drained, rebooted, removed.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use support::*;

/// A device id whose WebSocket lands on `node`.
async fn device_on(edge: &Edge, client: &reqwest::Client, node: &str) -> (String, Session) {
    for i in 0..200 {
        let device = format!("device-for-{node}-{i:03}");
        let session = edge.authenticate(client, &device).await;
        let mut ws = edge
            .websocket(&session.token, ip("127.0.0.1"))
            .await
            .unwrap();
        let on = ws.node().await;
        ws.close().await;
        if on == node {
            return (device, session);
        }
    }
    panic!("no device lands on {node}");
}

#[tokio::test]
async fn a_killed_node_is_taken_out_without_failing_a_request() {
    let (a, mut b, c) = (
        StandIn::start("a"),
        StandIn::start("b"),
        StandIn::start("c"),
    );
    let edge = Arc::new(Edge::start(
        &format!("{}{}{}", a.toml(), b.toml(), c.toml()),
        "",
    ));
    edge.wait_healthy(&["a", "b", "c"]).await;

    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (edge, done, failures) = (edge.clone(), done.clone(), failures.clone());
        workers.push(tokio::spawn(async move {
            let client = edge.client(None);
            for _ in 0..150 {
                if let Err(e) = whoami_http(&edge, &client).await {
                    failures.lock().unwrap().push(e);
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    eventually("100 requests done", || async {
        done.load(Ordering::Relaxed) >= 100
    })
    .await;
    b.kill();
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(done.load(Ordering::Relaxed), 600);
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed requests, the first: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert_eq!(edge.node_state("b").await, "unhealthy");
    let client = edge.client(None);
    for _ in 0..20 {
        assert_ne!(whoami_http(&edge, &client).await.unwrap()["node"], "b");
    }
}

#[tokio::test]
async fn a_node_failing_its_health_check_leaves_and_comes_back() {
    let (nodes, edge) = cluster(&["a", "b"]).await;
    let a = &nodes[0];
    let client = edge.client(None);

    a.set_healthy(false).await;
    eventually("a unhealthy", || async {
        edge.node_state("a").await == "unhealthy"
    })
    .await;
    edge.assert_metric("nakama_edge_node_up{node=\"a\"}", 0.0)
        .await;
    for _ in 0..10 {
        assert_eq!(whoami_http(&edge, &client).await.unwrap()["node"], "b");
    }
    a.set_healthy(true).await;
    eventually("a healthy again", || async {
        edge.node_state("a").await == "healthy"
    })
    .await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(
            whoami_http(&edge, &client).await.unwrap()["node"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert!(seen.contains(&"a".to_string()), "{seen:?}");
}

#[tokio::test]
async fn a_drained_node_gets_no_new_work_while_its_websockets_stay() {
    let (_nodes, edge) = cluster(&["a", "b", "c"]).await;
    let client = edge.client(None);
    let (_, session) = device_on(&edge, &client, "a").await;
    let mut open = edge
        .websocket(&session.token, ip("127.0.0.2"))
        .await
        .unwrap();
    assert_eq!(open.node().await, "a");

    assert_eq!(edge.admin_post("/nodes/a/drain").await, 200);
    assert_eq!(edge.node_state("a").await, "draining");
    edge.assert_metric("nakama_edge_node_draining{node=\"a\"}", 1.0)
        .await;
    for _ in 0..12 {
        assert_ne!(whoami_http(&edge, &client).await.unwrap()["node"], "a");
    }
    // The same user connecting again goes elsewhere while a drains...
    let mut moved = edge
        .websocket(&session.token, ip("127.0.0.3"))
        .await
        .unwrap();
    assert_ne!(moved.node().await, "a");
    moved.close().await;
    // ...and the socket already on a keeps working.
    assert_eq!(open.node().await, "a");
    let a_view = edge
        .nodes()
        .await
        .into_iter()
        .find(|n| n["name"] == "a")
        .unwrap();
    assert_eq!(a_view["websockets"], 1, "{a_view}");

    assert_eq!(edge.admin_post("/nodes/a/undrain").await, 200);
    assert_eq!(edge.node_state("a").await, "healthy");
    let mut back = edge
        .websocket(&session.token, ip("127.0.0.1"))
        .await
        .unwrap();
    assert_eq!(back.node().await, "a", "the user returns to their node");
    assert_eq!(open.node().await, "a");
}

#[tokio::test]
async fn websockets_on_a_drained_node_are_closed_after_the_drain_timeout() {
    let a = StandIn::start_with(
        "a",
        "127.0.0.1:0".parse().unwrap(),
        &["--ping-interval", "0.2"],
    );
    let b = StandIn::start("b");
    let edge = Edge::start(
        &format!("{}{}", a.toml(), b.toml()),
        "[routing]\ndrain_timeout = \"1s\"\n",
    );
    edge.wait_healthy(&["a", "b"]).await;
    let client = edge.client(None);
    let (_, session) = device_on(&edge, &client, "a").await;
    let mut ws = edge
        .websocket(&session.token, ip("127.0.0.1"))
        .await
        .unwrap();
    assert_eq!(ws.node().await, "a");
    assert_eq!(edge.admin_post("/nodes/a/drain").await, 200);
    let how = ws.closed().await;
    assert!(
        how.contains("Away"),
        "a close frame 1001 (going away), not a cut: {how}"
    );
    eventually("a has no WebSockets", || async {
        a.stats().await["websockets"] == 0
    })
    .await;
    eventually("edge counts none on a", || async {
        edge.nodes()
            .await
            .iter()
            .any(|n| n["name"] == "a" && n["websockets"] == 0)
    })
    .await;
}

#[tokio::test]
async fn a_drained_node_rebooting_like_nakama_loses_no_request() {
    let a = StandIn::start_with(
        "a",
        "127.0.0.1:0".parse().unwrap(),
        &["--shutdown-grace", "1"],
    );
    let b = StandIn::start("b");
    let a_addr = a.http;
    let edge = Arc::new(Edge::start(&format!("{}{}", a.toml(), b.toml()), ""));
    edge.wait_healthy(&["a", "b"]).await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let load = {
        let (edge, stop, failures, sent) =
            (edge.clone(), stop.clone(), failures.clone(), sent.clone());
        tokio::spawn(async move {
            let client = edge.client(None);
            // Bounded: at most 5,000 requests.
            for _ in 0..5000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if whoami_http(&edge, &client).await.is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    // The rolling-reboot step: drain, stop Nakama (it keeps serving for its grace period, then
    // closes its listener), start it again, wait for health, undrain.
    assert_eq!(edge.admin_post("/nodes/a/drain").await, 200);
    let mut a = a;
    a.terminate();
    // Nakama keeps its health check green during the grace period...
    assert!(reqwest::get(format!("http://{a_addr}/healthcheck"))
        .await
        .unwrap()
        .status()
        .is_success());
    // ...then closes its listener.
    eventually("a's process gone", || async {
        std::net::TcpStream::connect(a_addr).is_err()
    })
    .await;
    a.kill();
    eventually("the edge sees a down", || async {
        edge.nodes()
            .await
            .iter()
            .any(|n| n["name"] == "a" && n["health"] == "unhealthy")
    })
    .await;
    let _a2 = StandIn::start_with("a", a_addr, &["--shutdown-grace", "1"]);
    eventually("a healthy after restart", || async {
        edge.nodes()
            .await
            .iter()
            .any(|n| n["name"] == "a" && n["health"] == "healthy" && n["state"] == "draining")
    })
    .await;
    assert_eq!(edge.admin_post("/nodes/a/undrain").await, 200);
    eventually("a back in rotation", || async {
        edge.node_state("a").await == "healthy"
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    // With the load stopped, nothing else advances the round-robin between these requests.
    let client = edge.client(None);
    let mut seen_a = false;
    for _ in 0..4 {
        seen_a |= whoami_http(&edge, &client).await.unwrap()["node"] == "a";
    }
    assert!(seen_a, "a serves again after the reboot");
    assert!(sent.load(Ordering::Relaxed) > 0);
    assert_eq!(failures.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn removing_a_node_moves_only_its_users() {
    let nodes: Vec<StandIn> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| StandIn::start(n))
        .collect();
    let all: String = nodes.iter().map(StandIn::toml).collect();
    let edge = Edge::start(&all, "");
    edge.wait_healthy(&["a", "b", "c", "d"]).await;
    let client = edge.client(None);

    let mut before = HashMap::new();
    let mut sessions = Vec::new();
    for i in 0..120 {
        let session = edge.authenticate(&client, &format!("spread-{i:04}")).await;
        let mut ws = edge
            .websocket(&session.token, ip("127.0.0.1"))
            .await
            .unwrap();
        before.insert(i, ws.node().await);
        ws.close().await;
        sessions.push(session);
    }
    let without_d: String = nodes[..3].iter().map(StandIn::toml).collect();
    edge.write_config(&without_d, "");
    eventually("config reloaded", || async {
        edge.metric("nakama_edge_config_reloads_total{result=\"success\"}")
            .await
            >= 1.0
    })
    .await;
    assert_eq!(edge.nodes().await.len(), 3);

    let mut moved = 0;
    for (i, session) in sessions.iter().enumerate() {
        let mut ws = edge
            .websocket(&session.token, ip("127.0.0.2"))
            .await
            .unwrap();
        let now = ws.node().await;
        ws.close().await;
        if before[&i] == "d" {
            moved += 1;
            assert_ne!(now, "d");
        } else {
            assert_eq!(now, before[&i], "user {i} of a node that stayed moved");
        }
    }
    let share = moved as f64 / sessions.len() as f64;
    assert!(
        (0.1..0.45).contains(&share),
        "about 1/4 of the users were on d and moved: {share}"
    );
}

//! Hot reload as an operator sees it: edits under live traffic drop nothing, a bad file is
//! rejected whole while the old config serves, SIGHUP works, certificates swap live.

mod support;

use std::sync::Arc;

use support::*;

async fn reloads(edge: &Edge, result: &str) -> f64 {
    edge.metric(&format!(
        "nakama_edge_config_reloads_total{{result=\"{result}\"}}"
    ))
    .await
}

#[tokio::test]
async fn editing_the_config_under_live_websockets_drops_none() {
    let (a, b, c) = (
        StandIn::start("a"),
        StandIn::start("b"),
        StandIn::start("c"),
    );
    let edge = Edge::start(&format!("{}{}", a.toml(), b.toml()), "");
    edge.wait_healthy(&["a", "b"]).await;
    let client = edge.client(None);
    let mut sockets = Vec::new();
    for i in 0..20 {
        let s = edge
            .authenticate(&client, &format!("live-player-{i:03}"))
            .await;
        let mut ws = edge.websocket(&s.token, ip("127.0.0.1")).await.unwrap();
        let node = ws.node().await;
        sockets.push((ws, node));
    }

    // Add a node, change health checking and routing settings, and drain b.
    let sections = "[health_check]\ninterval = \"300ms\"\ntimeout = \"400ms\"\nunhealthy_threshold = 3\nhealthy_threshold = 1\n\
                    [routing]\ndrain_timeout = \"10m\"\n[rate_limit]\nrequests_per_second = 500\n";
    let nodes = format!("{}{}drain = true\n{}", a.toml(), b.toml(), c.toml());
    edge.write_config(&nodes, sections);
    eventually("reload", || async {
        reloads(&edge, "success").await >= 1.0
    })
    .await;
    eventually("c healthy", || async {
        edge.node_state("c").await == "healthy"
    })
    .await;
    assert_eq!(edge.node_state("b").await, "draining");

    for (ws, node) in sockets.iter_mut() {
        assert_eq!(
            ws.whoami().await.unwrap()["node"],
            node.as_str(),
            "socket survived the reload"
        );
    }
    assert_eq!(reloads(&edge, "failure").await, 0.0);
}

#[tokio::test]
async fn an_invalid_config_is_rejected_whole_and_the_old_one_keeps_serving() {
    let (a, b) = (StandIn::start("a"), StandIn::start("b"));
    let edge = Edge::start(&a.toml(), "");
    edge.wait_healthy(&["a"]).await;
    let good = edge.config_text(&a.toml(), "");

    // Valid TOML with one bad value among good changes (b added): nothing of it applies.
    let bad = edge.config_text(
        &format!("{}{}", a.toml(), b.toml()),
        "[routing]\ndrain_timeout = \"soon\"\n",
    );
    edge.write_raw_config(&bad);
    eventually("rejection counted", || async {
        reloads(&edge, "failure").await >= 1.0
    })
    .await;
    assert_eq!(
        edge.nodes().await.len(),
        1,
        "b was not added from the rejected file"
    );
    let client = edge.client(None);
    assert_eq!(whoami_http(&edge, &client).await.unwrap()["node"], "a");
    let log = edge.log();
    assert!(
        log.contains("drain_timeout") && log.contains("previous config keeps serving"),
        "{log}"
    );
    let line = bad.lines().position(|l| l.contains("soon")).unwrap() + 1;
    assert!(
        log.contains(&format!("edge.toml:{line}:")),
        "the log names line {line}: {log}"
    );

    // Not TOML at all.
    edge.write_raw_config("[listeners\nthis is not toml");
    eventually("second rejection", || async {
        reloads(&edge, "failure").await >= 2.0
    })
    .await;
    assert_eq!(whoami_http(&edge, &client).await.unwrap()["node"], "a");

    // Fixed: applies.
    edge.write_raw_config(&good.replace("unhealthy_threshold = 2", "unhealthy_threshold = 4"));
    eventually("reload after the fix", || async {
        reloads(&edge, "success").await >= 1.0
    })
    .await;
}

#[tokio::test]
async fn sighup_reloads() {
    let (a, b) = (StandIn::start("a"), StandIn::start("b"));
    let mut edge = Edge::start(&a.toml(), "");
    edge.wait_healthy(&["a"]).await;
    edge.write_config(&format!("{}{}", a.toml(), b.toml()), "");
    eventually("file reload", || async {
        reloads(&edge, "success").await >= 1.0
    })
    .await;
    let before = reloads(&edge, "success").await;
    edge.signal(libc::SIGHUP);
    eventually("SIGHUP reload", || async {
        reloads(&edge, "success").await > before
    })
    .await;
    assert!(edge.log().contains("SIGHUP"));
    assert!(
        edge.try_exit().is_none(),
        "SIGHUP does not stop the process"
    );
}

#[tokio::test]
async fn a_listener_change_is_logged_as_needing_a_restart() {
    let a = StandIn::start("a");
    let edge = Edge::start(&a.toml(), "");
    edge.wait_healthy(&["a"]).await;
    let moved = edge.config_text(&a.toml(), "").replace(
        &edge.admin.to_string(),
        &format!("127.0.0.1:{}", free_port()),
    );
    edge.write_raw_config(&moved);
    eventually("reload", || async {
        reloads(&edge, "success").await >= 1.0
    })
    .await;
    assert!(edge.log().contains("takes a restart"), "{}", edge.log());
    assert_eq!(
        edge.nodes().await.len(),
        1,
        "the admin API still answers on the old address"
    );
}

/// The certificate the https listener presents now.
async fn served_certificate(edge: &Edge) -> Vec<u8> {
    let tls = edge.tls_connect(ip("127.0.0.1"), &[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn replaced_certificate_files_are_served_at_the_next_handshake_and_nothing_drops() {
    let a = StandIn::start("a");
    let edge = Arc::new(Edge::start(&a.toml(), ""));
    edge.wait_healthy(&["a"]).await;
    let client = edge.client(None);
    let session = edge.authenticate(&client, "cert-swap-device").await;
    let mut ws = edge
        .websocket(&session.token, ip("127.0.0.1"))
        .await
        .unwrap();
    assert_eq!(ws.node().await, "a");
    let first = served_certificate(&edge).await;

    let second = edge
        .certs
        .write_leaf(&edge.cert_path, &edge.key_path, "second");
    assert_ne!(first, second);
    eventually("the new certificate is served", || async {
        served_certificate(&edge).await == second
    })
    .await;
    assert_eq!(
        ws.node().await,
        "a",
        "the WebSocket opened before the swap is still up"
    );

    // A broken certificate file is rejected; the current certificate stays.
    std::fs::write(&edge.cert_path, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    eventually("rejection", || async {
        reloads(&edge, "failure").await >= 1.0
    })
    .await;
    assert_eq!(served_certificate(&edge).await, second);
}

//! Shard mode against the real open-source Nakama: three independent nodes, each a shard's,
//! behind edges with `routing.mode = "shards"`. Players are driven by the official nakama-js
//! client (`tests/js/shards.mjs`) and by plain HTTP and WebSocket calls. Skipped, saying how to
//! run them, where no Nakama binary is found; CI always has one.

mod support;

use std::collections::BTreeMap;

use serde_json::Value;
use support::nakama::{self, Deployment, Nakama};
use support::*;

/// Nakama's default `session.encryption_key`, which the test nodes sign with.
const SESSION_KEY: &str = "defaultencryptionkey";

/// Shard mode with s1 on `s1_node` (standby nakama-2), s2 on nakama-2, s3 on `s3_node`.
fn shard_sections(s1_node: &str, s3_node: &str) -> String {
    format!(
        "[routing]\nmode = \"shards\"\n\n[nakama]\nsession_key = \"{SESSION_KEY}\"\n\n\
         [[shards]]\nname = \"s1\"\nnode = \"{s1_node}\"\nstandby = \"nakama-2\"\n\n\
         [[shards]]\nname = \"s2\"\nnode = \"nakama-2\"\n\n\
         [[shards]]\nname = \"s3\"\nnode = \"{s3_node}\"\n"
    )
}

/// The shards as first laid out.
fn usual_shards() -> String {
    shard_sections("nakama-1", "nakama-3")
}

/// Three real nodes on one database; `None` when there is no Nakama to run.
async fn nodes() -> Option<(Deployment, Vec<Nakama>)> {
    let bin = nakama::bin()?;
    let deployment = Deployment::new(bin);
    let nodes = deployment
        .nodes(&["nakama-1", "nakama-2", "nakama-3"])
        .await;
    Some((deployment, nodes))
}

async fn edge_in_front(nodes: &[Nakama], sections: &str) -> Edge {
    let edge = Edge::start(
        &nodes.iter().map(Nakama::toml).collect::<String>(),
        sections,
    );
    edge.wait_healthy(&["nakama-1", "nakama-2", "nakama-3"])
        .await;
    edge
}

/// A player's session token, from a device login through `edge` with session `vars`.
async fn login(edge: &Edge, device: &str, vars: Value) -> String {
    let url = edge.url("/v2/account/authenticate/device?create=true");
    let body = serde_json::json!({ "id": device, "vars": vars });
    let (status, v) = with_server_key(&edge.client(None), url, body).await;
    assert_eq!(status, 200, "login of {device}: {v}");
    v["token"].as_str().unwrap().to_string()
}

/// `whoami` with the player's token: the status, and the node's name or the edge's answer.
async fn whoami(edge: &Edge, token: &str) -> (u16, String) {
    edge.rpc_whoami(&edge.client(None), token).await
}

async fn node_of(edge: &Edge, token: &str) -> String {
    let (status, node) = whoami(edge, token).await;
    assert_eq!(status, 200, "{node}");
    node
}

#[tokio::test(flavor = "multi_thread")]
async fn players_of_a_shard_play_on_its_node_through_two_edges_and_join_one_anothers_matches() {
    let Some((_deployment, nodes)) = nodes().await else {
        return;
    };
    let sections = usual_shards();
    let edge = edge_in_front(&nodes, &sections).await;
    let edge_b = edge_in_front(&nodes, &sections).await;
    // Node.js trusts both edges' test CAs.
    let ca = edge.dir().join("ca.pem");
    std::fs::write(&ca, format!("{}{}", edge.certs.ca_pem, edge_b.certs.ca_pem)).unwrap();

    let out = js::run(
        "shards.mjs",
        &["s1", "s2", "s3"],
        &[
            ("EDGE_PORT", edge.https.port().to_string()),
            ("EDGE_B_PORT", edge_b.https.port().to_string()),
            ("NODE_EXTRA_CA_CERTS", ca.display().to_string()),
        ],
    )
    .await;
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let holder = |shard: &str| match shard {
        "s1" => "nakama-1",
        "s2" => "nakama-2",
        _ => "nakama-3",
    };
    let mut unsharded_nodes = Vec::new();
    for p in report["players"].as_array().unwrap() {
        let seen = [&p["api"], &p["socket"], &p["refreshed"], &p["edge_b"]];
        // API call, socket, the call after a refresh and the call through the other edge:
        // one node.
        assert!(
            seen.iter().all(|n| *n == seen[0]),
            "a player on two nodes: {p}"
        );
        match p["shard"].as_str() {
            Some(shard) => assert_eq!(p["api"], holder(shard), "{p}"),
            None => unsharded_nodes.push(p["api"].as_str().unwrap().to_string()),
        }
        if p["hooked"] == true {
            assert_eq!(p["vars"]["shard"], "s1", "the server hook set the var: {p}");
        }
    }
    assert_eq!(unsharded_nodes.len(), 3);
    for m in report["matches"].as_array().unwrap() {
        assert_eq!(
            m["joined"], m["tried"],
            "every player of the shard joined: {m}"
        );
        // Nakama names the node that holds an authoritative match in its id.
        let shard = m["shard"].as_str().unwrap();
        assert!(
            m["kind"] == "relayed"
                || m["match_id"]
                    .as_str()
                    .unwrap()
                    .ends_with(&format!(".{}", holder(shard))),
            "{m}"
        );
    }

    // Calls without a session token (http_key) go round-robin over every node.
    let client = edge.client(None);
    let mut by_node = BTreeMap::new();
    for _ in 0..12 {
        let r = client
            .post(edge.url("/v2/rpc/whoami?http_key=defaulthttpkey&unwrap=true"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        *by_node
            .entry(v["node"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(
        by_node.len(),
        3,
        "unauthenticated calls spread: {by_node:?}"
    );

    // Operators see each node's shard, and the requests by shard.
    let view = edge.nodes().await;
    let shard_of = |name: &str| {
        view.iter()
            .find(|n| n["name"] == name)
            .map(|n| (n["shard"].clone(), n["standby_for"].clone()))
            .unwrap()
    };
    assert_eq!(shard_of("nakama-1").0, "s1");
    assert_eq!(shard_of("nakama-2").0, "s2");
    assert_eq!(shard_of("nakama-2").1, serde_json::json!(["s1"]));
    assert!(
        edge.metric("nakama_edge_shard_requests_total{shard=\"s1\"}")
            .await
            >= 9.0
    );
    assert!(
        edge.metric("nakama_edge_shard_requests_total{shard=\"none\"}")
            .await
            >= 12.0
    );
    assert_eq!(
        edge.metric("nakama_edge_shard_on_standby{shard=\"s1\"}")
            .await,
        0.0
    );
    for e in [&edge, &edge_b] {
        assert!(!e.log().contains("ERROR"), "{}", e.log());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drained_shard_node_hands_new_work_to_its_standby_and_a_reload_moves_new_requests_only() {
    let Some((_deployment, nodes)) = nodes().await else {
        return;
    };
    let edge = edge_in_front(&nodes, &usual_shards()).await;
    let s1 = serde_json::json!({ "shard": "s1" });
    let s3 = serde_json::json!({ "shard": "s3" });
    let first = login(&edge, "drain-s1-first", s1.clone()).await;
    assert_eq!(node_of(&edge, &first).await, "nakama-1");
    let mut socket = edge
        .websocket(&first, "127.0.0.1".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(socket.node().await, "nakama-1");

    // nakama-1 drained (a reboot coming): s1's new work goes to its standby, and says so.
    assert_eq!(edge.admin_post("/nodes/nakama-1/drain").await, 200);
    eventually("nakama-1 draining", || async {
        edge.node_state("nakama-1").await == "draining"
    })
    .await;
    let late = login(&edge, "drain-s1-late", s1.clone()).await;
    assert_eq!(node_of(&edge, &late).await, "nakama-2");
    assert_eq!(node_of(&edge, &first).await, "nakama-2");
    assert_eq!(
        edge.metric("nakama_edge_shard_on_standby{shard=\"s1\"}")
            .await,
        1.0
    );
    // The socket already open stays where it is.
    assert_eq!(socket.node().await, "nakama-1");

    // A shard without a standby is refused, with the reason, rather than sent elsewhere.
    let player_s3 = login(&edge, "drain-s3-player", s3).await;
    assert_eq!(node_of(&edge, &player_s3).await, "nakama-3");
    assert_eq!(edge.admin_post("/nodes/nakama-3/drain").await, 200);
    eventually("nakama-3 draining", || async {
        edge.node_state("nakama-3").await == "draining"
    })
    .await;
    let (status, answer) = whoami(&edge, &player_s3).await;
    assert_eq!(status, 503, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["code"], 14);
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains("\"s3\"") && message.contains("nakama-3 is drained"),
        "{message}"
    );

    // Back from the reboot: the shard's node takes its work again.
    for node in ["nakama-1", "nakama-3"] {
        assert_eq!(
            edge.admin_post(&format!("/nodes/{node}/undrain")).await,
            200
        );
    }
    eventually("nakama-1 and nakama-3 healthy", || async {
        edge.node_state("nakama-1").await == "healthy"
            && edge.node_state("nakama-3").await == "healthy"
    })
    .await;
    assert_eq!(node_of(&edge, &late).await, "nakama-1");
    assert_eq!(node_of(&edge, &player_s3).await, "nakama-3");
    assert_eq!(
        edge.metric("nakama_edge_shard_on_standby{shard=\"s1\"}")
            .await,
        0.0
    );

    // A reload that swaps s1 and s3: s1's new requests go to nakama-3, the open socket stays.
    let node_list: String = nodes.iter().map(Nakama::toml).collect();
    edge.write_config(&node_list, &shard_sections("nakama-3", "nakama-1"));
    eventually("s1 moved to nakama-3", || async {
        whoami(&edge, &late).await.1 == "nakama-3"
    })
    .await;
    assert_eq!(socket.node().await, "nakama-1");
    let mut moved = edge
        .websocket(&first, "127.0.0.1".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(moved.node().await, "nakama-3");
    assert!(!edge.log().contains("ERROR"), "{}", edge.log());
}

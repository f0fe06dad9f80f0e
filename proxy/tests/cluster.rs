//! Several edges, one front door: edges on 127.0.0.2, .3 and .4 with the same config, sharing
//! state through a real PostgreSQL (a throwaway cluster per test), with Pebble as the CA.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::pebble::{served_leaf, Pebble};
use support::postgres::Postgres;
use support::*;

const PLAY: &str = "play.nakama-edge.test";
const NAMES: [&str; 3] = ["edge-a", "edge-b", "edge-c"];

fn address(i: usize) -> String {
    format!("127.0.0.{}", i + 2)
}

fn cluster_section(pg: &Postgres, name: &str) -> String {
    format!(
        "[cluster]\ndatabase = \"{}\"\nname = \"{name}\"\n",
        pg.url()
    )
}

/// `n` edges (`edge-a` on 127.0.0.2, `edge-b` on .3, ...) on the same ports, in front of
/// `nodes`, each with its cluster section and `sections(i)`.
fn start_edges(
    pg: &Postgres,
    ports: Ports,
    n: usize,
    nodes: &str,
    sections: impl Fn(usize) -> String,
) -> Vec<Edge> {
    (0..n)
        .map(|i| {
            Edge::start_at(
                ports.on(&address(i)),
                TempDir::new(NAMES[i]),
                nodes,
                &format!("{}{}", cluster_section(pg, NAMES[i]), sections(i)),
            )
        })
        .collect()
}

fn nodes_toml(nodes: &[StandIn]) -> String {
    nodes.iter().map(StandIn::toml).collect()
}

/// Several edges with a static certificate in front of `names`, all healthy and in step with
/// the database.
async fn tls_cluster(pg: &Postgres, edges: usize, names: &[&str]) -> (Vec<StandIn>, Vec<Edge>) {
    let nodes: Vec<StandIn> = names.iter().map(|n| StandIn::start(n)).collect();
    let edges = start_edges(pg, Ports::free(), edges, &nodes_toml(&nodes), |_| {
        String::new()
    });
    for e in &edges {
        e.wait_healthy(names).await;
        e.assert_metric("nakama_edge_cluster_database_up", 1.0)
            .await;
    }
    (nodes, edges)
}

async fn node_entry(edge: &Edge, node: &str) -> serde_json::Value {
    edge.nodes()
        .await
        .into_iter()
        .find(|n| n["name"] == node)
        .unwrap_or_default()
}

// ---- certificates ----

/// Pebble and `n` edges ordering a certificate for PLAY through `challenge`.
async fn acme_cluster(
    pg: &Postgres,
    n: usize,
    challenge: &str,
    dns: &str,
    validity: Option<Duration>,
) -> (StandIn, Pebble, Vec<TempDir>, Vec<Edge>) {
    let node = StandIn::start("n1");
    let ports = Ports::free();
    let pebble = Pebble::start(ports, validity, &[]);
    pebble.wait_up().await;
    pebble.set_dns(PLAY, dns).await;
    let states: Vec<TempDir> = (0..n).map(|i| TempDir::new(&format!("acme-{i}"))).collect();
    let state_paths: Vec<PathBuf> = states.iter().map(|s| s.path().to_path_buf()).collect();
    let edges = start_edges(pg, ports, n, &node.toml(), |i| {
        pebble.acme_section(&[PLAY], challenge, &state_paths[i])
    });
    (node, pebble, states, edges)
}

async fn serving(edges: &[Edge], root: &str) -> Vec<Vec<u8>> {
    let mut leaves = Vec::new();
    for e in edges {
        eventually(&format!("{} serving the certificate", e.https), || async {
            served_leaf(e, PLAY, root).await.is_ok()
        })
        .await;
        leaves.push(served_leaf(e, PLAY, root).await.unwrap().0);
    }
    leaves
}

#[tokio::test(flavor = "multi_thread")]
async fn edges_starting_together_make_one_order_and_every_edge_serves_it() {
    let pg = Postgres::start();
    // The CA validates at edge-a, whichever edge orders.
    let (_node, pebble, _states, edges) =
        acme_cluster(&pg, 3, "tls-alpn-01", "127.0.0.2", None).await;
    let root = pebble.issuing_root().await;
    let leaves = serving(&edges, &root).await;
    assert!(
        leaves.iter().all(|l| *l == leaves[0]),
        "every edge serves the same certificate"
    );
    assert_eq!(pebble.orders(), 1, "one order in all");
    let mut obtained = 0;
    for e in &edges {
        if e.log().contains("issue certificate obtained and served") {
            obtained += 1;
        } else {
            assert!(e
                .log()
                .contains("serving the certificate another edge obtained"));
        }
    }
    assert_eq!(obtained, 1);
    // A restart of an edge that did not order: served from its copy, nothing ordered.
    assert_eq!(
        pg.psql("SELECT COUNT(*) FROM nakama_edge_certificates"),
        "1"
    );
}

async fn lease_holder(pg: &Postgres) -> String {
    let mut holder = String::new();
    eventually("an edge holding the order's lease", || {
        holder = pg
            .try_psql("SELECT holder FROM nakama_edge_leases WHERE name LIKE 'acme-order/%'")
            .unwrap_or_default();
        let found = !holder.is_empty();
        async move { found }
    })
    .await;
    holder
}

/// The CA is pointed at the edge that does not hold the lease: it must answer from what the
/// ordering edge published.
async fn validated_at_another_edge(challenge: &str, answered: &str) {
    let pg = Postgres::start();
    // Until the test knows who orders, validation goes nowhere (and fails, and is retried).
    let (_node, pebble, _states, edges) = acme_cluster(&pg, 2, challenge, "127.0.0.9", None).await;
    let holder = lease_holder(&pg).await;
    let (orderer, other) = if holder == NAMES[0] { (0, 1) } else { (1, 0) };
    pebble.set_dns(PLAY, &address(other)).await;
    let root = pebble.issuing_root().await;
    let leaves = serving(&edges, &root).await;
    assert_eq!(leaves[0], leaves[1]);
    assert!(
        edges[orderer]
            .log()
            .contains("certificate obtained and served"),
        "{holder} ordered"
    );
    assert!(
        edges[other].log().contains(answered),
        "{} answered the CA's validation",
        NAMES[other]
    );
    assert!(
        !edges[orderer].log().contains(answered),
        "the ordering edge was never asked"
    );
    assert!(!edges[other]
        .log()
        .contains("certificate obtained and served"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ca_validates_http_01_at_an_edge_other_than_the_one_that_ordered() {
    validated_at_another_edge("http-01", "HTTP-01 validation request answered").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ca_validates_tls_alpn_01_at_an_edge_other_than_the_one_that_ordered() {
    validated_at_another_edge("tls-alpn-01", "TLS-ALPN-01 validation handshake answered").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lease_holder_killed_mid_order_is_replaced_after_its_lease_expires() {
    let pg = Postgres::start();
    let (_node, pebble, _states, mut edges) =
        acme_cluster(&pg, 2, "http-01", "127.0.0.9", None).await;
    // Mid-order: its answers are published, the CA not yet satisfied.
    eventually("the order's answers in the database", || {
        let published = pg
            .try_psql("SELECT COUNT(*) FROM nakama_edge_challenges")
            .is_some_and(|n| n != "0");
        async move { published }
    })
    .await;
    let holder = lease_holder(&pg).await;
    let (dead, survivor) = if holder == NAMES[0] { (0, 1) } else { (1, 0) };
    edges[dead].signal(libc::SIGKILL);
    let killed = Instant::now();
    pebble.set_dns(PLAY, &address(survivor)).await;
    let root = pebble.issuing_root().await;
    let survivor_edge = edges.remove(survivor);
    // The lease lapses (15 s), then the survivor orders.
    let deadline = Instant::now() + Duration::from_secs(90);
    while served_leaf(&survivor_edge, PLAY, &root).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the survivor never obtained the certificate"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "the survivor served a certificate {:?} after the holder died",
        killed.elapsed()
    );
    assert!(survivor_edge
        .log()
        .contains("issue certificate obtained and served"));
    assert_eq!(
        lease_holder_now(&pg),
        "",
        "the survivor released the lease once done"
    );
}

fn lease_holder_now(pg: &Postgres) -> String {
    pg.psql("SELECT holder FROM nakama_edge_leases WHERE name LIKE 'acme-order/%' AND expires_at > now()")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_renewal_by_one_edge_is_served_by_the_other_without_a_restart() {
    let pg = Postgres::start();
    let (_node, pebble, _states, edges) = acme_cluster(
        &pg,
        2,
        "http-01",
        "127.0.0.2",
        Some(Duration::from_secs(20)),
    )
    .await;
    let root = pebble.issuing_root().await;
    let first = serving(&edges, &root).await;
    assert_eq!(first[0], first[1]);
    // Renewed at about two thirds of its 20 s, by one of them; both serve the new one.
    eventually("both edges serving a renewed certificate", || async {
        let a = served_leaf(&edges[0], PLAY, &root).await.ok().map(|l| l.0);
        let b = served_leaf(&edges[1], PLAY, &root).await.ok().map(|l| l.0);
        a.is_some() && a == b && a.as_ref() != Some(&first[0])
    })
    .await;
    let renewed_by: Vec<bool> = edges
        .iter()
        .map(|e| e.log().contains("renew certificate obtained and served"))
        .collect();
    assert!(renewed_by.iter().any(|r| *r), "one of them renewed");
    let adopted = edges.iter().any(|e| {
        e.log()
            .matches("serving the certificate another edge obtained")
            .count()
            >= 1
    });
    assert!(
        adopted,
        "the other took the renewed certificate from the database"
    );
}

// ---- drains and counts ----

/// Open WebSockets through `edge` until one lands on `node`; the socket.
async fn socket_on(edge: &Edge, node: &str, tag: &str) -> Ws {
    let client = edge.client(None);
    for i in 0..64 {
        let s = edge.authenticate(&client, &format!("{tag}-{i}")).await;
        let mut ws = edge.websocket(&s.token, ip("127.0.0.1")).await.unwrap();
        if ws.node().await == node {
            return ws;
        }
        ws.close().await;
    }
    panic!("no user of 64 landed on {node}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_through_one_edge_applies_on_every_edge_and_drain_wait_counts_all_of_them() {
    let pg = Postgres::start();
    let (_nodes, edges) = tls_cluster(&pg, 2, &["a", "b"]).await;
    let ws_a = socket_on(&edges[0], "a", "through-a").await;
    let ws_b = socket_on(&edges[1], "a", "through-b").await;
    eventually("both sockets counted on both edges", || async {
        node_entry(&edges[0], "a").await["websockets"] == 2
            && node_entry(&edges[1], "a").await["websockets"] == 2
    })
    .await;
    assert_eq!(
        node_entry(&edges[0], "a").await["this_edge"]["websockets"],
        1
    );

    let drained_at = Instant::now();
    assert_eq!(edges[0].admin_post("/nodes/a/drain").await, 200);
    eventually("edge-b stops routing to a", || async {
        edges[1].node_state("a").await == "draining"
    })
    .await;
    println!(
        "drained on edge-b {:?} after the drain through edge-a",
        drained_at.elapsed()
    );
    // New work through edge-b goes elsewhere.
    let client = edges[1].client(None);
    for _ in 0..8 {
        assert_eq!(whoami_http(&edges[1], &client).await.unwrap()["node"], "b");
    }

    // drain --wait through edge-a returns only when no edge holds a socket to a.
    let mut wait = Command::new(edge_bin())
        .args(["drain", "a", "--wait", "--timeout", "60s", "--admin"])
        .arg(edges[0].admin.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    ws_a.close().await;
    eventually("edge-a sees one socket left, on edge-b", || async {
        node_entry(&edges[0], "a").await["websockets"] == 1
    })
    .await;
    assert!(
        wait.try_wait().unwrap().is_none(),
        "drain --wait returned while edge-b held a socket"
    );
    ws_b.close().await;
    let status = tokio::task::spawn_blocking(move || wait.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());

    // Survives restarts: edge-b restarted still has it drained, from the database.
    assert_eq!(pg.psql("SELECT node FROM nakama_edge_drains"), "a");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nakama_js_player_reconnecting_through_another_edge_lands_on_the_same_node() {
    let pg = Postgres::start();
    let (_nodes, edges) = tls_cluster(&pg, 2, &["a", "b", "c"]).await;
    // Each test edge has its own test CA: the client trusts both.
    let ca = edges[0].dir().join("ca.pem");
    std::fs::write(
        &ca,
        format!("{}{}", edges[0].certs.ca_pem, edges[1].certs.ca_pem),
    )
    .unwrap();
    let out = js::run(
        "two_edges.mjs",
        &["10"],
        &[
            ("EDGE_A", "127.0.0.2".to_string()),
            ("EDGE_B", "127.0.0.3".to_string()),
            ("EDGE_PORT", edges[0].https.port().to_string()),
            ("NODE_EXTRA_CA_CERTS", ca.display().to_string()),
        ],
    )
    .await;
    let used = js::players_kept_their_node(&out.stdout, 10, 3);
    assert!(used.len() >= 2, "players spread over the nodes: {used:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn edges_with_different_node_lists_show_a_routing_mismatch_until_they_agree() {
    let pg = Postgres::start();
    let nodes: Vec<StandIn> = ["a", "b"].iter().map(|n| StandIn::start(n)).collect();
    let ports = Ports::free();
    let edges = start_edges(&pg, ports, 2, &nodes_toml(&nodes), |_| String::new());
    // edge-b is given only one of the nodes.
    let b_section = cluster_section(&pg, NAMES[1]);
    edges[1].write_config(&nodes[0].toml(), &b_section);
    for e in &edges {
        e.assert_metric("nakama_edge_cluster_routing_mismatch", 1.0)
            .await;
        e.assert_metric("nakama_edge_cluster_edges", 2.0).await;
    }
    let listed: Vec<serde_json::Value> = edges[0]
        .admin_get("/cluster")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["name"], "edge-a");
    assert_eq!(listed[0]["self"], true);
    assert_eq!(listed[1]["self"], false);
    assert_ne!(listed[0]["routing_digest"], listed[1]["routing_digest"]);
    assert!(listed[1]["last_seen"].as_i64().unwrap() > 1_700_000_000);
    assert!(edges[0].log().contains("live edges route differently"));
    // Same nodes again: no mismatch.
    edges[1].write_config(&nodes_toml(&nodes), &b_section);
    for e in &edges {
        e.assert_metric("nakama_edge_cluster_routing_mismatch", 0.0)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_stopped_under_load_fails_no_request_and_the_state_converges_when_it_is_back() {
    let pg = Postgres::start();
    let (_nodes, edges) = tls_cluster(&pg, 2, &["a", "b"]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let url = edges[0].url("/v2/rpc/whoami?http_key=defaulthttpkey");
    let loads: Vec<_> = edges
        .iter()
        .map(|e| steady_load(e, &url, 2, Connections::KeepAliveH1, stop.clone()))
        .collect();

    pg.stop();
    for e in &edges {
        e.assert_metric("nakama_edge_cluster_database_up", 0.0)
            .await;
    }
    // A drain now would apply to one edge only: refused, with a clear reason, and nothing
    // changes anywhere.
    let r = reqwest::Client::new()
        .post(format!("http://{}/nodes/a/drain", edges[0].admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let why = r.text().await.unwrap();
    assert!(why.contains("cluster database is unreachable"), "{why}");
    assert_eq!(edges[0].node_state("a").await, "healthy");
    let out = Command::new(edge_bin())
        .args(["drain", "a", "--admin"])
        .arg(edges[0].admin.to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unreachable"));
    // The outage is logged once per edge, and the URL never.
    for e in &edges {
        assert_eq!(e.log().matches("cluster database unreachable").count(), 1);
        assert!(!e.log().contains(&pg.url()));
    }

    pg.start_again();
    for e in &edges {
        e.assert_metric("nakama_edge_cluster_database_up", 1.0)
            .await;
    }
    assert_eq!(edges[0].admin_post("/nodes/a/drain").await, 200);
    eventually(
        "edge-b applies the drain made once the database is back",
        || async { edges[1].node_state("a").await == "draining" },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for load in loads {
        let report = load.await.unwrap();
        assert!(
            report.failures.is_empty(),
            "{} failed, first: {:?}",
            report.failures.len(),
            report.failures.first()
        );
        assert!(report.ok > 20);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edge_stopped_by_sigterm_has_left_the_cluster_by_the_time_it_exits() {
    let pg = Postgres::start();
    let (_nodes, mut edges) = tls_cluster(&pg, 2, &["a"]).await;
    let live = || pg.psql("SELECT string_agg(name, ',' ORDER BY name) FROM nakama_edge_edges");
    eventually("both edges' heartbeats in the database", || {
        let both = live() == "edge-a,edge-b";
        async move { both }
    })
    .await;
    edges[0].signal(libc::SIGTERM);
    assert!(edges[0].exited("SIGTERM").await.success());
    // Not left for the others to find out when its heartbeat expires.
    assert_eq!(live(), "edge-b");
}

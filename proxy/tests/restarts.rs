//! Restarts and upgrades that no player notices: the first health checks run before the
//! listeners serve, runtime drains survive, and the hand-over fails no request.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use support::*;

/// Checks every 500 ms, every other health-check setting at its default, and the default log
/// level (so that a line pingora writes at ERROR would show).
const CHECKS: &str = "[health_check]\ninterval = \"500ms\"\n\n[log]\nlevel = \"info\"\n";

fn nodes_toml(nodes: &[StandIn]) -> String {
    nodes.iter().map(StandIn::toml).collect()
}

/// No line at ERROR: an operator would have nothing to act on.
fn no_error_lines(edge: &Edge) {
    let log = edge.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(errors.is_empty(), "ERROR lines: {errors:#?}");
}

async fn three_nodes() -> (Vec<StandIn>, Edge) {
    let nodes: Vec<StandIn> = ["a", "b", "c"].iter().map(|n| StandIn::start(n)).collect();
    let edge = Edge::start(&nodes_toml(&nodes), CHECKS);
    edge.wait_healthy(&["a", "b", "c"]).await;
    (nodes, edge)
}

/// Upgrade under a steady load; the load runs on until the new process has served for a while.
async fn upgrade_under_load(connections: Connections) {
    let (_nodes, mut edge) = three_nodes().await;
    let stop = Arc::new(AtomicBool::new(false));
    let url = edge.url("/v2/rpc/whoami?http_key=defaulthttpkey");
    let load = steady_load(&edge, &url, 4, connections, stop.clone());
    // Some load on the old process first.
    eventually("load on the old process", || async {
        edge.metric("nakama_edge_http_requests_total{code=\"200\",node=\"a\",route=\"api\"}")
            .await
            > 20.0
    })
    .await;
    let old_pid = edge.pid();
    let mut old = edge.upgrade();
    let status = tokio::task::spawn_blocking(move || old.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0), "the old process exits cleanly");
    // The new process has served a good share of the load on its own.
    let before = edge
        .metric("nakama_edge_http_requests_total{code=\"200\",node=\"b\",route=\"api\"}")
        .await;
    eventually("the new process serving", || async {
        edge.metric("nakama_edge_http_requests_total{code=\"200\",node=\"b\",route=\"api\"}")
            .await
            > before + 50.0
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let report = load.await.unwrap();
    assert!(
        report.failures.is_empty(),
        "{} of {} requests failed during the upgrade from pid {old_pid}, first: {:?}",
        report.failures.len(),
        report.ok as usize + report.failures.len(),
        &report.failures[..report.failures.len().min(5)]
    );
    assert!(report.ok > 200, "only {} requests", report.ok);
    no_error_lines(&edge);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_under_load_with_a_new_connection_per_request_fails_nothing() {
    upgrade_under_load(Connections::Fresh).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_under_load_on_http1_keep_alive_connections_fails_nothing() {
    upgrade_under_load(Connections::KeepAliveH1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_under_load_on_http2_connections_fails_nothing() {
    upgrade_under_load(Connections::KeepAliveH2).await;
}

/// Wait for an upgrade's old process to exit, cleanly.
async fn exited(mut old: std::process::Child) {
    let status = tokio::task::spawn_blocking(move || old.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0), "the old process exits cleanly");
}

async fn drain(edge: &Edge, node: &str) {
    assert_eq!(edge.admin_post(&format!("/nodes/{node}/drain")).await, 200);
    assert_eq!(edge.node_state(node).await, "draining");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drained_node_stays_drained_after_an_upgrade() {
    let (_nodes, mut edge) = three_nodes().await;
    drain(&edge, "b").await;
    let old = edge.upgrade();
    exited(old).await;
    eventually("the new process answers", || async {
        edge.admin_get("/healthz").await.is_some()
    })
    .await;
    assert_eq!(edge.node_state("b").await, "draining");
    // And it gets no new work from the new process.
    let client = edge.client(None);
    for _ in 0..12 {
        let who = whoami_http(&edge, &client).await.unwrap();
        assert_ne!(who["node"], "b");
    }
    // Its drain is a runtime one, which undrain lifts.
    let nodes = edge.nodes().await;
    let b = nodes.iter().find(|n| n["name"] == "b").unwrap();
    assert_eq!(b["drained_by"], serde_json::json!(["runtime"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drained_node_stays_drained_after_sigterm_and_a_start_whose_first_request_is_served() {
    let (nodes, mut edge) = three_nodes().await;
    drain(&edge, "c").await;
    let ports = edge.ports();
    edge.signal(libc::SIGTERM);
    edge.exited("SIGTERM").await;
    let dir = edge.stop();
    let edge = Edge::start_at(ports, dir, &nodes_toml(&nodes), CHECKS);
    // The first answer of the admin API already shows the drain: it is restored before
    // anything is served.
    eventually("the admin API", || async {
        edge.admin_get("/healthz").await.is_some()
    })
    .await;
    assert_eq!(edge.node_state("c").await, "draining");
    eventually("/readyz 200", || async {
        edge.admin_get("/readyz")
            .await
            .is_some_and(|r| r.status() == 200)
    })
    .await;
    // The very first request after /readyz is served (not 503), and not by the drained node.
    let client = edge.client(None);
    let who = whoami_http(&edge, &client).await.unwrap();
    assert_ne!(who["node"], "c");
    no_error_lines(&edge);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cold_start_routes_from_its_first_check_with_the_default_thresholds() {
    let nodes: Vec<StandIn> = ["a", "b"].iter().map(|n| StandIn::start(n)).collect();
    // One check an hour: only the round before serving can make the nodes routable, and it
    // must do so alone (healthy_threshold 2 is for nodes coming back).
    let edge = Edge::start(
        &nodes_toml(&nodes),
        "[health_check]\ninterval = \"1h\"\n\n[log]\nlevel = \"info\"\n",
    );
    eventually("/readyz 200", || async {
        edge.admin_get("/readyz")
            .await
            .is_some_and(|r| r.status() == 200)
    })
    .await;
    assert_eq!(edge.node_state("a").await, "healthy");
    assert_eq!(edge.node_state("b").await, "healthy");
    let client = edge.client(None);
    whoami_http(&edge, &client).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn drains_changed_on_the_old_process_while_the_new_one_starts_reach_the_new_one() {
    let (_nodes, mut edge) = three_nodes().await;
    drain(&edge, "a").await;
    drain(&edge, "b").await;
    // The new process has read the drains and checked the nodes; the old one still serves.
    let new = edge.begin_upgrade();
    assert_eq!(edge.admin_post("/nodes/a/undrain").await, 200);
    drain(&edge, "c").await;
    let old = edge.complete_upgrade(new);
    exited(old).await;
    eventually("the new process answers", || async {
        edge.admin_get("/healthz").await.is_some()
    })
    .await;
    assert_eq!(
        edge.node_state("a").await,
        "healthy",
        "lifted on the old process"
    );
    assert_eq!(edge.node_state("b").await, "draining");
    assert_eq!(
        edge.node_state("c").await,
        "draining",
        "set on the old process"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn undrain_lifts_only_the_runtime_drain_and_says_so_when_the_file_still_drains() {
    let nodes: Vec<StandIn> = ["a", "b"].iter().map(|n| StandIn::start(n)).collect();
    let toml = format!("{}{}drain = true\n", nodes[0].toml(), nodes[1].toml());
    let edge = Edge::start(&toml, CHECKS);
    edge.wait_healthy(&["a"]).await;
    drain(&edge, "b").await;
    let nodes_view = edge.nodes().await;
    let b = nodes_view.iter().find(|n| n["name"] == "b").unwrap();
    assert_eq!(b["drained_by"], serde_json::json!(["config", "runtime"]));

    let out = std::process::Command::new(edge_bin())
        .args(["undrain", "b", "--admin", &edge.admin.to_string()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("stays draining") && said.contains("drain = true"),
        "{said}"
    );
    assert_eq!(edge.node_state("b").await, "draining");
    let nodes_view = edge.nodes().await;
    let b = nodes_view.iter().find(|n| n["name"] == "b").unwrap();
    assert_eq!(b["drained_by"], serde_json::json!(["config"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_that_cannot_be_saved_is_refused_and_changes_nothing() {
    let (_nodes, edge) = three_nodes().await;
    // The state file is replaced by something that is not one: the edge will not write over it.
    std::fs::write(edge.state_dir().join("drains.json"), "not json").unwrap();
    let r = reqwest::Client::new()
        .post(format!("http://{}/nodes/a/drain", edge.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let why = r.text().await.unwrap();
    assert!(
        why.contains("nothing changed") && why.contains("drains.json"),
        "{why}"
    );
    assert_eq!(edge.node_state("a").await, "healthy");
}

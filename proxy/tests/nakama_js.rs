//! The official `@heroiclabs/nakama-js` client through the edge: a player who reconnects from
//! a new address, or with a refreshed session, lands on the node that holds their match.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use support::*;

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

/// Install the JS client from the npm registry (pinned by package-lock.json) if it is not yet.
fn install_js_client() {
    static LOCK: Mutex<()> = Mutex::new(());
    let _one = LOCK.lock().unwrap();
    if js_dir().join("node_modules/@heroiclabs/nakama-js").exists() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(js_dir())
        .status()
        .expect("npm is needed for the nakama-js tests (the CI script installs it)");
    assert!(status.success(), "npm ci failed in {}", js_dir().display());
}

#[tokio::test(flavor = "multi_thread")]
async fn nakama_js_players_keep_their_node_across_addresses_and_refreshes() {
    install_js_client();
    let (_nodes, edge) = cluster(&["a", "b", "c"]).await;
    let ca = edge.dir().join("ca.pem");
    std::fs::write(&ca, &edge.certs.ca_pem).unwrap();

    let port = edge.https.port().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("sticky.mjs")
            .arg("12")
            .current_dir(js_dir())
            .env("EDGE_PORT", port)
            .env("NODE_EXTRA_CA_CERTS", ca)
            .output()
            .expect("node is needed for the nakama-js tests")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let players: Vec<serde_json::Value> = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(players.len(), 12);
    let mut used = std::collections::HashSet::new();
    for p in &players {
        let nodes: Vec<&str> = p["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        assert_eq!(nodes.len(), 4);
        assert!(
            nodes.iter().all(|n| *n == nodes[0]),
            "{} moved between nodes: {nodes:?}",
            p["device"]
        );
        assert_eq!(p["refreshed"], true, "the refresh issued a new token");
        assert_eq!(p["userId"], p["refreshedUserId"]);
        used.insert(nodes[0].to_string());
    }
    assert!(used.len() >= 2, "players spread over the nodes: {used:?}");
}

//! The official `@heroiclabs/nakama-js` client, run by Node.js from the scripts in `tests/js`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// Where the scripts and their `node_modules` are.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

/// Install the client from the npm registry (pinned by package-lock.json) if it is not yet.
pub fn install() {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if dir().join("node_modules/@heroiclabs/nakama-js").exists() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir())
        .status()
        .expect("npm is needed for the nakama-js tests (.ci/deps installs it)");
    assert!(status.success(), "npm ci failed in {}", dir().display());
}

/// Run `script` with `args` and `env` (on a blocking thread), the client installed first;
/// panics with its output when it fails.
pub async fn run(script: &str, args: &[&str], env: &[(&str, String)]) -> Output {
    install();
    let mut cmd = Command::new("node");
    cmd.arg(script).args(args).current_dir(dir());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || {
        cmd.output()
            .expect("node is needed for the nakama-js tests (.ci/deps installs it)")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// What a sticky-socket script (`sticky.mjs`, `two_edges.mjs`) printed about `players`
/// players, each asking `asks` times which node was behind its socket (from other addresses,
/// through other edges, after a refresh): every player kept one node throughout, and the
/// refresh gave a new token for the same user. The nodes the players used.
pub fn players_kept_their_node(
    stdout: &[u8],
    players: usize,
    asks: usize,
) -> std::collections::BTreeSet<String> {
    let report: Vec<serde_json::Value> = serde_json::from_slice(stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(stdout));
    });
    assert_eq!(report.len(), players);
    let mut used = std::collections::BTreeSet::new();
    for p in &report {
        let nodes: Vec<&str> = p["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        assert_eq!(nodes.len(), asks, "{p}");
        assert!(
            nodes.iter().all(|n| *n == nodes[0]),
            "{} moved: {nodes:?}",
            p["device"]
        );
        assert_eq!(p["refreshed"], true, "the refresh gave a new token: {p}");
        assert_eq!(p["userId"], p["refreshedUserId"]);
        used.insert(nodes[0].to_string());
    }
    used
}

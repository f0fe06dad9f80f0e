//! The official `@heroiclabs/nakama-js` client through the edge: a player who reconnects from
//! a new address, or with a refreshed session, lands on the node that holds their match.

mod support;

use std::process::Command;

use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn nakama_js_players_keep_their_node_across_addresses_and_refreshes() {
    let (_nodes, edge) = cluster(&["a", "b", "c"]).await;
    let ca = edge.dir().join("ca.pem");
    std::fs::write(&ca, &edge.certs.ca_pem).unwrap();

    let out = js::run(
        "sticky.mjs",
        &["12"],
        &[
            ("EDGE_PORT", edge.https.port().to_string()),
            ("NODE_EXTRA_CA_CERTS", ca.display().to_string()),
        ],
    )
    .await;
    let used = js::players_kept_their_node(&out.stdout, 12, 4);
    assert!(used.len() >= 2, "players spread over the nodes: {used:?}");
}

/// A nakama-js player keeps their node while an unrelated node joins through DNS
/// (`[[discover]]`): open sockets are untouched, and reconnecting players land where they were,
/// but for the share the new node now owns.
#[tokio::test(flavor = "multi_thread")]
async fn nakama_js_players_keep_their_node_while_a_discovered_node_joins() {
    use std::io::{BufReader, Write};
    use std::process::Stdio;
    use support::dns::{port_free_on, ARecords};

    js::install();
    let ips = ["127.0.0.11", "127.0.0.12", "127.0.0.13"];
    let dns = ARecords::start().await;
    dns.set("nakama.test.", &ips[..2]).await;
    let port = port_free_on(&ips);
    let _nodes: Vec<StandIn> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            StandIn::start_with(
                &format!("n{}", i + 1),
                format!("{ip}:{port}").parse().unwrap(),
                &[],
            )
        })
        .collect();
    let edge = Edge::start(
        &format!(
            "[[discover]]\nname = \"nakama\"\ndns = \"nakama.test.\"\nport = {port}\ninterval = \"1s\"\nresolvers = [\"{}\"]\n",
            dns.addr
        ),
        "",
    );
    let name = |ip: &str| format!("nakama-{ip}:{port}");
    edge.wait_healthy(&[&name(ips[0]), &name(ips[1])]).await;
    let ca = edge.dir().join("ca.pem");
    std::fs::write(&ca, &edge.certs.ca_pem).unwrap();

    const PLAYERS: usize = 24;
    let mut js = Command::new("node")
        .arg("join.mjs")
        .arg(PLAYERS.to_string())
        .current_dir(js::dir())
        .env("EDGE_PORT", edge.https.port().to_string())
        .env("NODE_EXTRA_CA_CERTS", &ca)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node is needed for the nakama-js tests");
    let stdout = BufReader::new(js.stdout.take().unwrap());
    let (connected, stdout) = next_json_line(stdout).await;
    assert_eq!(connected["players"].as_array().unwrap().len(), PLAYERS);

    // n3 joins the record, and the rotation once its check passes.
    dns.set("nakama.test.", &ips).await;
    eventually("n3 in rotation", || async {
        edge.node_state(&name(ips[2])).await == "healthy"
    })
    .await;
    writeln!(js.stdin.take().unwrap(), "go").unwrap();
    let (after, _) = next_json_line(stdout).await;
    assert!(js.wait().unwrap().success(), "join.mjs failed: {after}");
    let mut moved = 0;
    for p in after["players"].as_array().unwrap() {
        assert_eq!(p["open"], p["before"], "{p}: an open socket moved");
        assert!(
            p["reconnected"] == p["before"] || p["reconnected"] == "n3",
            "{p}: moved between old nodes"
        );
        if p["reconnected"] != p["before"] {
            moved += 1;
        }
    }
    // n3 owns about a third of the ring now; everyone else stays where they were.
    assert!(moved <= PLAYERS * 2 / 3, "{moved} of {PLAYERS} moved");
}

/// The next line of a script's output, as JSON (read off the runtime's threads).
async fn next_json_line<R: std::io::BufRead + Send + 'static>(
    mut reader: R,
) -> (serde_json::Value, R) {
    tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let value = serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        (value, reader)
    })
    .await
    .unwrap()
}

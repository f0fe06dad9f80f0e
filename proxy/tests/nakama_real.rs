//! Against the real Nakama: three open-source Nakama 3.x nodes on one PostgreSQL behind the
//! edge, driven as players drive them (see `support::nakama`). Skipped, saying how to run
//! them, where no Nakama binary is found; CI always has one.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::Value;
use support::nakama::{self, Deployment, Nakama};
use support::*;

/// Nakama's default `session.encryption_key`, which the test nodes sign with.
const SESSION_KEY: &str = "defaultencryptionkey";

/// Three real nodes and an edge in front of them with extra `sections`, all healthy; `None`
/// when there is no Nakama to run.
async fn deployment(sections: &str) -> Option<(Deployment, Vec<Nakama>, Edge)> {
    let bin = nakama::bin()?;
    let deployment = Deployment::new(bin);
    let nodes = deployment
        .nodes(&["nakama-1", "nakama-2", "nakama-3"])
        .await;
    let edge = Edge::start(
        &nodes.iter().map(Nakama::toml).collect::<String>(),
        sections,
    );
    edge.wait_healthy(&["nakama-1", "nakama-2", "nakama-3"])
        .await;
    Some((deployment, nodes, edge))
}

/// `whoami` with the player's session token (POST, as nakama-js calls RPCs): the node's name.
async fn rpc_node(edge: &Edge, client: &reqwest::Client, token: &str) -> String {
    let (status, node) = edge.rpc_whoami(client, token).await;
    assert_eq!(status, 200, "{node}");
    node
}

/// Which node served each of `n` calls, counted by node name.
async fn spread(edge: &Edge, client: &reqwest::Client, token: &str, n: usize) -> Vec<usize> {
    let mut by_node = BTreeMap::new();
    for _ in 0..n {
        *by_node
            .entry(rpc_node(edge, client, token).await)
            .or_insert(0) += 1;
    }
    ["nakama-1", "nakama-2", "nakama-3"]
        .iter()
        .map(|n| by_node.get(*n).copied().unwrap_or(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn players_authenticate_refresh_and_their_rpcs_spread_evenly_also_with_a_node_drained() {
    let sections = format!("[nakama]\nsession_key = \"{SESSION_KEY}\"\n");
    let Some((_deployment, _nodes, edge)) = deployment(&sections).await else {
        return;
    };
    let client = edge.client(None);
    let session = edge.authenticate(&client, "real-device-000001").await;
    // A refresh through the edge gives a session that works.
    let r = client
        .post(edge.url("/v2/account/session/refresh"))
        .basic_auth("defaultkey", Some(""))
        .json(&serde_json::json!({ "token": session.refresh_token }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let refreshed: Value = r.json().await.unwrap();
    let token = refreshed["token"].as_str().unwrap().to_string();

    assert_eq!(spread(&edge, &client, &token, 30).await, vec![10, 10, 10]);
    // nakama-1 drained: its share goes to both others, not to the next one in order.
    assert_eq!(edge.admin_post("/nodes/nakama-1/drain").await, 200);
    assert_eq!(spread(&edge, &client, &token, 30).await, vec![0, 15, 15]);
    // Every token the players sent was Nakama's, and verified as such.
    assert_eq!(
        edge.metric("nakama_edge_session_tokens_total{result=\"verified\"}")
            .await,
        60.0
    );
    let log = edge.log();
    assert!(!log.contains(" ERROR "), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_players_socket_stays_on_one_node_whatever_address_it_comes_from() {
    let sections = format!("[nakama]\nsession_key = \"{SESSION_KEY}\"\n");
    let Some((_deployment, _nodes, edge)) = deployment(&sections).await else {
        return;
    };
    let client = edge.client(None);
    let mut nodes_used = std::collections::BTreeSet::new();
    for i in 0..6 {
        let session = edge
            .authenticate(&client, &format!("real-sticky-device-{i:04}"))
            .await;
        let mut first = edge
            .websocket(&session.token, ip("127.0.0.1"))
            .await
            .unwrap();
        let node = first.node().await;
        first.close().await;
        // The same player from another address (a phone moving from Wi-Fi to mobile).
        let mut again = edge
            .websocket(&session.token, ip("127.0.0.2"))
            .await
            .unwrap();
        assert_eq!(again.node().await, node, "player {i} moved");
        again.close().await;
        nodes_used.insert(node);
    }
    assert!(nodes_used.len() >= 2, "six players all on {nodes_used:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_reboot_and_a_crash_under_load_fail_no_call() {
    let Some((_deployment, mut nodes, edge)) = deployment("").await else {
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let url = edge.url("/v2/rpc/whoami?http_key=defaulthttpkey");
    let load = steady_load(&edge, &url, 8, Connections::KeepAliveH1, stop.clone());
    let client = edge.client(None);
    // A rolling reboot: each node stopped (SIGTERM), started again, back in rotation.
    for node in nodes.iter_mut() {
        node.stop();
        eventually("the stopped node out of rotation", || async {
            edge.node_state(&node.name).await != "healthy"
        })
        .await;
        assert!(whoami_http(&edge, &client).await.is_ok());
        node.start();
        node.wait_up().await;
        edge.wait_healthy(&[node.name.as_str()]).await;
    }
    // A crash.
    nodes[1].kill();
    eventually("the killed node out of rotation", || async {
        edge.node_state("nakama-2").await != "healthy"
    })
    .await;
    assert!(whoami_http(&edge, &client).await.is_ok());
    stop.store(true, Ordering::Relaxed);
    let report = load.await.unwrap();
    assert!(report.ok > 100, "only {} calls", report.ok);
    assert!(
        report.failures.is_empty(),
        "{} failed calls: {:?}",
        report.failures.len(),
        &report.failures[..report.failures.len().min(10)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_under_load_fails_no_call_and_logs_no_error() {
    let Some((_deployment, _nodes, mut edge)) = deployment("").await else {
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let url = edge.url("/v2/rpc/whoami?http_key=defaulthttpkey");
    let load = steady_load(&edge, &url, 8, Connections::KeepAliveH1, stop.clone());
    const SERVED: &str =
        "nakama_edge_http_requests_total{code=\"200\",node=\"nakama-1\",route=\"api\"}";
    eventually("load on the old process", || async {
        edge.metric(SERVED).await > 20.0
    })
    .await;
    let mut old = edge.upgrade();
    let status = tokio::task::spawn_blocking(move || old.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0), "the old process exits cleanly");
    let before = edge.metric(SERVED).await;
    eventually("the new process serving", || async {
        edge.metric(SERVED).await > before + 20.0
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let report = load.await.unwrap();
    assert!(
        report.failures.is_empty(),
        "{} failed calls: {:?}",
        report.failures.len(),
        &report.failures[..report.failures.len().min(10)]
    );
    let log = edge.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(errors.is_empty(), "ERROR lines: {errors:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_player_that_stops_sending_after_an_rpc_still_gets_the_real_nodes_answer() {
    let Some((_deployment, _nodes, edge)) = deployment("").await else {
        return;
    };
    let tls = edge.tls_connect(ip("127.0.0.1"), &[b"http/1.1"]).await;
    let mut player = support::raw::Raw::new(tls);
    player
        .send(b"GET /v2/rpc/whoami?http_key=defaulthttpkey HTTP/1.1\r\nhost: a\r\n\r\n")
        .await;
    // close_notify, then the end of the player's sending.
    tokio::io::AsyncWriteExt::shutdown(&mut player.stream)
        .await
        .unwrap();
    let answer = player.answer().await;
    let body = String::from_utf8_lossy(&answer.body).to_string();
    assert_eq!(answer.status, 200, "{body}");
    assert!(body.contains("nakama-"), "{body}");
    assert!(player.closed().await, "left open after the answer");
}

#[tokio::test(flavor = "multi_thread")]
async fn real_tokens_checked_with_a_wrong_session_key_are_counted_and_named_in_a_warn_line() {
    let Some((_deployment, _nodes, edge)) =
        deployment("[nakama]\nsession_key = \"not-what-nakama-signs-with\"\n").await
    else {
        return;
    };
    let client = edge.client(None);
    for i in 0..25 {
        let session = edge
            .authenticate(&client, &format!("real-key-device-{i:04}"))
            .await;
        rpc_node(&edge, &client, &session.token).await;
    }
    assert_eq!(
        edge.metric("nakama_edge_session_tokens_total{result=\"bad_signature\"}")
            .await,
        25.0
    );
    eventually("the WARN naming [nakama] session_key", || async {
        edge.log()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("[nakama] session_key"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn check_refuses_a_node_address_that_is_another_nodes_console() {
    let Some(bin) = nakama::bin() else {
        return;
    };
    let deployment = Deployment::new(bin);
    let a = deployment.node("nakama-1");
    // An operator's slip: node b's address is node a's console (7351-style, on another port).
    let config = format!(
        "{}[[nodes]]\nname = \"b\"\naddress = \"{}\"\n",
        a.toml(),
        a.console
    );
    let dir = TempDir::new("seal");
    let path = dir.path().join("edge.toml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(edge_bin())
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("the console of node \"nakama-1\""), "{text}");
}

/// The claims of a session token.
fn claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// What a test depends on in a node's answers, asked of the node at `http` directly: the
/// shape the stand-in must share with the real server.
async fn behaviour(http: std::net::SocketAddr) -> Value {
    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://{http}{path}");
    let health = client.get(url("/healthcheck")).send().await.unwrap();
    let health = (health.status().as_u16(), health.text().await.unwrap());
    let unknown = client.get(url("/v2/no-such-thing")).send().await.unwrap();
    let unknown = (unknown.status().as_u16(), unknown.text().await.unwrap());
    let login = |body: Value| {
        with_server_key(
            &client,
            url("/v2/account/authenticate/device?create=true"),
            body,
        )
    };
    let (_, session) = login(serde_json::json!({ "id": "fidelity-device-0001" })).await;
    let (token, refresh) = (
        claims(session["token"].as_str().unwrap()),
        claims(session["refresh_token"].as_str().unwrap()),
    );
    // Device ids of fewer than 10 bytes are refused.
    let short = login(serde_json::json!({ "id": "nine-byte" })).await;
    // A session var comes back in the token's `vrs`.
    let (_, with_vars) =
        login(serde_json::json!({ "id": "fidelity-device-0002", "vars": { "shard": "eu" } })).await;
    let mut token_claims: Vec<String> = token.as_object().unwrap().keys().cloned().collect();
    token_claims.sort();
    // Two refreshes in one second (tried again when a second boundary fell between them).
    let mut same_second_same_token = false;
    let mut refresh_keys = Vec::new();
    for _ in 0..5 {
        let mut answers = Vec::new();
        for _ in 0..2 {
            let body = serde_json::json!({ "token": session["refresh_token"] });
            let (_, a) = with_server_key(&client, url("/v2/account/session/refresh"), body).await;
            answers.push(a);
        }
        refresh_keys = answers[0].as_object().unwrap().keys().cloned().collect();
        refresh_keys.sort();
        let iat = |a: &Value| claims(a["token"].as_str().unwrap())["iat"].clone();
        if iat(&answers[0]) == iat(&answers[1]) {
            same_second_same_token = answers[0]["token"] == answers[1]["token"];
            break;
        }
    }
    let client_ip = |header: (&'static str, &'static str)| {
        let r = client
            .get(url("/v2/rpc/whoami?http_key=defaulthttpkey"))
            .header(header.0, header.1)
            .send();
        async move {
            let v: Value = r.await.unwrap().json().await.unwrap();
            let payload: Value = serde_json::from_str(v["payload"].as_str().unwrap()).unwrap();
            payload["client_ip"].clone()
        }
    };
    serde_json::json!({
        "healthcheck": health,
        "unknown_path": unknown,
        "token_claims": token_claims,
        "one_session_id": token["tid"] == refresh["tid"],
        "refresh_answer": refresh_keys,
        "short_device_id": short,
        "session_vars": claims(with_vars["token"].as_str().unwrap())["vrs"],
        "same_second_same_token": same_second_same_token,
        "client_ip_forwarded": client_ip(("x-forwarded-for", "1.1.1.1, 2.2.2.2")).await,
        "client_ip_cloudflare": client_ip(("cf-connecting-ip", "9.9.9.9")).await,
        "client_ip_real_ip": client_ip(("x-real-ip", "8.8.8.8")).await,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stand_in_answers_as_the_real_nakama_does() {
    let Some(bin) = nakama::bin() else {
        return;
    };
    let deployment = Deployment::new(bin);
    let real = deployment.node("nakama-1");
    real.wait_up().await;
    let standin = StandIn::start("standin");
    let (real, standin) = (behaviour(real.http).await, behaviour(standin.http).await);
    assert_eq!(
        real["client_ip_forwarded"], "1.1.1.1",
        "Nakama takes the first X-Forwarded-For entry: {real:#}"
    );
    assert_eq!(real, standin, "real:\n{real:#}\nstand-in:\n{standin:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_calls_go_round_robin_to_the_nodes_grpc_ports() {
    let Some((_deployment, _nodes, edge)) = deployment("").await else {
        return;
    };
    // An `Rpc` message: id (field 1) and http_key (field 3).
    let mut rpc = Vec::new();
    for (tag, value) in [(0x0a_u8, "whoami"), (0x1a, "defaulthttpkey")] {
        rpc.push(tag);
        rpc.push(value.len() as u8);
        rpc.extend_from_slice(value.as_bytes());
    }
    let mut nodes = Vec::new();
    for _ in 0..6 {
        let text = edge.grpc("/nakama.api.Nakama/RpcFunc", &rpc);
        assert!(text.starts_with("HTTP/2 200"), "{text}");
        assert!(text.contains("grpc-status: 0"), "{text}");
        let node = text
            .split("\\\"node\\\":\\\"")
            .nth(1)
            .or_else(|| text.split("\"node\":\"").nth(1))
            .and_then(|s| s.split(['"', '\\']).next())
            .unwrap_or_else(|| panic!("no node in {text}"))
            .to_string();
        nodes.push(node);
    }
    nodes.sort();
    assert_eq!(
        nodes,
        ["nakama-1", "nakama-1", "nakama-2", "nakama-2", "nakama-3", "nakama-3"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nakama_js_players_keep_their_node_across_addresses_and_refreshes() {
    let Some((_deployment, _nodes, edge)) = deployment("").await else {
        return;
    };
    let ca = edge.dir().join("ca.pem");
    std::fs::write(&ca, &edge.certs.ca_pem).unwrap();
    let out = js::run(
        "sticky.mjs",
        &["8"],
        &[
            ("EDGE_PORT", edge.https.port().to_string()),
            ("NODE_EXTRA_CA_CERTS", ca.display().to_string()),
        ],
    )
    .await;
    let used = js::players_kept_their_node(&out.stdout, 8, 4);
    assert!(used.len() >= 2, "eight players all on {used:?}");
}

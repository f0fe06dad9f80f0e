//! What operators see: exact counters for every route and outcome, an exposition promtool
//! accepts, alert rules and a dashboard that match the metrics, and logs without secrets.

mod support;

use std::process::Command;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new("promtool");
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd
        .spawn()
        .expect("promtool is needed (Debian package prometheus; .ci/deps installs it)");
    if let Some(text) = stdin {
        child.stdin.take().unwrap().write_all_sync(text.as_bytes());
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

trait WriteAllSync {
    fn write_all_sync(self, bytes: &[u8]);
}

impl WriteAllSync for std::process::ChildStdin {
    fn write_all_sync(mut self, bytes: &[u8]) {
        std::io::Write::write_all(&mut self, bytes).unwrap();
    }
}

fn repo_file(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

async fn requests(edge: &Edge, code: u16, route: &str, node: &str) -> f64 {
    edge.metric(&format!(
        "nakama_edge_http_requests_total{{code=\"{code}\",node=\"{node}\",route=\"{route}\"}}"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_and_outcome_is_counted_exactly_and_promtool_accepts_the_exposition() {
    let a = StandIn::start("a");
    let edge = Edge::start(
        &a.toml(),
        "[firewall]\ndeny = [\"127.0.0.2/32\"]\n[rate_limit]\nrequests_per_second = 1\nburst = 5\nauth_requests_per_minute = 100\n\
         connections_per_ip = 100\nnew_connections_per_second = 100\n",
    );
    edge.wait_healthy(&["a"]).await;
    let client = edge.client(Some(ip("127.0.0.3")));

    // 2xx, 4xx, 5xx from the node.
    let get = |path: &str| client.get(edge.url(path)).send();
    assert_eq!(
        get("/v2/rpc/whoami?http_key=defaulthttpkey")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(get("/v2/rpc/whoami").await.unwrap().status(), 401);
    assert_eq!(
        get("/v2/rpc/crash?http_key=defaulthttpkey")
            .await
            .unwrap()
            .status(),
        500
    );

    // 429 from the edge: a burst of 5 from one client, 2 of them spent above.
    let flood = edge.client(Some(ip("127.0.0.4")));
    let mut seen = std::collections::HashMap::<u16, u32>::new();
    for _ in 0..12 {
        let s = flood
            .get(edge.url("/v2/rpc/whoami?http_key=defaulthttpkey"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        *seen.entry(s).or_default() += 1;
    }
    assert!(seen.get(&429).copied().unwrap_or(0) >= 5, "{seen:?}");

    // WebSockets opened and closed.
    let s = edge
        .authenticate(&edge.client(Some(ip("127.0.0.5"))), "observed-device")
        .await;
    for _ in 0..2 {
        let mut ws = edge.websocket(&s.token, ip("127.0.0.5")).await.unwrap();
        assert_eq!(ws.node().await, "a");
        ws.close().await;
    }

    // Firewall reject, redirect, ACME path.
    assert!(edge
        .try_tls_connect_to(edge.https, ip("127.0.0.2"), &[b"h2"])
        .await
        .is_err());
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    assert_eq!(
        plain
            .get(format!("http://{}/x", edge.http))
            .send()
            .await
            .unwrap()
            .status(),
        308
    );
    assert_eq!(
        plain
            .get(format!("http://{}/.well-known/acme-challenge/t", edge.http))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    eventually("both WebSockets counted", || async {
        requests(&edge, 101, "websocket", "a").await == 2.0
    })
    .await;
    assert_eq!(
        requests(&edge, 200, "api", "a").await,
        1.0 + 1.0 + f64::from(seen[&200]),
        "whoami, auth, flood's 200s"
    );
    assert_eq!(requests(&edge, 401, "api", "a").await, 1.0);
    assert_eq!(requests(&edge, 500, "api", "a").await, 1.0);
    assert_eq!(
        requests(&edge, 429, "api", "none").await,
        f64::from(seen[&429])
    );
    assert_eq!(requests(&edge, 308, "redirect", "none").await, 1.0);
    assert_eq!(requests(&edge, 404, "acme", "none").await, 1.0);
    edge.assert_metric(
        "nakama_edge_connections_rejected_total{reason=\"firewall\"}",
        1.0,
    )
    .await;
    edge.assert_metric("nakama_edge_websocket_connections{node=\"a\"}", 0.0)
        .await;
    edge.assert_metric("nakama_edge_websocket_session_duration_seconds_count", 2.0)
        .await;
    edge.assert_metric("nakama_edge_http_requests_in_flight", 0.0)
        .await;
    assert!(
        edge.metric("nakama_edge_sent_bytes_total{route=\"api\"}")
            .await
            > 0.0
    );
    assert!(
        edge.metric("nakama_edge_health_checks_total{node=\"a\",result=\"success\"}")
            .await
            >= 1.0
    );
    edge.assert_metric("nakama_edge_build_info{version=\"0.1.0\"}", 1.0)
        .await;
    assert!(edge.metric("nakama_edge_start_time_seconds").await > 1.7e9);

    // 5xx from the edge: no node left.
    let mut a = a;
    a.kill();
    eventually("a out", || async {
        edge.node_state("a").await == "unhealthy"
    })
    .await;
    assert_eq!(
        get("/v2/rpc/whoami?http_key=defaulthttpkey")
            .await
            .unwrap()
            .status(),
        503
    );
    assert_eq!(requests(&edge, 503, "api", "none").await, 1.0);
    assert!(
        edge.metric("nakama_edge_health_checks_total{node=\"a\",result=\"failure\"}")
            .await
            >= 1.0
    );

    let exposition = edge.metrics().await;
    let (ok, out) = promtool(&["check", "metrics"], Some(&exposition));
    assert!(ok, "promtool check metrics:\n{out}");
    // No label value is a user id, a path or an address.
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            !line.contains("/v2") && !line.contains("127.0.0") && !line.contains("observed-device"),
            "{line}"
        );
    }
}

#[test]
fn the_alert_rules_pass_promtool() {
    let (ok, out) = promtool(
        &[
            "check",
            "rules",
            repo_file("observability/alerts.yml").to_str().unwrap(),
        ],
        None,
    );
    assert!(ok && out.contains("SUCCESS: 11 rules found"), "{out}");
}

#[tokio::test]
async fn the_dashboard_and_alerts_name_only_metrics_the_edge_registers() {
    // Every name the edge registers (a vector with no samples yet is not in the exposition).
    let source = std::fs::read_to_string(repo_file("proxy/src/ops/metrics.rs")).unwrap();
    let exported: std::collections::HashSet<&str> = source
        .split('"')
        .filter(|s| {
            s.starts_with("nakama_edge_")
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        .collect();
    assert!(exported.len() >= 20, "{exported:?}");
    for file in [
        "observability/grafana-dashboard.json",
        "observability/alerts.yml",
    ] {
        let text = std::fs::read_to_string(repo_file(file)).unwrap();
        let mut names = 0;
        for (i, _) in text.match_indices("nakama_edge_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let base = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_count")
                .trim_end_matches("_sum");
            assert!(
                exported.contains(base),
                "{file} names {name}, which the edge does not export"
            );
            names += 1;
        }
        assert!(names >= 6, "{file}");
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_file("observability/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    assert!(dashboard["panels"].as_array().unwrap().len() >= 10);
}

/// Secrets sent every way a Nakama client sends them.
const SECRETS: [&str; 5] = [
    "tok3nInQu3ry",
    "httpK3yInQu3ry",
    "B3ar3rH3ad3r",
    "s3rv3rK3yBasic",
    "wsT0k3nQu3ry",
];

#[tokio::test(flavor = "multi_thread")]
async fn no_token_http_key_or_authorization_reaches_the_logs() {
    let (mut nodes, edge) = cluster_with(
        &["a"],
        "[log]\nlevel = \"trace\"\nformat = \"json\"\n\
         [rate_limit]\nrequests_per_second = 1\nburst = 3\nauth_requests_per_minute = 100\nconnections_per_ip = 100\nnew_connections_per_second = 100\n",
    )
    .await;
    let client = edge.client(None);
    let [token, http_key, bearer, server_key, ws_token] = SECRETS;
    for _ in 0..5 {
        // Including 429s and, below, 502/503 error paths, which pingora logs itself.
        let _ = client
            .get(edge.url(&format!("/v2/rpc/whoami?token={token}&http_key={http_key}")))
            .send()
            .await;
        let _ = client
            .get(edge.url("/v2/rpc/whoami"))
            .bearer_auth(bearer)
            .send()
            .await;
        let _ = client
            .post(edge.url("/v2/account/authenticate/device"))
            .basic_auth(server_key, Some(""))
            .body("{}")
            .send()
            .await;
    }
    let _ = edge.websocket(ws_token, ip("127.0.0.1")).await;
    let mut raw = edge.tls_connect(ip("127.0.0.1"), &[b"http/1.1"]).await;
    raw.write_all(format!("GET /ws?token={ws_token} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {bearer}\r\n\r\n").as_bytes()).await.unwrap();
    let mut sink = vec![0u8; 4096];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), raw.read(&mut sink)).await;
    nodes[0].kill();
    for _ in 0..3 {
        let _ = client
            .get(edge.url(&format!("/v2/rpc/whoami?token={token}&http_key={http_key}")))
            .bearer_auth(bearer)
            .send()
            .await;
    }
    // Access lines are written in batches, within moments.
    eventually("the access lines of every request", || async {
        let log = edge.log();
        let lines = log.lines().filter(|l| l.contains("nakama_edge::access"));
        lines.clone().count() >= 10
            && lines.clone().any(|l| l.contains("\"status\":429"))
            && lines
                .clone()
                .any(|l| l.contains("\"path\":\"/v2/rpc/whoami\""))
    })
    .await;
    let log = edge.log();
    for secret in SECRETS {
        assert!(
            !log.contains(secret),
            "{secret} written to the log:\n{}",
            log.lines()
                .filter(|l| l.contains(secret))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // The access log is there, JSON, with the fields operators need.
    let access: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.contains("nakama_edge::access"))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(access.len() >= 10, "{} access lines", access.len());
    for field in [
        "timestamp",
        "client",
        "method",
        "path",
        "status",
        "route",
        "node",
        "duration_ms",
        "bytes_in",
        "bytes_out",
        "tls",
        "alpn",
    ] {
        assert!(
            access.iter().all(|l| !l[field].is_null()),
            "{field} missing in {:?}",
            access[0]
        );
    }
    assert!(access.iter().any(|l| l["status"] == 429));
    assert!(access.iter().any(|l| l["path"] == "/v2/rpc/whoami"));
}

#[tokio::test]
async fn log_format_level_and_access_log_change_on_reload() {
    let a = StandIn::start("a");
    let edge = Edge::start(&a.toml(), "[log]\nformat = \"human\"\n");
    edge.wait_healthy(&["a"]).await;
    let client = edge.client(None);
    let access_lines = |edge: &Edge| {
        edge.log()
            .lines()
            .filter(|l| l.contains("nakama_edge::access"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    whoami_http(&edge, &client).await.unwrap();
    eventually("a human access line", || async {
        access_lines(&edge).len() == 1
    })
    .await;
    assert!(serde_json::from_str::<serde_json::Value>(&access_lines(&edge)[0]).is_err());

    edge.write_config(&a.toml(), "[log]\nformat = \"json\"\n");
    eventually("reloaded", || async {
        edge.metric("nakama_edge_config_reloads_total{result=\"success\"}")
            .await
            >= 1.0
    })
    .await;
    whoami_http(&edge, &client).await.unwrap();
    eventually("a JSON access line", || async {
        access_lines(&edge).len() == 2
    })
    .await;
    let line: serde_json::Value = serde_json::from_str(&access_lines(&edge)[1]).unwrap();
    assert_eq!(line["status"], 200);

    edge.write_config(
        &a.toml(),
        "[log]\nformat = \"json\"\naccess_log = false\nlevel = \"warn\"\n",
    );
    eventually("reloaded again", || async {
        edge.metric("nakama_edge_config_reloads_total{result=\"success\"}")
            .await
            >= 2.0
    })
    .await;
    for _ in 0..3 {
        whoami_http(&edge, &client).await.unwrap();
    }
    assert_eq!(
        access_lines(&edge).len(),
        2,
        "no access lines once turned off"
    );
    // At level warn the second reload's own info line is not written; the first one's is.
    assert_eq!(
        edge.log().matches("config reloaded").count(),
        1,
        "{}",
        edge.log()
    );
}

//! The command line of docs/cli.md: check, drain, undrain, ready, and `run` with no config.

mod support;

use std::process::Command;

use support::*;

fn check(text: &str) -> (i32, String, String) {
    let dir = TempDir::new("check");
    let path = dir.path().join("edge.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(edge_bin())
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// `stderr` is exactly the problems `expected` names, in order: each line at its
/// `line:column` of edge.toml and saying its words.
fn assert_problems(stderr: &str, expected: &[(&str, &str)]) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), expected.len(), "{stderr}");
    for (line, (at, words)) in lines.iter().zip(expected) {
        assert!(
            line.contains(&format!("edge.toml:{at}:")) && line.contains(words),
            "{stderr}"
        );
    }
}

#[test]
fn check_accepts_a_good_file_with_a_summary() {
    let (code, stdout, _) = check("[[nodes]]\nname = \"a\"\naddress = \"127.0.0.1:7350\"\n");
    assert_eq!(code, 0);
    assert_eq!(stdout.lines().count(), 1);
    assert!(stdout.starts_with("ok: 1 node(s)"), "{stdout}");
}

#[test]
fn check_lists_every_problem_with_line_and_column_and_exits_1() {
    let text = "[server]\nthreads = 0\n\n[[nodes]]\nname = \"a\"\naddress = \"127.0.0.1:7351\"\n\n[firewall]\ndeny = [\"300.0.0.0/8\"]\n";
    let (code, stdout, stderr) = check(text);
    assert_eq!(code, 1);
    assert!(stdout.is_empty());
    assert_problems(
        &stderr,
        &[
            ("2:11", "server.threads"),
            ("6:11", "console port"),
            ("9:9", "300.0.0.0/8"),
        ],
    );
}

#[test]
fn check_finds_the_shard_mistakes_an_operator_makes() {
    let nodes = "[[nodes]]\nname = \"a\"\naddress = \"127.0.0.1:7350\"\n\
                 [[nodes]]\nname = \"b\"\naddress = \"127.0.0.2:7350\"\n";
    let text = format!(
        "[routing]\nmode = \"shards\"\n[nakama]\nsession_key = \"k\"\n\
         [[shards]]\nname = \"eu\"\nnode = \"nakama-9\"\n\
         [[shards]]\nname = \"us\"\nnode = \"a\"\nstandby = \"a\"\n\
         [[shards]]\nname = \"asia\"\nnode = \"a\"\n{nodes}"
    );
    let (code, _, stderr) = check(&text);
    assert_eq!(code, 1);
    assert_problems(
        &stderr,
        &[
            ("7:8", "\"nakama-9\" is neither"),
            ("11:11", "the shard's own node"),
            ("14:8", "already holds shard \"us\""),
        ],
    );
    let good = format!(
        "[routing]\nmode = \"shards\"\n[nakama]\nsession_key = \"k\"\n\
         [[shards]]\nname = \"eu\"\nnode = \"a\"\nstandby = \"b\"\n{nodes}"
    );
    let (code, stdout, stderr) = check(&good);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.starts_with("ok: 2 node(s); shard mode, 1 shard(s);"),
        "{stdout}"
    );
}

#[test]
fn check_reports_unknown_keys_and_missing_files_as_user_errors() {
    let (code, _, stderr) = check("[listeners]\nhttps = \"127.0.0.1:1\"\nhttp2 = true\n");
    assert_eq!(code, 1);
    assert!(
        stderr.contains(":3:1:") && stderr.contains("http2"),
        "{stderr}"
    );
    let out = Command::new(edge_bin())
        .args(["check", "-c", "/nonexistent/edge.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_and_undrain_through_the_cli() {
    let (_nodes, edge) = cluster(&["a", "b"]).await;
    let admin = edge.admin.to_string();
    let run = |args: &[&str]| {
        let out = Command::new(edge_bin())
            .args(args)
            .args(["--admin", &admin])
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };

    let (code, stdout) =
        tokio::task::block_in_place(|| run(&["drain", "a", "--wait", "--timeout", "20s"]));
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("a: drained"), "{stdout}");
    assert_eq!(edge.node_state("a").await, "draining");

    let (code, _) = tokio::task::block_in_place(|| run(&["undrain", "a"]));
    assert_eq!(code, 0);
    assert_eq!(edge.node_state("a").await, "healthy");

    let (code, _) = tokio::task::block_in_place(|| run(&["drain", "nope"]));
    assert_eq!(code, 1, "an unknown node is a user error");
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_wait_times_out_with_exit_1_while_a_websocket_stays() {
    let a = StandIn::start("a");
    let edge = Edge::start(&a.toml(), "");
    edge.wait_healthy(&["a"]).await;
    let client = edge.client(None);
    let s = edge.authenticate(&client, "stays-open").await;
    let mut ws = edge.websocket(&s.token, ip("127.0.0.1")).await.unwrap();
    assert_eq!(ws.node().await, "a");
    let admin = edge.admin.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(edge_bin())
            .args(["drain", "a", "--wait", "--timeout", "1s", "--admin", &admin])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("1 WebSocket(s) left"), "{stdout}");
    assert_eq!(ws.node().await, "a");
}

/// `nakama-edge run` with no config: the contract's development default.
#[tokio::test]
async fn run_without_a_config_serves_the_embedded_default() {
    // The default's ports are fixed (8443, 8080, 9180, node on 7350); skip only if another
    // process already holds them, and say so.
    for port in [8443, 8080, 9180, 7350, 7349] {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            panic!("port {port} is in use: this test needs the embedded default's ports free");
        }
    }
    let _node = StandIn::start_with("local", "127.0.0.1:7350".parse().unwrap(), &[]);
    let dir = TempDir::new("default");
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let mut child = Command::new(edge_bin())
        .arg("run")
        .stderr(log)
        .spawn()
        .unwrap();
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    eventually("ready on 9180", || async {
        client
            .get("http://127.0.0.1:9180/readyz")
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let r = client
        .get("https://127.0.0.1:8443/healthcheck")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .get("http://127.0.0.1:8080/v2/x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], "https://127.0.0.1:8443/v2/x");
    let _ = child.kill();
    let _ = child.wait();
}

/// `nakama-edge ready`, a container's HEALTHCHECK: exit 0 while /readyz says yes, 1 when it
/// says no (no routable node) or nothing answers; the admin address read from the config.
#[tokio::test(flavor = "multi_thread")]
async fn ready_follows_readyz_and_finds_the_admin_listener_in_the_config() {
    let (nodes, mut edge) = cluster(&["a"]).await;
    let ready = |args: &[&str]| {
        let out = Command::new(edge_bin())
            .arg("ready")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let config = edge.config_path.to_string_lossy().to_string();
    let admin = edge.admin.to_string();

    let (code, said) = tokio::task::block_in_place(|| ready(&["-c", &config]));
    assert_eq!(code, 0, "{said}");
    assert!(said.starts_with("ready"), "{said}");
    assert_eq!(
        tokio::task::block_in_place(|| ready(&["--admin", &admin])).0,
        0
    );

    nodes[0].set_healthy(false).await;
    eventually("node a out of rotation", || async {
        edge.node_state("a").await == "unhealthy"
    })
    .await;
    let (code, said) = tokio::task::block_in_place(|| ready(&["-c", &config]));
    assert_eq!(code, 1, "{said}");
    assert!(said.starts_with("not ready (503)"), "{said}");

    edge.signal(libc::SIGTERM);
    edge.exited("SIGTERM").await;
    let (code, said) = tokio::task::block_in_place(|| ready(&["--admin", &admin]));
    assert_eq!(code, 1, "nothing answering is not ready: {said}");
}

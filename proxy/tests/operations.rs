//! Operating the edge: graceful shutdown with close frames, systemd readiness.

mod support;

use std::time::{Duration, Instant};

use support::*;

/// A quiet stand-in (no pings), an edge in front of it, and `n` players' open WebSockets.
async fn edge_with_websockets(n: usize, tag: &str) -> (StandIn, Edge, Vec<Ws>) {
    let a = StandIn::start_with(
        "a",
        "127.0.0.1:0".parse().unwrap(),
        &["--ping-interval", "3600"],
    );
    let edge = Edge::start(&a.toml(), "");
    edge.wait_healthy(&["a"]).await;
    let client = edge.client(None);
    let mut sockets = Vec::new();
    for i in 0..n {
        let s = edge.authenticate(&client, &format!("{tag}-{i}")).await;
        let mut ws = edge.websocket(&s.token, ip("127.0.0.1")).await.unwrap();
        assert_eq!(ws.node().await, "a");
        sockets.push(ws);
    }
    (a, edge, sockets)
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_closes_websockets_with_close_frames_spread_over_the_grace_and_exits_0() {
    // The harness's grace period: 1 s.
    let (_a, mut edge, mut sockets) = edge_with_websockets(6, "shutdown").await;
    edge.signal(libc::SIGTERM);
    let sent = Instant::now();
    let mut closed_at = Vec::new();
    for ws in sockets.iter_mut() {
        let how = ws.closed().await;
        assert!(how.contains("Away"), "a close frame 1001, not a cut: {how}");
        closed_at.push(sent.elapsed());
    }
    let (first, last) = (closed_at[0], *closed_at.last().unwrap());
    // Closes come between half of the grace period and its end.
    assert!(
        first >= Duration::from_millis(400),
        "first close after {first:?}"
    );
    assert!(last > first, "spread out: {closed_at:?}");
    assert_eq!(edge.exited("SIGTERM").await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_answers_the_request_in_flight_then_exits_without_sleeping_out_the_grace_period() {
    // The edge's own HTTP/1.1 path, and pingora's (where a chunked body goes).
    for chunked in [false, true] {
        sigterm_with_a_request_in_flight(chunked).await;
    }
}

async fn sigterm_with_a_request_in_flight(chunked: bool) {
    // A grace period far longer than the test waits: an edge that sleeps it out fails here.
    let a = StandIn::start("a");
    let mut edge = Edge::start(&a.toml(), "grace_period = \"600s\"\n");
    edge.wait_healthy(&["a"]).await;
    let client = edge.client(None);
    let url = edge.url("/v2/rpc/slow?http_key=defaulthttpkey&ms=1500");
    let body = if chunked {
        let parts = [Ok::<_, std::io::Error>(&b"{\"a\":"[..]), Ok(&b"1}"[..])];
        reqwest::Body::wrap_stream(futures_util::stream::iter(parts))
    } else {
        reqwest::Body::from("{\"a\":1}")
    };
    let slow = tokio::spawn(async move { client.post(url).body(body).send().await });
    eventually("the slow request in flight", || async {
        edge.metric("nakama_edge_http_requests_in_flight").await == 1.0
    })
    .await;
    edge.signal(libc::SIGTERM);
    let answer = slow
        .await
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!(answer.status(), 200, "chunked: {chunked}");
    assert_eq!(
        answer.headers()["connection"],
        "close",
        "chunked: {chunked}"
    );
    let why = format!("SIGTERM, with no connection left (chunked: {chunked})");
    assert_eq!(edge.exited(&why).await.code(), Some(0));
    assert!(edge.log().contains("no client connection left, exiting"));
}

#[tokio::test]
async fn readiness_is_reported_to_systemd_once_the_listeners_are_bound() {
    let a = StandIn::start("a");
    let dir = TempDir::new("notify");
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    let edge = Edge::start_with_env(
        Ports::free(),
        TempDir::new("edge"),
        &a.toml(),
        "",
        &[("NOTIFY_SOCKET", socket_path.as_os_str())],
    );
    let mut buf = [0u8; 256];
    let n = tokio::task::spawn_blocking(move || {
        socket
            .recv(&mut buf)
            .map(|n| String::from_utf8_lossy(&buf[..n]).to_string())
    })
    .await
    .unwrap()
    .unwrap();
    assert!(n.contains("READY=1"), "{n}");
    assert!(n.contains(&format!("MAINPID={}", edge.pid())), "{n}");
    // By then every listener accepts connections.
    assert!(std::net::TcpStream::connect(edge.https).is_ok());
    assert!(std::net::TcpStream::connect(edge.admin).is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_under_load_refuses_no_connection_and_closes_old_websockets_with_frames() {
    let (_a, mut edge, mut sockets) = edge_with_websockets(3, "upgrading").await;
    let edge_client = edge.client(None);
    // Load: every request on a new connection, so any refused connection would show.
    let url = edge.url("/v2/rpc/whoami?http_key=defaulthttpkey");
    let ca = reqwest::Certificate::from_pem(edge.certs.ca_pem.as_bytes()).unwrap();
    let fresh = reqwest::Client::builder()
        .add_root_certificate(ca)
        .tls_built_in_root_certs(false)
        .resolve("localhost", edge.https)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, fresh) = (stop.clone(), fresh.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            // Bounded: at most 20,000 requests.
            for _ in 0..20_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                match fresh.get(&url).send().await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => failed.push(r.status().to_string()),
                    Err(e) => failed.push(format!("{e:?}")),
                }
            }
            (ok, failed)
        })
    };

    let mut old = edge.upgrade();
    let started = Instant::now();
    // The old process's WebSockets end with close frames, then it exits 0.
    for ws in sockets.iter_mut() {
        let how = ws.closed().await;
        assert!(how.contains("Away"), "close frame, not a reset: {how}");
    }
    let status = tokio::task::spawn_blocking(move || old.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0), "the old process exits cleanly");
    // The new process serves on the same sockets, admin API included.
    eventually("the new process answers", || async {
        edge.nodes().await.len() == 1
    })
    .await;
    let after = Instant::now();
    while after.elapsed() < Duration::from_millis(500) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} failed during the upgrade, first: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(ok > 20, "only {ok} requests in {:?}", started.elapsed());
    let s = edge.authenticate(&edge_client, "after-upgrade").await;
    let mut ws = edge.websocket(&s.token, ip("127.0.0.1")).await.unwrap();
    assert_eq!(ws.node().await, "a");
}

fn repo_file(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

#[test]
fn the_systemd_unit_verifies_and_rates_ok() {
    // verify checks that the programs exist: point the unit at this build.
    let dir = TempDir::new("unit");
    let unit = std::fs::read_to_string(repo_file("systemd/nakama-edge.service"))
        .unwrap()
        .replace("/usr/bin/nakama-edge", edge_bin().to_str().unwrap())
        .replace(
            "/usr/lib/nakama-edge/reload",
            repo_file("systemd/nakama-edge-reload").to_str().unwrap(),
        );
    let path = dir.path().join("nakama-edge.service");
    std::fs::write(&path, unit).unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for nakama-edge.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no rating:\n{text}"));
    assert!(exposure <= 2.0, "exposure {exposure}:\n{text}");
}

use std::process::Command;

/// Kills a process the test did not start as its child (one the helper script started).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(self.0 as i32, libc::SIGKILL);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reload_helper_reloads_the_config_or_upgrades_a_replaced_binary() {
    let (_nodes, edge) = cluster(&["a"]).await;
    let helper = repo_file("systemd/nakama-edge-reload");
    let out_path = edge.dir().join("helper.out");
    // The helper's output goes to a file: the process it starts in the background would keep
    // a pipe open after the helper exits.
    let run_helper = |binary: &std::path::Path| {
        let out = std::fs::File::create(&out_path).unwrap();
        Command::new(&helper)
            .arg(&edge.config_path)
            .arg(edge.pid().to_string())
            .env("NAKAMA_EDGE_BINARY", binary)
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .status()
            .unwrap()
    };
    // Same binary: a config reload.
    assert!(tokio::task::block_in_place(|| run_helper(&edge_bin())).success());
    eventually("reloaded", || async {
        edge.metric("nakama_edge_config_reloads_total{result=\"success\"}")
            .await
            >= 1.0
    })
    .await;
    // A replaced binary (a copy at another path): a zero-downtime upgrade.
    let dir = TempDir::new("new-binary");
    let new_binary = dir.path().join("nakama-edge");
    std::fs::copy(edge_bin(), &new_binary).unwrap();
    let old_pid = edge.pid();
    assert!(tokio::task::block_in_place(|| run_helper(&new_binary)).success());
    let said = std::fs::read_to_string(&out_path).unwrap();
    let new_pid: u32 = said
        .split("pid ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the helper did not upgrade: {said}"));
    let _new = KillOnDrop(new_pid);
    assert_ne!(new_pid, old_pid);
    assert_eq!(
        std::fs::read_link(format!("/proc/{new_pid}/exe")).unwrap(),
        new_binary,
        "the new binary runs"
    );
    eventually("the old process hands over and exits", || async {
        std::fs::read_to_string(format!("/proc/{old_pid}/stat"))
            .map_or(true, |s| s.contains(") Z "))
    })
    .await;
    let client = edge.client(None);
    assert_eq!(
        whoami_http(&edge, &client).await.unwrap()["node"],
        "a",
        "the new process serves"
    );
}

/// The restart command the rolling reboot calls for a stand-in: SIGTERM (Nakama's shutdown),
/// wait for it to go, start it again on the same port, wait until it answers.
const RESTART_NODE: &str = r#"#!/bin/sh
set -eu
node="$1"; dir="$(dirname "$0")"
pid=$(cat "$dir/$node.pid")
kill -TERM "$pid" 2>/dev/null || true
while [ -e "/proc/$pid" ] && ! grep -q ') Z ' "/proc/$pid/stat" 2>/dev/null; do sleep 0.05; done
$(cat "$dir/$node.cmd") >/dev/null 2>&1 </dev/null &
echo $! > "$dir/$node.pid"
until curl -fsS "http://$(cat "$dir/$node.addr")/healthcheck" >/dev/null 2>&1; do sleep 0.05; done
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_reboot_of_three_nodes_under_load_fails_no_request_and_every_player_is_back() {
    let dir = TempDir::new("rolling");
    let mut nodes = Vec::new();
    let mut toml = String::new();
    for name in ["a", "b", "c"] {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let node = StandIn::start_with(name, addr, &["--ping-interval", "1"]);
        let cmd = format!(
            "{} --name {name} --listen {addr} --grpc {} --ping-interval 1",
            standin_bin().display(),
            node.grpc
        );
        std::fs::write(dir.path().join(format!("{name}.cmd")), cmd).unwrap();
        std::fs::write(dir.path().join(format!("{name}.addr")), addr.to_string()).unwrap();
        std::fs::write(
            dir.path().join(format!("{name}.pid")),
            node.pid().to_string(),
        )
        .unwrap();
        toml.push_str(&node.toml());
        nodes.push(node);
    }
    let restart = dir.path().join("restart-node.sh");
    std::fs::write(&restart, RESTART_NODE).unwrap();
    let edge = std::sync::Arc::new(Edge::start(&toml, "[routing]\ndrain_timeout = \"1s\"\n"));
    edge.wait_healthy(&["a", "b", "c"]).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (edge, stop) = (edge.clone(), stop.clone());
        tokio::spawn(async move {
            let client = edge.client(None);
            let (mut ok, mut failed) = (0u32, Vec::new());
            for _ in 0..50_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                match whoami_http(&edge, &client).await {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e),
                }
            }
            (ok, failed)
        })
    };
    let mut players = Vec::new();
    for i in 0..6 {
        let (edge, stop) = (edge.clone(), stop.clone());
        players.push(tokio::spawn(async move {
            let session = edge
                .authenticate(&edge.client(None), &format!("rolling-player-{i}"))
                .await;
            let mut reconnects = 0;
            loop {
                let mut ws = edge
                    .websocket(&session.token, ip("127.0.0.1"))
                    .await
                    .unwrap();
                let node = ws.node().await;
                // Play until the socket is closed (drain, reboot) or the test is over.
                loop {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return (ws, node, reconnects);
                    }
                    if ws.closed_within(Duration::from_millis(200)).await.is_some() {
                        break;
                    }
                }
                reconnects += 1;
                assert!(reconnects < 20, "player {i} reconnected {reconnects} times");
            }
        }));
    }

    let admin = edge.admin.to_string();
    let script = repo_file("systemd/rolling-reboot.sh");
    let edge_binary = edge_bin();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("sh")
            .arg(script)
            .args(["a", "b", "c"])
            .env("RESTART", format!("sh {} %s", restart.display()))
            .env("ADMIN", admin)
            .env("WAIT", "60s")
            .env("NAKAMA_EDGE", edge_binary)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    // The stand-ins the script started are not this test's children.
    let _restarted: Vec<KillOnDrop> = ["a", "b", "c"]
        .iter()
        .filter_map(|n| std::fs::read_to_string(dir.path().join(format!("{n}.pid"))).ok())
        .filter_map(|p| p.trim().parse().ok())
        .map(KillOnDrop)
        .collect();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("all nodes rebooted"), "{said}");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(3)]
    );
    let states = edge.nodes().await;
    for player in players {
        let (mut ws, _, reconnects) = player.await.unwrap();
        let node = ws
            .whoami()
            .await
            .expect("every player ends on a live socket")["node"]
            .as_str()
            .unwrap()
            .to_string();
        let state = states.iter().find(|n| n["name"] == node.as_str()).unwrap();
        assert_eq!(state["state"], "healthy", "player on {node}");
        // Every node was drained once, so every player was moved at least once.
        assert!(reconnects >= 1, "a player was never moved off its node");
    }
}

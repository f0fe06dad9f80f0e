//! Operating the edge: graceful shutdown with close frames, systemd readiness.

mod support;

use std::time::{Duration, Instant};

use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_closes_websockets_with_close_frames_spread_over_the_grace_and_exits_0() {
    let a = StandIn::start_with(
        "a",
        "127.0.0.1:0".parse().unwrap(),
        &["--ping-interval", "3600"],
    );
    // The harness's grace period: 1 s.
    let mut edge = Edge::start(&a.toml(), "");
    edge.wait_healthy(&["a"]).await;
    let client = edge.client(None);
    let mut sockets = Vec::new();
    for i in 0..6 {
        let s = edge.authenticate(&client, &format!("shutdown-{i}")).await;
        let mut ws = edge.websocket(&s.token, ip("127.0.0.1")).await.unwrap();
        assert_eq!(ws.node().await, "a");
        sockets.push(ws);
    }
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
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = edge.try_exit() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0));
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
    // By then every listener accepts connections.
    assert!(std::net::TcpStream::connect(edge.https).is_ok());
    assert!(std::net::TcpStream::connect(edge.admin).is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_under_load_refuses_no_connection_and_closes_old_websockets_with_frames() {
    let a = StandIn::start_with(
        "a",
        "127.0.0.1:0".parse().unwrap(),
        &["--ping-interval", "3600"],
    );
    let mut edge = Edge::start(&a.toml(), "");
    edge.wait_healthy(&["a"]).await;
    let edge_client = edge.client(None);
    let mut sockets = Vec::new();
    for i in 0..3 {
        let s = edge
            .authenticate(&edge_client, &format!("upgrade-{i}"))
            .await;
        let mut ws = edge.websocket(&s.token, ip("127.0.0.1")).await.unwrap();
        assert_eq!(ws.node().await, "a");
        sockets.push(ws);
    }

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

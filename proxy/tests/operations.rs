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

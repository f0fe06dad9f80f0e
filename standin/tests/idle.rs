//! The stand-in closes an idle keep-alive connection as Nakama does (`socket.idle_timeout_ms`):
//! the edge's pool must meet nodes that do.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The stand-in process, killed when dropped.
struct Standin(Child);

impl Drop for Standin {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the stand-in on a free loopback port with `args`; its HTTP address.
fn start(args: &[&str]) -> (Standin, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nakama-standin"))
        .args(["--listen", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start nakama-standin");
    let stdout = child.stdout.take().expect("its stdout");
    let standin = Standin(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("its LISTENING line");
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http="))
        .unwrap_or_else(|| panic!("no http= in {line:?}"))
        .to_string();
    (standin, addr)
}

#[test]
fn a_keep_alive_connection_left_idle_is_closed_by_the_node() {
    let (_standin, addr) = start(&["--idle-timeout", "1"]);
    let mut conn = TcpStream::connect(&addr).unwrap();
    conn.write_all(b"GET /healthcheck HTTP/1.1\r\nhost: nakama\r\n\r\n")
        .unwrap();
    // A generous deadline: the node closes after 1 s idle, the test fails only after 20 (hyper's
    // own default header deadline, once a timer is set, is 30 s).
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    let closed = loop {
        match conn.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    let answer = String::from_utf8_lossy(&seen);
    assert!(
        answer.starts_with("HTTP/1.1 200 OK"),
        "the request is answered first: {answer:?}"
    );
    assert!(
        closed,
        "the node still held the idle connection after {:?}",
        started.elapsed()
    );
}

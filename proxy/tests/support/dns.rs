//! Real DNS servers on loopback for the discovery tests: `pebble-challtestsrv` for A records
//! (set over its management API) and `dnsmasq` for SRV records (set by its arguments).

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};

use super::{eventually, free_port};

/// A port free for TCP on every one of `ips`, and for UDP on 127.0.0.1 (a DNS server's).
pub fn port_free_on(ips: &[&str]) -> u16 {
    for _ in 0..100 {
        let port = free_port();
        let free = ips
            .iter()
            .all(|ip| TcpListener::bind((ip.parse::<std::net::IpAddr>().unwrap(), port)).is_ok())
            && UdpSocket::bind(("127.0.0.1", port)).is_ok();
        if free {
            return port;
        }
    }
    panic!("no port free on all of {ips:?}");
}

fn spawn_checked(program: &str, args: &[String], package: &str) -> Child {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{program} is needed (Debian package `{package}`; .ci/deps installs it): {e}")
        })
}

/// `pebble-challtestsrv` answering A queries with what a test sets, and nothing else.
pub struct ARecords {
    child: Child,
    /// The DNS server's address (UDP and TCP).
    pub addr: SocketAddr,
    management: SocketAddr,
}

impl ARecords {
    /// Start a server with no records.
    pub async fn start() -> ARecords {
        let addr: SocketAddr = format!("127.0.0.1:{}", port_free_on(&["127.0.0.1"]))
            .parse()
            .unwrap();
        let management: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut records = ARecords {
            child: Command::new("true").spawn().unwrap(),
            addr,
            management,
        };
        records.spawn().await;
        records
    }

    async fn spawn(&mut self) {
        let args: Vec<String> = [
            "-dns01",
            &self.addr.to_string(),
            "-management",
            &self.management.to_string(),
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-defaultIPv4",
            "",
            "-defaultIPv6",
            "",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        self.child = spawn_checked("pebble-challtestsrv", &args, "pebble");
        let management = self.management;
        eventually("pebble-challtestsrv's management API", || async move {
            std::net::TcpStream::connect(management).is_ok()
        })
        .await;
    }

    async fn post(&self, path: &str, body: serde_json::Value) {
        let r = reqwest::Client::new()
            .post(format!("http://{}{path}", self.management))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }

    /// Make `ips` the A records of `host` (a name ending in `.`).
    pub async fn set(&self, host: &str, ips: &[&str]) {
        self.clear(host).await;
        self.post(
            "/add-a",
            serde_json::json!({ "host": host, "addresses": ips }),
        )
        .await;
    }

    /// Remove every A record of `host`: it then answers with none.
    pub async fn clear(&self, host: &str) {
        self.post("/clear-a", serde_json::json!({ "host": host }))
            .await;
    }

    /// Stop the server (by its pid): queries go unanswered.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start it again on the same ports, with no records.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }
}

impl Drop for ARecords {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One SRV record and the address of its target.
#[derive(Debug, Clone)]
pub struct Srv {
    /// The target's name (under the test domain).
    pub target: String,
    /// The port the record gives.
    pub port: u16,
    /// The target's address.
    pub ip: String,
}

/// `dnsmasq` serving the SRV records of one name, with their targets' addresses.
pub struct SrvRecords {
    child: Child,
    /// The DNS server's address (UDP and TCP).
    pub addr: SocketAddr,
    name: String,
}

fn dnsmasq() -> &'static str {
    if std::path::Path::new("/usr/sbin/dnsmasq").exists() {
        "/usr/sbin/dnsmasq"
    } else {
        "dnsmasq"
    }
}

impl SrvRecords {
    /// Serve `records` as the SRV records of `name`.
    pub async fn start(name: &str, records: &[Srv]) -> SrvRecords {
        let addr: SocketAddr = format!("127.0.0.1:{}", port_free_on(&["127.0.0.1"]))
            .parse()
            .unwrap();
        let mut server = SrvRecords {
            child: Command::new("true").spawn().unwrap(),
            addr,
            name: name.to_string(),
        };
        server.serve(records).await;
        server
    }

    /// Serve `records` instead (dnsmasq reads SRV records from its arguments only: it is
    /// started again, by its pid, on the same port).
    pub async fn serve(&mut self, records: &[Srv]) {
        self.stop();
        let mut args: Vec<String> = [
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--user=root",
            "--pid-file=",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!("--port={}", self.addr.port()));
        for r in records {
            args.push(format!("--srv-host={},{},{}", self.name, r.target, r.port));
            args.push(format!("--host-record={},{}", r.target, r.ip));
        }
        self.child = spawn_checked(dnsmasq(), &args, "dnsmasq-base");
        let addr = self.addr;
        eventually("dnsmasq listening", || async move {
            std::net::TcpStream::connect(addr).is_ok()
        })
        .await;
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SrvRecords {
    fn drop(&mut self) {
        self.stop();
    }
}

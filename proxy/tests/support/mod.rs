//! Test support: real `nakama-edge` and `nakama-standin` processes on loopback, real clients.
//!
//! Every process started here is killed when its handle drops. Waiting is always for a
//! condition with a generous deadline ([`eventually`]), never a fixed sleep.

#![allow(dead_code)]

pub mod containers;
pub mod dns;
pub mod js;
pub mod nakama;
pub mod pebble;
pub mod postgres;
pub mod raw;
pub mod raw_node;
pub use postgres::free_port;

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// How long any awaited condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Wait until `check` is true, polling; panic after [`DEADLINE`].
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_within(what, DEADLINE, check).await
}

/// [`eventually`] with a deadline of its own (for what takes longer by nature, such as a
/// container stack coming up).
pub async fn eventually_within<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Run `cmd`, which must succeed (else the test fails with its output): its output.
pub fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (.ci/deps and .ci/run install what is needed)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A command's standard output as text, trimmed.
pub fn stdout_of(out: std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "nakama-edge-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The edge under test: this build's, or `NAKAMA_EDGE_BIN` (to run a suite against another
/// build, e.g. an older one, to see what it catches).
pub fn edge_bin() -> PathBuf {
    std::env::var_os("NAKAMA_EDGE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_nakama-edge")))
}

/// The stand-in node's binary, built (or found up to date) once per test process:
/// `cargo test -p nakama-edge` does not build another package's binary by itself.
pub fn standin_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = edge_bin().with_file_name("nakama-standin");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "-p", "nakama-standin"]);
        if bin.to_string_lossy().contains("/release/") {
            cmd.arg("--release");
        }
        assert!(
            cmd.status().unwrap().success(),
            "building nakama-standin failed"
        );
        bin
    })
    .clone()
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// A stand-in Nakama node process.
pub struct StandIn {
    child: Child,
    pub name: String,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
}

impl StandIn {
    pub fn start(name: &str) -> StandIn {
        StandIn::start_with(name, "127.0.0.1:0".parse().unwrap(), &[])
    }

    /// Start on `http` (port 0: any) with extra flags. Its ports come from [`free_port`], not
    /// the kernel's choice at bind: a port the kernel picks may be one `free_port` has just
    /// handed to an edge that has not bound it yet (the edge's admin API then answered by a
    /// stand-in, seen in CI).
    pub fn start_with(name: &str, http: SocketAddr, flags: &[&str]) -> StandIn {
        let http = match http.port() {
            0 => SocketAddr::new(http.ip(), free_port()),
            _ => http,
        };
        let grpc = format!("127.0.0.1:{}", free_port());
        let mut child = Command::new(standin_bin())
            .args([
                "--name",
                name,
                "--listen",
                &http.to_string(),
                "--grpc",
                &grpc,
            ])
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let field = |k: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(k))
                .unwrap_or_else(|| panic!("stand-in {name} did not start: {line:?}"))
                .parse()
                .unwrap()
        };
        let (http, grpc) = (field("http="), field("grpc="));
        StandIn {
            child,
            name: name.to_string(),
            http,
            grpc,
        }
    }

    /// `[[nodes]]` entry for this node.
    pub fn toml(&self) -> String {
        format!(
            "[[nodes]]\nname = \"{}\"\naddress = \"{}\"\ngrpc = \"{}\"\n",
            self.name, self.http, self.grpc
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn terminate(&self) {
        signal(&self.child, libc::SIGTERM);
    }

    /// Open WebSockets and requests the node itself counts.
    pub async fn stats(&self) -> Value {
        reqwest::get(format!("http://{}/standin/stats", self.http))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn set_healthy(&self, healthy: bool) {
        let action = if healthy { "pass" } else { "fail" };
        let r = reqwest::Client::new()
            .post(format!("http://{}/standin/health/{action}", self.http))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A test CA and certificates signed by it.
pub struct TestCerts {
    pub ca_pem: String,
    ca_der: rustls::pki_types::CertificateDer<'static>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCerts {
    pub fn new() -> TestCerts {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        // A name of its own: a client trusting several test CAs finds each leaf's issuer.
        static N: AtomicUsize = AtomicUsize::new(0);
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!(
                "nakama-edge test CA {}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ),
        );
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = params.self_signed(&ca_key).unwrap();
        TestCerts {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
            issuer: rcgen::Issuer::new(params, ca_key),
        }
    }

    /// Write a fresh leaf certificate and key for `localhost`/`127.0.0.1`, and return the
    /// leaf's DER.
    pub fn write_leaf(&self, cert: &Path, key: &Path, common_name: &str) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(
            [
                "localhost",
                "127.0.0.1",
                "127.0.0.2",
                "127.0.0.3",
                "127.0.0.4",
            ]
            .map(String::from)
            .to_vec(),
        )
        .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = params.signed_by(&leaf_key, &self.issuer).unwrap();
        write_atomically(cert, &leaf.pem());
        write_atomically(key, &leaf_key.serialize_pem());
        leaf.der().to_vec()
    }

    pub fn root_store(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        roots
    }

    /// A rustls client config trusting the test CA, offering `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.root_store())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// POST `body` to `url` as a client logs in or refreshes (JSON, Nakama's default server key):
/// the status and the answer's JSON.
pub async fn with_server_key(client: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let r = client
        .post(url)
        .basic_auth("defaultkey", Some(""))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// Write a file the way deployment tools do: a temporary file renamed over the old one.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Listener addresses for an edge.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub https: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    /// The console listener, if the edge has one.
    pub console: Option<SocketAddr>,
}

impl Ports {
    /// Three ports nobody listens on now.
    pub fn free() -> Ports {
        let addr = || -> SocketAddr { format!("127.0.0.1:{}", free_port()).parse().unwrap() };
        Ports {
            https: addr(),
            http: addr(),
            admin: addr(),
            console: None,
        }
    }

    /// The same ports on another loopback address (another edge of a cluster: the CA
    /// validates on one port number, at whichever address DNS gives).
    pub fn on(&self, ip: &str) -> Ports {
        let at = |a: SocketAddr| SocketAddr::new(ip.parse().unwrap(), a.port());
        Ports {
            https: at(self.https),
            http: at(self.http),
            admin: at(self.admin),
            console: self.console.map(at),
        }
    }

    /// [`Ports::free`] and a console listener.
    pub fn with_console() -> Ports {
        Ports {
            console: Some(format!("127.0.0.1:{}", free_port()).parse().unwrap()),
            ..Ports::free()
        }
    }
}

/// A running `nakama-edge` with its config file and certificates in a temp dir.
pub struct Edge {
    child: Child,
    pub https: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub console: Option<SocketAddr>,
    pub certs: TestCerts,
    pub config_path: PathBuf,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    log_path: PathBuf,
    dir: TempDir,
}

/// Limits far above any test's load, unless a test is about limits.
const TEST_RATE_LIMIT: &str = "[rate_limit]\nrequests_per_second = 100000\nburst = 100000\n\
     auth_requests_per_minute = 100000\nconnections_per_ip = 10000\nnew_connections_per_second = 10000\n";

/// The default test sections: quick health checks.
const TEST_HEALTH_CHECK: &str =
    "[health_check]\ninterval = \"200ms\"\ntimeout = \"500ms\"\nunhealthy_threshold = 2\nhealthy_threshold = 1\n";

impl Edge {
    /// Start an edge in front of `nodes` (their `[[nodes]]` TOML) with extra `sections`.
    pub fn start(nodes: &str, sections: &str) -> Edge {
        Edge::start_at(Ports::free(), TempDir::new("edge"), nodes, sections)
    }

    /// Start an edge on `ports`, keeping its files in `dir` (which a restarted edge may
    /// share). With an `[acme]` section there is no `[tls]` section.
    pub fn start_at(ports: Ports, dir: TempDir, nodes: &str, sections: &str) -> Edge {
        Edge::start_with_env(ports, dir, nodes, sections, &[])
    }

    /// [`Edge::start_at`] with extra environment variables for the process.
    pub fn start_with_env(
        ports: Ports,
        dir: TempDir,
        nodes: &str,
        sections: &str,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Edge {
        let certs = TestCerts::new();
        let cert_path = dir.path().join("fullchain.pem");
        let key_path = dir.path().join("privkey.pem");
        certs.write_leaf(&cert_path, &key_path, "first");
        let config_path = dir.path().join("edge.toml");
        let log_path = dir.path().join(format!("edge-{}.log", free_port()));
        let mut edge = Edge {
            child: Command::new("true").spawn().unwrap(),
            https: ports.https,
            http: ports.http,
            admin: ports.admin,
            console: ports.console,
            certs,
            config_path,
            cert_path,
            key_path,
            log_path,
            dir,
        };
        edge.write_config(nodes, sections);
        // Appending: an upgraded process appends to the same file, and a writer with its own
        // offset would write over the other's lines.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&edge.log_path)
            .unwrap();
        edge.child = Command::new(edge_bin())
            .args(["run", "-c"])
            .arg(&edge.config_path)
            .envs(env.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        edge
    }

    /// The socket an upgrading process takes the listeners over through.
    pub fn upgrade_socket(&self) -> PathBuf {
        self.dir.path().join("upgrade.sock")
    }

    /// A zero-downtime upgrade: start a new process with `--upgrade` on the same config, let
    /// the running one hand its listening sockets over (SIGQUIT), and return the old process,
    /// which finishes its work and exits.
    pub fn upgrade(&mut self) -> Child {
        let new = self.begin_upgrade();
        self.complete_upgrade(new)
    }

    /// The first half of an upgrade: start the new process and wait until it is ready for the
    /// sockets (it opens the upgrade socket once its first health checks are done). The old
    /// process serves alone meanwhile.
    pub fn begin_upgrade(&mut self) -> Child {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let new = Command::new(edge_bin())
            .args(["run", "--upgrade", "-c"])
            .arg(&self.config_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        // The new process listens on the upgrade socket, then waits for the sockets.
        let deadline = Instant::now() + DEADLINE;
        while !self.upgrade_socket().exists() {
            assert!(
                Instant::now() < deadline,
                "the new process never opened the upgrade socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        new
    }

    /// The second half: the old process hands its sockets to `new` (SIGQUIT); returns the old
    /// process, which finishes its work and exits.
    pub fn complete_upgrade(&mut self, new: Child) -> Child {
        let old = std::mem::replace(&mut self.child, new);
        signal(&old, libc::SIGQUIT);
        old
    }

    /// Where this edge keeps its runtime state (`server.state_dir`).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// This edge's ports, to start another on.
    pub fn ports(&self) -> Ports {
        Ports {
            https: self.https,
            http: self.http,
            admin: self.admin,
            console: self.console,
        }
    }

    /// Stop the process and hand back its directory.
    pub fn stop(mut self) -> TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The empty path left behind is not a directory; dropping it removes nothing.
        std::mem::replace(&mut self.dir, TempDir(PathBuf::new()))
    }

    /// The config text for `nodes` and `sections`, with this edge's listeners and certificate.
    pub fn config_text(&self, nodes: &str, sections: &str) -> String {
        let tls = if sections.contains("[acme]") {
            String::new()
        } else {
            format!(
                "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
                self.cert_path.display(),
                self.key_path.display()
            )
        };
        let health = if sections.contains("[health_check]") {
            ""
        } else {
            TEST_HEALTH_CHECK
        };
        let console = self
            .console
            .map_or(String::new(), |c| format!("console = \"{c}\"\n"));
        let log = if sections.contains("[log]") {
            ""
        } else {
            "[log]\nlevel = \"info,pingora_core=warn\"\n"
        };
        let limits = if sections.contains("[rate_limit]") {
            ""
        } else {
            TEST_RATE_LIMIT
        };
        // A test's own `grace_period = "..."` line goes in [server], instead of the 1 s here;
        // its `http_redirect = ...` in [listeners].
        let grace = |l: &&str| l.starts_with("grace_period =");
        let grace_period = sections
            .lines()
            .find(grace)
            .unwrap_or("grace_period = \"1s\"");
        let redirect = |l: &&str| l.starts_with("http_redirect =");
        let http_redirect = sections.lines().find(redirect).unwrap_or("");
        let sections: Vec<&str> = sections
            .lines()
            .filter(|l| !grace(l) && !redirect(l))
            .collect();
        let sections = sections.join("\n");
        format!(
            "[server]\nthreads = 1\n{grace_period}\nupgrade_socket = \"{upgrade}\"\nstate_dir = \"{state}\"\n\n[listeners]\nhttps = \"{}\"\nhttp = \"{}\"\nadmin = \"{}\"\n{http_redirect}\n{console}\n\
             {tls}\n{health}\n{limits}\n{log}\n{sections}\n\n{nodes}",
            self.https, self.http, self.admin,
            upgrade = self.upgrade_socket().display(),
            state = self.state_dir().display(),
        )
    }

    pub fn write_config(&self, nodes: &str, sections: &str) {
        write_atomically(&self.config_path, &self.config_text(nodes, sections));
    }

    pub fn write_raw_config(&self, text: &str) {
        write_atomically(&self.config_path, text);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A gRPC call of `method` (`/nakama.api.Nakama/RpcFunc`) carrying `message` (protobuf)
    /// through the https listener over h2, by curl: the answer's head, body and trailers.
    pub fn grpc(&self, method: &str, message: &[u8]) -> String {
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(message);
        let path = self.dir().join(format!("grpc-frame-{}", free_port()));
        std::fs::write(&path, frame).unwrap();
        let out = self.curl(&[
            "--http2",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "--data-binary",
            &format!("@{}", path.display()),
            "-D",
            "-",
            "-o",
            "-",
            &self.url(method),
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run curl against this edge, trusting its CA and with `localhost` resolving to its https
    /// listener; `args` follow (options, then the URL, [`Edge::url`]).
    pub fn curl(&self, args: &[&str]) -> std::process::Output {
        let ca = self.dir().join("ca.pem");
        std::fs::write(&ca, &self.certs.ca_pem).unwrap();
        Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(&ca)
            .args([
                "--resolve",
                &format!("localhost:{}:127.0.0.1", self.https.port()),
            ])
            .args(args)
            .output()
            .unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: i32) {
        signal(&self.child, sig);
    }

    /// Whether the process has exited, and how.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Wait for the process to exit, up to [`DEADLINE`] (`why` says what should have ended
    /// it), and how it exited.
    pub async fn exited(&mut self, why: &str) -> std::process::ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running {DEADLINE:?} after {why}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.https.port())
    }

    pub async fn admin_get(&self, path: &str) -> Option<reqwest::Response> {
        reqwest::get(format!("http://{}{path}", self.admin))
            .await
            .ok()
    }

    /// `GET /nodes` as JSON.
    pub async fn nodes(&self) -> Vec<Value> {
        let r = self.admin_get("/nodes").await.expect("admin API answers");
        r.json().await.unwrap()
    }

    /// The `state` of node `name` in `GET /nodes`.
    pub async fn node_state(&self, name: &str) -> String {
        self.nodes()
            .await
            .into_iter()
            .find(|n| n["name"] == name)
            .map(|n| n["state"].as_str().unwrap_or("").to_string())
            .unwrap_or_else(|| "absent".to_string())
    }

    /// The metrics exposition, empty while the admin API does not answer yet.
    pub async fn metrics(&self) -> String {
        match self.admin_get("/metrics").await {
            Some(r) => r.text().await.unwrap_or_default(),
            None => String::new(),
        }
    }

    /// The value of the series `series` (name with labels exactly as exposed), 0 if absent.
    pub async fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    /// Wait until the series `series` is exactly `expected`. A request is counted as pingora
    /// finishes it, just after its response has gone out, so a client can see the answer a
    /// moment before the count.
    pub async fn assert_metric(&self, series: &str, expected: f64) {
        eventually(&format!("{series} to be {expected}"), || async {
            self.metric(series).await == expected
        })
        .await;
    }

    pub async fn admin_post(&self, path: &str) -> reqwest::StatusCode {
        reqwest::Client::new()
            .post(format!("http://{}{path}", self.admin))
            .send()
            .await
            .unwrap()
            .status()
    }

    /// Wait until the edge answers and every node in `names` is healthy.
    pub async fn wait_healthy(&self, names: &[&str]) {
        eventually("the admin API", || async {
            self.admin_get("/healthz").await.is_some()
        })
        .await;
        for name in names {
            eventually(&format!("node {name} healthy"), || async {
                self.node_state(name).await == "healthy"
            })
            .await;
        }
        eventually("/readyz 200", || async {
            self.admin_get("/readyz")
                .await
                .is_some_and(|r| r.status() == 200)
        })
        .await;
    }

    /// An HTTPS client trusting the test CA, sending from `source` (127.0.0.1 if `None`).
    /// It speaks HTTP/1.1, as most game clients do (Unity, .NET, Godot, nakama-js under Node);
    /// with `NAKAMA_EDGE_TEST_HTTP=2` it offers h2 instead, as browsers do: the suite runs over
    /// either.
    pub fn client(&self, source: Option<IpAddr>) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(self.certs.ca_pem.as_bytes()).unwrap();
        let builder = reqwest::Client::builder();
        let builder = if std::env::var("NAKAMA_EDGE_TEST_HTTP").as_deref() == Ok("2") {
            builder
        } else {
            builder.http1_only()
        };
        builder
            .add_root_certificate(ca)
            .tls_built_in_root_certs(false)
            .local_address(source)
            .resolve("localhost", self.https)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    /// The `whoami` RPC with a player's session `token` (POST, as nakama-js calls RPCs): the
    /// status, and the name of the node that ran it (refused: the edge's or node's answer).
    pub async fn rpc_whoami(&self, client: &reqwest::Client, token: &str) -> (u16, String) {
        let r = client
            .post(self.url("/v2/rpc/whoami"))
            .bearer_auth(token)
            .json(&"{}")
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        if status != 200 {
            return (status, v.to_string());
        }
        let payload: Value = serde_json::from_str(v["payload"].as_str().unwrap()).unwrap();
        (status, payload["node"].as_str().unwrap().to_string())
    }

    /// Authenticate a device through the edge.
    pub async fn authenticate(&self, client: &reqwest::Client, device_id: &str) -> Session {
        let url = self.url("/v2/account/authenticate/device?create=true");
        let (status, v) =
            with_server_key(client, url, serde_json::json!({ "id": device_id })).await;
        assert_eq!(status, 200, "{v}");
        Session {
            token: v["token"].as_str().unwrap().to_string(),
            refresh_token: v["refresh_token"].as_str().unwrap().to_string(),
        }
    }

    /// A TLS connection to `addr` from `source`, offering `alpn`, or why there is none.
    pub async fn try_tls_connect_to(
        &self,
        addr: SocketAddr,
        source: IpAddr,
        alpn: &[&[u8]],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        let tcp = socket.connect(addr).await?;
        let connector = tokio_rustls::TlsConnector::from(self.certs.client_config(alpn));
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        tokio::time::timeout(DEADLINE, connector.connect(name, tcp))
            .await
            .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
    }

    /// A TLS connection to the https listener from `source`, offering `alpn`.
    pub async fn tls_connect(
        &self,
        source: IpAddr,
        alpn: &[&[u8]],
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        self.try_tls_connect_to(self.https, source, alpn)
            .await
            .unwrap()
    }

    /// Open a WSS connection to `/ws` with `token`, from `source`.
    pub async fn websocket(
        &self,
        token: &str,
        source: IpAddr,
    ) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        let tls = self.tls_connect(source, &[b"http/1.1"]).await;
        let url = format!(
            "wss://localhost:{}/ws?lang=en&status=true&token={token}",
            self.https.port()
        );
        let (ws, _) = tokio_tungstenite::client_async(url, tls).await?;
        Ok(Ws {
            inner: ws,
            next_cid: 1,
        })
    }
}

/// Stand-in nodes named `names` and an edge in front of them with extra `sections`, every
/// node healthy.
pub async fn cluster_with(names: &[&str], sections: &str) -> (Vec<StandIn>, Edge) {
    let nodes: Vec<StandIn> = names.iter().map(|n| StandIn::start(n)).collect();
    let edge = Edge::start(
        &nodes.iter().map(StandIn::toml).collect::<String>(),
        sections,
    );
    edge.wait_healthy(names).await;
    (nodes, edge)
}

/// [`cluster_with`] and no extra sections.
pub async fn cluster(names: &[&str]) -> (Vec<StandIn>, Edge) {
    cluster_with(names, "").await
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- nakama-edge log ----\n{}", self.log());
        }
    }
}

/// A Nakama session.
pub struct Session {
    pub token: String,
    pub refresh_token: String,
}

/// A realtime socket.
pub struct Ws {
    inner:
        tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    next_cid: u64,
}

impl Ws {
    /// Ask the node who it is over the socket: the `whoami` rpc's payload.
    pub async fn whoami(&mut self) -> Result<Value, String> {
        let cid = self.next_cid.to_string();
        self.next_cid += 1;
        let msg =
            serde_json::json!({"cid": cid, "rpc": {"id": "whoami", "payload": ""}}).to_string();
        self.inner
            .send(Message::Text(msg.into()))
            .await
            .map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let next = tokio::time::timeout_at(deadline, self.inner.next())
                .await
                .map_err(|_| "no answer".to_string())?;
            match next {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).map_err(|e| e.to_string())?;
                    if v["cid"] == cid.as_str() {
                        return serde_json::from_str(v["rpc"]["payload"].as_str().unwrap_or(""))
                            .map_err(|e| e.to_string());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("closed".to_string()),
            }
        }
    }

    /// The name of the node behind this socket.
    pub async fn node(&mut self) -> String {
        self.whoami().await.unwrap()["node"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// How the socket was closed, if it was within `limit`.
    pub async fn closed_within(&mut self, limit: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.inner.next()).await {
                Err(_) => return None,
                Ok(None) => return Some("eof".to_string()),
                Ok(Some(Err(e))) => return Some(format!("error: {e}")),
                Ok(Some(Ok(Message::Close(frame)))) => return Some(format!("close: {frame:?}")),
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Wait for the socket to be closed by the other side; how it ended.
    pub async fn closed(&mut self) -> String {
        loop {
            match tokio::time::timeout(DEADLINE, self.inner.next()).await {
                Err(_) => panic!("socket still open after {DEADLINE:?}"),
                Ok(None) => return "eof".to_string(),
                Ok(Some(Err(e))) => return format!("error: {e}"),
                Ok(Some(Ok(Message::Close(frame)))) => return format!("close: {frame:?}"),
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.inner.close(None).await;
    }

    /// Send `n` text messages as fast as the socket takes them; how many went out before the
    /// edge stopped taking them.
    pub async fn flood(&mut self, n: usize) -> usize {
        for i in 0..n {
            if self
                .inner
                .feed(Message::Text(format!("{{\"cid\":\"f{i}\"}}").into()))
                .await
                .is_err()
            {
                return i;
            }
        }
        let _ = self.inner.flush().await;
        n
    }
}

/// `whoami` over HTTP through the edge, with the http_key.
pub async fn whoami_http(edge: &Edge, client: &reqwest::Client) -> Result<Value, String> {
    let r = client
        .get(edge.url("/v2/rpc/whoami?http_key=defaulthttpkey"))
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    if r.status() != 200 {
        return Err(format!("status {}", r.status()));
    }
    let v: Value = r.json().await.map_err(|e| e.to_string())?;
    serde_json::from_str(v["payload"].as_str().unwrap_or("")).map_err(|e| e.to_string())
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// How a steady load went: answers by status, and every failure with when it happened.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub ok: u32,
    pub failures: Vec<(Duration, String)>,
}

/// How a load's client connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connections {
    /// A new TLS connection for every request.
    Fresh,
    /// Keep-alive HTTP/1.1 connections, reused.
    KeepAliveH1,
    /// HTTP/2 connections (ALPN), reused.
    KeepAliveH2,
}

/// A steady load on `url` from `workers` concurrent loops until `stop` is set (bounded: at
/// most 20,000 requests per worker).
pub fn steady_load(
    edge: &Edge,
    url: &str,
    workers: usize,
    connections: Connections,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<LoadReport> {
    let ca = reqwest::Certificate::from_pem(edge.certs.ca_pem.as_bytes()).unwrap();
    let mut builder = reqwest::Client::builder()
        .add_root_certificate(ca)
        .tls_built_in_root_certs(false)
        .resolve("localhost", edge.https)
        .timeout(Duration::from_secs(10));
    builder = match connections {
        Connections::Fresh => builder.pool_max_idle_per_host(0),
        Connections::KeepAliveH1 => builder.http1_only(),
        Connections::KeepAliveH2 => builder,
    };
    let client = builder.build().unwrap();
    let url = url.to_string();
    tokio::spawn(async move {
        let started = Instant::now();
        let loops = (0..workers).map(|_| {
            let (client, url, stop) = (client.clone(), url.clone(), stop.clone());
            tokio::spawn(async move {
                let mut report = LoadReport::default();
                for _ in 0..20_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match client.get(&url).send().await {
                        Ok(r) if r.status() == 200 => match r.bytes().await {
                            Ok(_) => report.ok += 1,
                            Err(e) => report
                                .failures
                                .push((started.elapsed(), format!("body: {e:?}"))),
                        },
                        Ok(r) => {
                            let status = r.status();
                            let body = r.text().await.unwrap_or_default();
                            report
                                .failures
                                .push((started.elapsed(), format!("{status} {}", body.trim())));
                        }
                        Err(e) => report.failures.push((started.elapsed(), format!("{e:?}"))),
                    }
                }
                report
            })
        });
        let mut total = LoadReport::default();
        for l in loops.collect::<Vec<_>>() {
            let r = l.await.unwrap();
            total.ok += r.ok;
            total.failures.extend(r.failures);
        }
        total.failures.sort_by_key(|f| f.0);
        total
    })
}

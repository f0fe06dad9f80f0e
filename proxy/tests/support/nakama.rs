//! Real Nakama nodes for a test: the open-source server (`NAKAMA_BIN`, else the copy beside
//! this repository in `../shared/nakama`) on a throwaway PostgreSQL, migrated with `nakama
//! migrate up`, each node loading the project's test module (`tests/nakama/edge_test.js`).
//!
//! Ports as Nakama lays them out: API and WebSocket on `socket.port`, its gRPC on port - 1;
//! the console on `console.port`, its gRPC on port - 3.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::postgres::{free_port, Postgres};
use super::TempDir;

/// The Nakama binary, or why the real-Nakama tests are skipped. `NAKAMA_BIN` set but wrong
/// fails the test: only an unset one with no copy beside the repository skips.
pub fn bin() -> Option<PathBuf> {
    if let Some(set) = std::env::var_os("NAKAMA_BIN") {
        let set = PathBuf::from(set);
        assert!(set.is_file(), "NAKAMA_BIN={} is not a file", set.display());
        return Some(set);
    }
    let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/nakama/nakama");
    if beside.is_file() {
        return Some(beside);
    }
    eprintln!(
        "SKIPPED: no Nakama binary. Set NAKAMA_BIN to an open-source Nakama 3.x server binary \
         (https://github.com/heroiclabs/nakama/releases) to run the real-Nakama tests."
    );
    None
}

/// Whether `port` can be bound on 127.0.0.1 now.
fn bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A free port `p` whose `p - below` is free too (Nakama takes both).
fn free_pair(below: u16) -> u16 {
    loop {
        let p = free_port();
        if p > below + 1024 && bindable(p - below) {
            return p;
        }
    }
}

/// A PostgreSQL with Nakama's schema, and the runtime module directory.
pub struct Deployment {
    pub db: Postgres,
    bin: PathBuf,
    modules: PathBuf,
}

impl Deployment {
    /// A fresh database, migrated.
    pub fn new(bin: PathBuf) -> Deployment {
        let db = Postgres::start();
        let out = Command::new(&bin)
            .args(["migrate", "up", "--database.address"])
            .arg(database(&db))
            .env("NAKAMA_TELEMETRY", "0")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nakama migrate up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Deployment {
            db,
            bin,
            modules: Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/nakama"),
        }
    }

    /// Start node `name` on ports of its own.
    pub fn node(&self, name: &str) -> Nakama {
        let api = free_pair(1);
        let console = free_pair(3);
        let mut node = Nakama {
            child: None,
            name: name.to_string(),
            http: SocketAddr::from(([127, 0, 0, 1], api)),
            grpc: SocketAddr::from(([127, 0, 0, 1], api - 1)),
            console: SocketAddr::from(([127, 0, 0, 1], console)),
            dir: TempDir::new(&format!("nakama-{name}")),
            bin: self.bin.clone(),
            database: database(&self.db),
            modules: self.modules.clone(),
        };
        node.start();
        node
    }

    /// `names`' nodes, each answering its health check.
    pub async fn nodes(&self, names: &[&str]) -> Vec<Nakama> {
        let nodes: Vec<Nakama> = names.iter().map(|n| self.node(n)).collect();
        for n in &nodes {
            n.wait_up().await;
        }
        nodes
    }
}

fn database(db: &Postgres) -> String {
    format!("postgres@127.0.0.1:{}/nakama", db.port)
}

/// One Nakama node process.
pub struct Nakama {
    child: Option<Child>,
    pub name: String,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub console: SocketAddr,
    dir: TempDir,
    bin: PathBuf,
    database: String,
    modules: PathBuf,
}

impl Nakama {
    /// Start (again, on the same ports) after an exit.
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("nakama.log"))
            .unwrap();
        let child = Command::new(&self.bin)
            .args(["--name", &self.name, "--database.address", &self.database])
            .args(["--socket.address", "127.0.0.1", "--socket.port"])
            .arg(self.http.port().to_string())
            .args(["--console.address", "127.0.0.1", "--console.port"])
            .arg(self.console.port().to_string())
            .arg("--runtime.path")
            .arg(&self.modules)
            .args(["--runtime.js_entrypoint", "edge_test.js"])
            .args(["--session.token_expiry_sec", "3600"])
            .args(["--logger.level", "WARN", "--data_dir"])
            .arg(self.dir.path())
            .env("NAKAMA_TELEMETRY", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Until `/healthcheck` answers 200.
    pub async fn wait_up(&self) {
        let url = format!("http://{}/healthcheck", self.http);
        super::eventually(&format!("nakama {} up", self.name), || async {
            reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
    }

    /// Its `[[nodes]]` entry: HTTP, gRPC and console addresses.
    pub fn toml(&self) -> String {
        format!(
            "[[nodes]]\nname = \"{}\"\naddress = \"{}\"\ngrpc = \"{}\"\nconsole = \"{}\"\n",
            self.name, self.http, self.grpc, self.console
        )
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM, as an orchestrator stops it, and wait for the exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    /// SIGKILL, as a crash, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// What the node logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nakama.log")).unwrap_or_default()
    }
}

impl Drop for Nakama {
    fn drop(&mut self) {
        self.kill();
    }
}

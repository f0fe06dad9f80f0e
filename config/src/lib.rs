//! The nakama-edge configuration: one TOML file, validated whole, swapped whole.
//!
//! ```text
//!   TOML text ──► schema (serde, every value with its span)
//!                   │
//!                   ▼
//!                validate ──► Config (typed, defaults filled in)   ──► the proxy's snapshot
//!                   │
//!                   └──► ConfigError: every problem, with line and column
//!
//!   watch: notify on the file (and the TLS files it names) ──► the proxy re-reads
//! ```
//!
//! * [`Config`] is what the proxy runs on: addresses resolved, durations parsed, CIDRs
//!   compiled, enums instead of strings. An invalid file never becomes a `Config`.
//! * [`Config::parse`] and [`Config::load`] return every problem at once
//!   ([`ConfigError::Invalid`]), each with its line and column.
//! * [`watch`] reports changes to files on disk, for hot reload.
//!
//! The schema, every key and its default, is documented in `docs/config.md` (checked against
//! this parser by `proxy/tests/reference.rs`); unknown keys are errors.

mod duration;
mod schema;
mod validate;
pub mod watch;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use duration::parse_duration;

/// Ports a node must never be reached on through a public listener: Nakama's console and
/// console gRPC.
pub const CONSOLE_PORTS: [u16; 2] = [7351, 7348];
/// Nakama's Prometheus endpoint (its usual port): for the scraper, never for players.
pub const METRICS_PORT: u16 = 9100;

/// Why players must never reach a node on `port`, or `None` when they may: what refuses a
/// `[[nodes]]` address in the config and a discovered one at run time alike.
pub fn refused_node_port(port: u16) -> Option<&'static str> {
    if CONSOLE_PORTS.contains(&port) {
        Some("a Nakama console port: it must never be exposed to players")
    } else if port == METRICS_PORT {
        Some("Nakama's metrics port: it is for the Prometheus scraper, never for players")
    } else {
        None
    }
}
/// Nakama serves a node's console gRPC on its console port - 3.
pub const CONSOLE_GRPC_OFFSET: u16 = 3;

/// What players must never reach through the edge: Nakama's console, console gRPC and
/// metrics ports on any address ([`refused_node_port`]), and every console a config
/// declares (`nodes.console`, `discover.console_port`) with its console gRPC (the console
/// port - 3). The one rule behind `check`, a `[[nodes]]` address and a discovered one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seal {
    /// Declared console addresses, each with what declares it.
    addresses: Vec<(SocketAddr, String)>,
    /// Console ports of discovered nodes (on whatever address they are found), each with its
    /// entry's name.
    ports: Vec<(u16, String)>,
}

impl Seal {
    /// The seal of these nodes and discovery entries.
    pub fn of(nodes: &[Node], discover: &[Discover]) -> Seal {
        let mut seal = Seal::default();
        for n in nodes {
            if let Some(console) = n.console {
                seal.add_console(console, &format!("node {:?}", n.name));
            }
        }
        for d in discover {
            if let Some(port) = d.console_port {
                seal.add_console_port(port, &format!("discover {:?}", d.name));
            }
        }
        seal
    }

    /// A node's console at `console` (`who`: the node).
    fn add_console(&mut self, console: SocketAddr, who: &str) {
        self.addresses
            .push((console, format!("the console of {who} (nodes.console)")));
        if let Some(port) = console.port().checked_sub(CONSOLE_GRPC_OFFSET) {
            self.addresses.push((
                SocketAddr::new(console.ip(), port),
                format!("the console gRPC of {who} (nodes.console - {CONSOLE_GRPC_OFFSET})"),
            ));
        }
    }

    /// Consoles on `port` of whatever address (`who`: the discovery entry).
    pub(crate) fn add_console_port(&mut self, port: u16, who: &str) {
        self.ports.push((
            port,
            format!("the console port of {who} (discover.console_port)"),
        ));
        if let Some(grpc) = port.checked_sub(CONSOLE_GRPC_OFFSET) {
            self.ports.push((
                grpc,
                format!("the console gRPC port of {who} (discover.console_port - {CONSOLE_GRPC_OFFSET})"),
            ));
        }
    }

    /// Why players must never reach a node at `address`, or `None` when they may.
    pub fn refuses(&self, address: SocketAddr) -> Option<String> {
        if let Some(why) = refused_node_port(address.port()) {
            return Some(why.to_string());
        }
        let by_address = self.addresses.iter().find(|(a, _)| *a == address);
        let by_port = || self.ports.iter().find(|(p, _)| *p == address.port());
        by_address
            .map(|(_, what)| what)
            .or_else(|| by_port().map(|(_, what)| what))
            .map(|what| format!("{what}: it must never be exposed to players"))
    }
}

impl Config {
    /// What players must never reach, from this config ([`Seal`]).
    pub fn seal(&self) -> Seal {
        Seal::of(&self.nodes, &self.discover)
    }
}

pub use ipnet::IpNet;

/// The embedded development default, served by `nakama-edge run` without `-c`.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

/// A validated configuration. Built only by [`Config::parse`] / [`Config::load`].
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Process-wide settings.
    pub server: Server,
    /// Where the edge listens.
    pub listeners: Listeners,
    /// Where the TLS certificate comes from.
    pub certificates: CertificateSource,
    /// The Nakama nodes, in file order; names are unique.
    pub nodes: Vec<Node>,
    /// Active health checking of the nodes.
    pub health_check: HealthCheck,
    /// How requests are spread over the nodes.
    pub routing: Routing,
    /// Who may connect.
    pub firewall: Firewall,
    /// Per-client budgets.
    pub rate_limit: RateLimit,
    /// Time limits.
    pub timeouts: Timeouts,
    /// Logging; changes apply on reload.
    pub log: Log,
    /// Several edges sharing state through one database; `None`: this edge alone.
    pub cluster: Option<Cluster>,
    /// What the edge may know of the Nakama deployment.
    pub nakama: Nakama,
    /// Nodes found in DNS, beside `nodes`.
    pub discover: Vec<Discover>,
    /// The shards of `routing.mode = "shards"`, in file order; empty: every node is its own.
    pub shards: Vec<Shard>,
}

/// One `[[shards]]` entry: the node that holds a shard's matches, parties and chat, and the
/// one that takes its new work while that node cannot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// What players name in their session var (`routing.shard_var`).
    pub name: String,
    /// A `[[nodes]]` entry's name, or a `[[discover]]` entry's (the node it finds).
    pub node: String,
    /// Likewise; takes the shard's new work while `node` is down or drained.
    pub standby: Option<String>,
}

/// One `[[discover]]` entry: nodes found in DNS, named `<name>-<address>:<port>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discover {
    /// The entry's name, the prefix of its nodes' names.
    pub name: String,
    /// Where the nodes are found.
    pub source: DnsSource,
    /// Each node's gRPC port, on its address.
    pub grpc_port: Option<u16>,
    /// Each node's console port, on its address (for `listeners.console` only).
    pub console_port: Option<u16>,
    /// Each node's weight.
    pub weight: u32,
    /// How often to look again (sooner when the records' TTL is shorter).
    pub interval: Duration,
    /// DNS servers to ask; empty: the system's (`/etc/resolv.conf`).
    pub resolvers: Vec<SocketAddr>,
}

/// What a `[[discover]]` entry looks up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsSource {
    /// A and AAAA records of `host`: one node per address, on `port`.
    Addresses {
        /// The name to look up, as written: with a final `.` it is absolute; without, the
        /// resolver's search domains apply as for any lookup (`nakama.game` in Kubernetes).
        host: String,
        /// The nodes' HTTP port.
        port: u16,
    },
    /// SRV records of `name`: one node per target, on the record's port.
    Srv {
        /// The name to look up (`_api._tcp.nakama.service.consul`), as written.
        name: String,
    },
}

impl DnsSource {
    /// What is looked up, as an operator wrote it: `A/AAAA nakama.game:7350` or
    /// `SRV _api._tcp.nakama.service.consul`.
    pub fn name(&self) -> String {
        match self {
            DnsSource::Addresses { host, port } => format!("A/AAAA {host} (port {port})"),
            DnsSource::Srv { name } => format!("SRV {name}"),
        }
    }
}

/// `[nakama]`
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Nakama {
    /// Nakama's `session.encryption_key`s: a session token signed (HS256) with one of them,
    /// and not expired, identifies its user. Several during a rotation; none: players are
    /// told apart by address only.
    pub session_keys: Vec<Secret>,
}

/// `[cluster]`: the database several edges share their state through (the PostgreSQL or
/// CockroachDB that Nakama already uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// How to reach the database (a `postgres://` URL). It may hold a password: it is never
    /// printed ([`Secret`]'s `Debug` shows none of it).
    pub database: Secret,
    /// A file holding the database password, instead of one in the URL.
    pub database_password_file: Option<PathBuf>,
    /// A root certificate for the database's TLS (else the system's roots).
    pub database_ca: Option<PathBuf>,
    /// This edge's name among the others (default: the host name).
    pub name: String,
}

/// A secret (a database URL, a session key), kept out of every log and debug print.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one piece of code that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    /// A tracing filter: `"info"`, `"warn"`, `"info,pingora_core=warn"`.
    pub level: String,
    /// How lines are written.
    pub format: LogFormat,
    /// One line per request or WebSocket session.
    pub access_log: bool,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// For people at a terminal.
    Human,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// `[server]`
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// Worker threads.
    pub threads: usize,
    /// How long in-flight work may take to finish on shutdown or upgrade.
    pub grace_period: Duration,
    /// The Unix socket through which `run --upgrade` takes the listening sockets over, as
    /// set; `None`: one of the instance's own (the proxy derives it from `state_dir` or the
    /// config file's path).
    pub upgrade_socket: Option<PathBuf>,
    /// Where runtime operator state (drains set through the admin API) is kept across restarts
    /// and upgrades. `None`: in memory only.
    pub state_dir: Option<PathBuf>,
}

/// `[listeners]`. Changing an address takes a restart (or `--upgrade`); `http_redirect`
/// applies on reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listeners {
    /// Players: HTTPS, WSS and gRPC over TLS.
    pub https: Option<SocketAddr>,
    /// Plain HTTP: ACME HTTP-01, and a redirect to https (or proxying, see `http_redirect`).
    pub http: Option<SocketAddr>,
    /// `true`: the http listener redirects to https; `false`: it proxies like https.
    pub http_redirect: bool,
    /// Admin API: metrics, health, nodes, drain.
    pub admin: Option<SocketAddr>,
    /// Optional console listener, for `firewall.console_allow` only.
    pub console: Option<SocketAddr>,
}

impl Listeners {
    /// The addresses, which a running process cannot change.
    pub fn addresses(&self) -> [Option<SocketAddr>; 4] {
        [self.https, self.http, self.admin, self.console]
    }
}

/// Where the https listener's certificate comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum CertificateSource {
    /// `[tls]`: PEM files, re-read when they change.
    Files {
        /// Certificate chain, leaf first.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
    /// `[acme]`: obtained and renewed automatically.
    Acme(Acme),
    /// Neither section: a self-signed certificate generated at start (development only).
    SelfSigned,
}

/// `[acme]`
#[derive(Debug, Clone, PartialEq)]
pub struct Acme {
    /// Names on the certificate.
    pub domains: Vec<String>,
    /// The ACME directory URL.
    pub directory: String,
    /// Contact URLs (`mailto:`).
    pub contact: Vec<String>,
    /// How the CA validates control of the domains.
    pub challenge: AcmeChallenge,
    /// Where the account and certificates are kept.
    pub state_dir: PathBuf,
    /// A root certificate to trust for the ACME server itself.
    pub directory_ca: Option<PathBuf>,
    /// The first wait after a failed attempt; it doubles with each failure, up to an hour.
    pub retry_backoff: Duration,
}

/// The ACME challenge type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// RFC 8737, answered on the https listener.
    TlsAlpn01,
    /// Answered on the http listener under `/.well-known/acme-challenge/`.
    Http01,
}

/// One `[[nodes]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Unique name, used in metrics and the admin API.
    pub name: String,
    /// HTTP API and WebSocket address.
    pub address: SocketAddr,
    /// gRPC (h2c) address, if the node serves gRPC through the edge.
    pub grpc: Option<SocketAddr>,
    /// Console address, reachable only through `listeners.console`.
    pub console: Option<SocketAddr>,
    /// Relative share of round-robin traffic and of the hash ring (1 or more).
    pub weight: u32,
    /// `true`: no new requests or WebSockets.
    pub drain: bool,
}

/// `[health_check]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Path requested with GET; 2xx is healthy.
    pub path: String,
    /// Time between checks of one node.
    pub interval: Duration,
    /// How long one check may take.
    pub timeout: Duration,
    /// Consecutive failures before a node is taken out.
    pub unhealthy_threshold: u32,
    /// Consecutive successes before a node is put back.
    pub healthy_threshold: u32,
}

/// `[routing]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    /// The path of Nakama's realtime socket.
    pub websocket_path: String,
    /// What a WebSocket is hashed on.
    pub sticky_key: StickyKey,
    /// How long WebSockets on a draining node may stay open.
    pub drain_timeout: Duration,
    /// Where a player's requests go.
    pub mode: RoutingMode,
    /// The session var (token `vrs`) that names a player's shard.
    pub shard_var: String,
}

/// How players are spread over the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutingMode {
    /// One node or a Nakama Enterprise cluster: API calls round-robin, sockets sticky by user.
    Cluster,
    /// Independent open-source nodes: every request of a player to the node of its shard.
    Shards,
}

/// What WebSocket upgrades are hashed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StickyKey {
    /// The `uid` of the Nakama session token, else the client IP.
    User,
    /// Always the client IP.
    ClientIp,
}

/// `[firewall]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firewall {
    /// Peers that may connect.
    pub allow: Vec<IpNet>,
    /// Peers that may not; wins over `allow`.
    pub deny: Vec<IpNet>,
    /// Peers that may use `listeners.console`.
    pub console_allow: Vec<IpNet>,
    /// Peers whose PROXY protocol header is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Peers that may use the admin API (default: loopback only).
    pub admin_allow: Vec<IpNet>,
}

/// `[rate_limit]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained requests per second per client.
    pub requests_per_second: u32,
    /// Requests a client may send at once above the sustained rate.
    pub burst: u32,
    /// Authentication and session-refresh requests per minute per client.
    pub auth_requests_per_minute: u32,
    /// Concurrent connections per client.
    pub connections_per_ip: u32,
    /// New connections per second per client.
    pub new_connections_per_second: u32,
    /// Failed logins (401 from `/v2/account/authenticate/*`) per minute per account
    /// identifier; past it, that account's logins get 429 until the minute is over.
    pub login_failures_per_minute: u32,
    /// Messages per second a player's WebSocket may send; past it (and its burst) the socket
    /// is closed with 1008.
    pub websocket_messages_per_second: u32,
    /// Messages a WebSocket may send at once above the sustained rate.
    pub websocket_message_burst: u32,
}

/// `[timeouts]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// Time allowed for a TLS handshake.
    pub tls_handshake: Duration,
    /// Time allowed for a request's headers to arrive.
    pub request_header: Duration,
    /// Idle time after which a keep-alive HTTP connection is closed.
    pub http_idle: Duration,
    /// Idle time after which a WebSocket is closed.
    pub websocket_idle: Duration,
    /// Time allowed to connect to a node.
    pub upstream_connect: Duration,
    /// The longest a node may stay silent while answering a request: before its response
    /// head (else 504, and the request is not sent again) or between two reads of its body
    /// (else the response is cut off). WebSockets, once upgraded, have `websocket_idle`.
    pub upstream_read: Duration,
    /// Time allowed for a whole request body to arrive (else 408); bodies are read before a
    /// node connection is taken for them.
    pub request_body: Duration,
}

/// One problem in a config file, with its position (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The reason.
        source: std::io::Error,
    },
    /// The file was read but is not a valid config; every problem found is listed.
    #[error("{}", ProblemList { origin, problems })]
    Invalid {
        /// The file name, or `<embedded>`.
        origin: String,
        /// Every problem, in file order.
        problems: Vec<Problem>,
    },
}

struct ProblemList<'a> {
    origin: &'a str,
    problems: &'a [Problem],
}

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{}:{}: {}", self.origin, p.line, p.column, p.message)?;
        }
        Ok(())
    }
}

impl Config {
    /// Parse and validate config text. `origin` names it in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        validate::parse(text).map_err(|problems| ConfigError::Invalid {
            origin: origin.to_string(),
            problems,
        })
    }

    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// The embedded development default.
    pub fn embedded_default() -> Result<Config, ConfigError> {
        Config::parse(EMBEDDED_DEFAULT, "<embedded>")
    }

    /// A one-line description, printed by `nakama-edge check`.
    pub fn summary(&self) -> String {
        let addr = |a: Option<SocketAddr>| a.map_or_else(|| "off".to_string(), |a| a.to_string());
        let certs = match &self.certificates {
            CertificateSource::Files { .. } => "certificate files",
            CertificateSource::Acme(_) => "ACME",
            CertificateSource::SelfSigned => "self-signed certificate",
        };
        let cluster = self
            .cluster
            .as_ref()
            .map_or_else(String::new, |c| format!("; cluster member {:?}", c.name));
        let discover = match self.discover.len() {
            0 => String::new(),
            n => format!(
                " and {n} [[discover]] entr{}",
                if n == 1 { "y" } else { "ies" }
            ),
        };
        let routing = match (self.routing.mode, self.shards.len()) {
            (RoutingMode::Cluster, _) => String::new(),
            (RoutingMode::Shards, 0) => "; shard mode, every node its own shard".to_string(),
            (RoutingMode::Shards, n) => format!("; shard mode, {n} shard(s)"),
        };
        format!(
            "ok: {} node(s){discover}{routing}; https {} ({certs}), http {} ({}), admin {}{cluster}",
            self.nodes.len(),
            addr(self.listeners.https),
            addr(self.listeners.http),
            if self.listeners.http_redirect {
                "redirect"
            } else {
                "proxy"
            },
            addr(self.listeners.admin),
        )
    }
}

//! The `nakama-edge` command (docs/cli.md): `run`, `check`, `drain`, `undrain`, and
//! `ready` (a health check for containers, which have no curl).
//!
//! Exit status: 0 on success, 1 on a user error (bad config, unknown node), 2 on anything else.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use nakama_edge::exposed::ConfigSource;
use nakama_edge::exposed::{run, RunOptions};
use nakama_edge_config::{parse_duration, Config, ConfigError};

/// jemalloc, whose background thread gives freed memory back to the system: after a burst of
/// connections the resident size comes back down, where glibc's malloc kept what the burst
/// took (benches/memory-burst.sh).
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings (its `malloc_conf`, a C string, read at its first allocation): pages
/// freed for a second are given back at once with `MADV_DONTNEED` (`muzzy_decay_ms:0`), not
/// parked with `MADV_FREE`, which the kernel leaves counted in the resident size until it
/// runs short. Each thread keeps at least 64 freed objects of a size in its own cache
/// (`tcache_nslots_small_min:64`, jemalloc's default 20): hyper gives each HTTP/1.1 node
/// connection a fresh 8 KiB read buffer per answer while the answer's head still holds the old
/// one, and with 20 kept a worker thread under load refilled and flushed that cache from the
/// arenas all the time (3,800 of 31,000 instructions a keep-alive request, callgrind; 1,100
/// with 64). `_RJEM_MALLOC_CONF` in the environment still overrides. (Each worker thread also
/// flushes its own cache: `ops/allocator.rs`.)
#[cfg(target_os = "linux")]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
static malloc_conf: Option<&'static u8> = Some(
    &b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,tcache_nslots_small_min:64\0"[0],
);

#[derive(Parser)]
#[command(
    name = "nakama-edge",
    version,
    about = "The front door of a Nakama deployment"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve; without -c, the embedded development default.
    Run {
        /// The config file.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Take the listening sockets over from the running process (zero-downtime upgrade).
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a config file: every problem with its line and column.
    Check {
        /// The config file.
        #[arg(short, long)]
        config: PathBuf,
        /// Also look up each [[discover]] entry now and show the nodes it finds (exit 2 when a
        /// lookup fails).
        #[arg(long)]
        resolve: bool,
    },
    /// Drain a node: no new requests or WebSockets.
    Drain {
        /// The node's name.
        node: String,
        /// The admin API address.
        #[arg(long, default_value = "127.0.0.1:9180")]
        admin: String,
        /// Return only when no request or WebSocket to the node is left.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this long (exit 1).
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Ask a running edge whether it is ready (its admin /readyz): exit 0 if so, 1 if not or
    /// if it does not answer. For a container HEALTHCHECK, where no curl is at hand.
    Ready {
        /// Find the admin listener in this config file (an unspecified address is asked on
        /// loopback).
        #[arg(short, long, conflicts_with = "admin")]
        config: Option<PathBuf>,
        /// The admin API address, when no config is given.
        #[arg(long, default_value = "127.0.0.1:9180")]
        admin: String,
    },
    /// Put a drained node back.
    Undrain {
        /// The node's name.
        node: String,
        /// The admin API address.
        #[arg(long, default_value = "127.0.0.1:9180")]
        admin: String,
    },
}

/// A failure and the exit status it deserves.
enum Failure {
    User(String),
    Other(String),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(format!("{e:#}"))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match execute(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::User(msg)) => {
            eprintln!("{msg}");
            ExitCode::from(1)
        }
        Err(Failure::Other(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
    }
}

/// A config that cannot be read or is invalid is the operator's to fix: exit 1.
fn config_failure(e: ConfigError) -> Failure {
    Failure::User(e.to_string())
}

fn execute(command: Command) -> Result<(), Failure> {
    match command {
        Command::Run { config, upgrade } => {
            let (config, source) = match config {
                Some(path) => (
                    Config::load(&path).map_err(config_failure)?,
                    ConfigSource::File(path),
                ),
                None => (
                    Config::embedded_default().map_err(config_failure)?,
                    ConfigSource::Embedded,
                ),
            };
            nakama_edge::exposed::init_logging(&config.log);
            run(RunOptions {
                config,
                source,
                upgrade,
            })?;
            Ok(())
        }
        Command::Check { config, resolve } => {
            let config = Config::load(&config).map_err(config_failure)?;
            println!("{}", config.summary());
            if resolve && !config.discover.is_empty() {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Failure::Other(format!("cannot start the lookups: {e}")))?;
                let (lines, all_ok) = runtime.block_on(nakama_edge::exposed::describe(&config));
                for line in lines {
                    println!("{line}");
                }
                if !all_ok {
                    return Err(Failure::Other(
                        "a [[discover]] lookup failed (see above)".into(),
                    ));
                }
            }
            Ok(())
        }
        Command::Drain {
            node,
            admin,
            wait,
            timeout,
        } => {
            let shown = post_drain(&admin, &node, "drain")?;
            println!("{node}: draining ({shown})");
            if wait {
                wait_drained(&admin, &node, timeout)?;
            }
            Ok(())
        }
        Command::Ready { config, admin } => {
            let admin = match config {
                Some(path) => admin_of(&Config::load(&path).map_err(config_failure)?)?,
                None => admin,
            };
            // Whatever keeps the answer from being yes is "not ready" (exit 1), an unreachable
            // edge included: a health check knows no third state.
            match admin_request(&admin, "GET", "/readyz") {
                Ok((200, body)) => {
                    println!("{}", body.trim());
                    Ok(())
                }
                Ok((status, body)) => Err(Failure::User(format!(
                    "not ready ({status}): {}",
                    body.trim()
                ))),
                Err(Failure::User(msg) | Failure::Other(msg)) => {
                    Err(Failure::User(format!("not ready: {msg}")))
                }
            }
        }
        Command::Undrain { node, admin } => {
            let shown = post_drain(&admin, &node, "undrain")?;
            let by_config = serde_json::from_str::<serde_json::Value>(&shown)
                .ok()
                .and_then(|v| {
                    v["drained_by"]
                        .as_array()
                        .map(|by| by.iter().any(|b| b == "config"))
                })
                .unwrap_or(false);
            if by_config {
                println!(
                    "{node}: runtime drain lifted, but the node stays draining: `drain = true` \
                     in the config file drains it; remove that to undrain ({shown})"
                );
            } else {
                println!("{node}: undrained ({shown})");
            }
            Ok(())
        }
    }
}

/// Where a config's admin listener is asked from this host: its address, with an unspecified
/// IP (`0.0.0.0`, `::`) replaced by loopback of the same family.
fn admin_of(config: &Config) -> Result<String, Failure> {
    let mut addr = config
        .listeners
        .admin
        .ok_or_else(|| Failure::User("the config has no admin listener".into()))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok(addr.to_string())
}

/// A minimal HTTP/1.1 exchange with the admin API: (status, body).
fn admin_request(admin: &str, method: &str, path: &str) -> Result<(u16, String), Failure> {
    let addr: SocketAddr = admin
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| Failure::User(format!("--admin {admin:?} is not a host:port address")))?;
    let io = |e: std::io::Error| Failure::Other(format!("admin API at {addr}: {e}"));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(io)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").map_err(io)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(io)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            Failure::Other(format!(
                "admin API at {addr} answered something that is not HTTP"
            ))
        })?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

fn post_drain(admin: &str, node: &str, action: &str) -> Result<String, Failure> {
    // A discovered IPv6 node's name has brackets, which a request path cannot carry as they are.
    let path = node
        .replace('%', "%25")
        .replace('[', "%5B")
        .replace(']', "%5D");
    match admin_request(admin, "POST", &format!("/nodes/{path}/{action}"))? {
        (200, body) => Ok(body.trim().to_string()),
        (404, _) => Err(Failure::User(format!("unknown node {node:?}"))),
        (status, body) => Err(Failure::Other(format!(
            "admin API answered {status}: {}",
            body.trim()
        ))),
    }
}

fn wait_drained(admin: &str, node: &str, timeout: Duration) -> Result<(), Failure> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        let (status, body) = admin_request(admin, "GET", "/nodes")?;
        if status != 200 {
            return Err(Failure::Other(format!(
                "admin API answered {status} to GET /nodes"
            )));
        }
        let nodes: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| Failure::Other(format!("GET /nodes: {e}")))?;
        let entry = nodes
            .as_array()
            .and_then(|a| a.iter().find(|n| n["name"] == node))
            .ok_or_else(|| Failure::User(format!("unknown node {node:?}")))?;
        let counts = (
            entry["http_in_flight"].as_i64().unwrap_or(0),
            entry["websockets"].as_i64().unwrap_or(0),
        );
        if last != Some(counts) {
            println!(
                "{node}: {} request(s), {} WebSocket(s) left",
                counts.0, counts.1
            );
            last = Some(counts);
        }
        if counts == (0, 0) {
            println!("{node}: drained");
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Failure::User(format!(
                "{node}: still busy after {timeout:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

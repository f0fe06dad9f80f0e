//! Wiring: the pingora server, its listeners, and the background tasks.
//!
//! A start (cold, restart or `--upgrade`) goes in this order, so that the first player
//! connection is routed as well as any later one:
//!
//! 1. config, certificate, runtime drains from `server.state_dir` (restored);
//! 2. one round of health checks of every node, in parallel, bounded by `health_check.timeout`;
//! 3. the listening sockets: bound, or with `--upgrade` taken over from the running process,
//!    which serves until then;
//! 4. runtime drains read again (the old process may have changed them meanwhile), then
//!    every service starts; `/readyz` and systemd's `READY=1` follow once the listeners are up.
//!
//! ```text
//!   Server (pingora: signals, graceful shutdown and upgrade)
//!    ├─ https  : TCP ─► accept::Entry (firewall, TLS) ─► http (hyper: HTTP/1.1, HTTP/2)
//!    ├─ http   : TCP ─► accept::Entry (firewall)      ─► http (redirect / ACME)
//!    ├─ console: TCP ─► accept::Entry (console_allow, TLS) ─► http (nodes' consoles)
//!    ├─ admin  : AdminApi
//!    └─ background: HealthChecker, Discovery, Reloader, DrainsWatch, Readiness, AcmeService (with [acme]),
//!                   ClusterSync (with [cluster]); on shutdown GracefulClose (WebSockets' close
//!                   frames) and ExitWhenIdle (leaves with the last client connection)
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use async_trait::async_trait;
use nakama_edge_certs::acme::{load_stored, AcmeSettings, Challenge};
use nakama_edge_certs::store::CertStore;
use nakama_edge_certs::{install_crypto_provider, CertifiedKey};
use nakama_edge_config::{AcmeChallenge, CertificateSource, Config};
use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{Server, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service;

use crate::http::route::Listener;
use crate::listen::accept::{Entry, PeerFilter};
use crate::nodes::drains::Drains;
use crate::nodes::health_check::HealthChecker;
use crate::ops::admin::{AdminApi, AdminFilter};
use crate::ops::reload::Reloader;
use crate::state::{ConfigSource, Shared};
use crate::tasks::acme::{AcmeTask, Served};
use crate::tasks::cluster_sync::ClusterSync;
use crate::tasks::discovery::Discovery;
use crate::tasks::drains_watch::DrainsWatch;
use crate::tasks::graceful_close::GracefulClose;
use crate::tasks::limits_purge::PurgeTask;

/// How to start.
pub struct RunOptions {
    /// The config to serve and where it came from.
    pub config: Config,
    /// Where the config came from.
    pub source: ConfigSource,
    /// Take the listening sockets over from a running process.
    pub upgrade: bool,
}

/// What the https listener serves first, and the ACME task when certificates come from ACME.
struct Initial {
    certificate: Arc<CertifiedKey>,
    /// `false`: a placeholder until ACME issuance completes.
    ready: bool,
    acme: Option<AcmeTask>,
}

fn initial_certificate(config: &Config) -> anyhow::Result<Initial> {
    let fixed = |certificate| Initial {
        certificate,
        ready: true,
        acme: None,
    };
    let acme = match &config.certificates {
        CertificateSource::Files { cert, key } => {
            return Ok(fixed(nakama_edge_certs::from_pem_files(cert, key)?))
        }
        CertificateSource::SelfSigned => {
            tracing::warn!(
                "no [tls] or [acme] in the config: serving a self-signed certificate for localhost (development only)"
            );
            return Ok(fixed(nakama_edge_certs::self_signed(&[
                "localhost",
                "127.0.0.1",
                "::1",
            ])?));
        }
        CertificateSource::Acme(acme) => acme,
    };
    let settings = AcmeSettings {
        domains: acme.domains.clone(),
        directory: acme.directory.clone(),
        contact: acme.contact.clone(),
        challenge: match acme.challenge {
            AcmeChallenge::Http01 => Challenge::Http01,
            AcmeChallenge::TlsAlpn01 => Challenge::TlsAlpn01,
        },
        directory_ca: acme.directory_ca.clone(),
    };
    let store = CertStore::open(&acme.state_dir)?;
    let stored = match store.certificate(&acme.domains)?.map(load_stored) {
        Some(Ok(issued))
            if issued.info.covers(&acme.domains) && issued.info.valid_at(SystemTime::now()) =>
        {
            tracing::info!(domains = ?acme.domains, expires = ?issued.info.not_after, "serving the stored certificate");
            Some(issued)
        }
        Some(Ok(issued)) => {
            tracing::warn!(domains = ?acme.domains, expires = ?issued.info.not_after, "the stored certificate is expired or incomplete; ordering a new one");
            None
        }
        Some(Err(e)) => {
            tracing::warn!(error = %e, "the stored certificate is unusable; ordering a new one");
            None
        }
        None => None,
    };
    let (certificate, served) = match stored {
        Some(issued) => (issued.certified.clone(), Served::of(&issued)),
        None => {
            tracing::warn!(
                domains = ?acme.domains,
                challenge = settings.challenge.as_str(),
                "no certificate yet: serving a self-signed placeholder until ACME issuance completes; /readyz answers 503 meanwhile"
            );
            let names: Vec<&str> = acme.domains.iter().map(String::as_str).collect();
            (nakama_edge_certs::self_signed(&names)?, None)
        }
    };
    Ok(Initial {
        certificate,
        ready: served.is_some(),
        acme: Some(AcmeTask::new(settings, store, acme.retry_backoff, served)),
    })
}

/// Serve until told to stop. Never returns on success (pingora exits the process).
pub fn run(options: RunOptions) -> anyhow::Result<()> {
    install_crypto_provider();
    let RunOptions {
        config,
        source,
        upgrade,
    } = options;
    let initial = initial_certificate(&config)?;
    let drains = open_drains(&config.server, &source)?;

    let grace = config.server.grace_period.as_secs();
    let conf = ServerConf {
        threads: config.server.threads,
        grace_period_seconds: Some(grace),
        graceful_shutdown_timeout_seconds: Some(grace.max(1)),
        upgrade_sock: upgrade_socket(&config.server, &source)
            .to_string_lossy()
            .into_owned(),
        work_stealing: false,
        ..Default::default()
    };
    let opt = Opt {
        upgrade,
        ..Default::default()
    };
    let listeners = config.listeners.clone();
    let shared = Arc::new(Shared::new(
        config,
        source,
        initial.certificate,
        initial.ready,
        drains,
    )?);
    if shared.snapshot().verifier.is_none() {
        let why = "no [nakama] session_key: request budgets are per client address, so players behind one address (mobile CGNAT, a venue) share one; set it to Nakama's session.encryption_key to give each player their own";
        match &shared.source {
            ConfigSource::Embedded => tracing::info!("{why}"),
            ConfigSource::File(_) => tracing::warn!("{why}"),
        }
    }
    first_health_checks(&shared)?;

    // With --upgrade, this waits for the running process to hand its sockets over.
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    if let Err(e) = shared.reload_drains() {
        tracing::error!("{e}: runtime drains could not be read again; fix or remove the file");
    }

    let tls = Arc::new(nakama_edge_certs::server_config(shared.certs.clone())?);
    for (listener, addr) in [
        (Listener::Https, listeners.https),
        (Listener::Http, listeners.http),
        (Listener::Console, listeners.console),
    ] {
        let Some(addr) = addr else { continue };
        let acceptor = (listener != Listener::Http).then(|| tls.clone());
        let entry = Entry::new(shared.clone(), listener, acceptor);
        let mut service = Service::new(listener.name().to_string(), entry);
        service.set_connection_filter(Arc::new(PeerFilter::new(shared.clone(), listener)));
        if listener != Listener::Https {
            service.threads = Some(1);
        }
        service
            .add_listener(ListenerConfig::tcp(addr.to_string()).l4_buffer(PLAYER_SOCKET_BUFFERS));
        server.add_service(service);
    }
    if let Some(addr) = listeners.admin {
        let mut service = Service::new("admin".to_string(), AdminApi::new(shared.clone()));
        service.set_connection_filter(Arc::new(AdminFilter::new(shared.clone())));
        service.threads = Some(1);
        service.add_tcp(&addr.to_string());
        server.add_service(service);
    }
    server.add_service(background_service(
        "limits purge",
        PurgeTask::new(shared.clone()),
    ));
    server.add_service(background_service(
        "websocket close",
        GracefulClose::new(shared.clone()),
    ));
    server.add_service(background_service(
        "exit when idle",
        ExitWhenIdle {
            shared: shared.clone(),
        },
    ));
    server.add_service(background_service(
        "health checks",
        HealthChecker::new(shared.clone()),
    ));
    server.add_service(background_service(
        "discovery",
        Discovery::new(shared.clone()),
    ));
    server.add_service(background_service(
        "config reload",
        Reloader::new(shared.clone()),
    ));
    server.add_service(background_service(
        "drains watch",
        DrainsWatch::new(shared.clone()),
    ));
    if let Some(link) = shared.cluster.clone() {
        tracing::info!(edge = %link.name, "[cluster]: sharing certificates, challenges, drains and counts through the cluster database");
        server.add_service(background_service(
            "cluster sync",
            ClusterSync::new(shared.clone(), link),
        ));
    }
    if let Some(task) = initial.acme {
        server.add_service(background_service("acme", task.start_with(shared.clone())));
    }
    let addresses = [
        listeners.https,
        listeners.http,
        listeners.admin,
        listeners.console,
    ];
    server.add_service(background_service(
        "readiness",
        Readiness {
            shared,
            addresses: addresses.into_iter().flatten().collect(),
        },
    ));
    tracing::info!(https = ?listeners.https, http = ?listeners.http, admin = ?listeners.admin, "nakama-edge starting");
    server.run_forever()
}

/// `server.state_dir`, or, unset, the state directory systemd gives the unit.
fn state_dir(server: &nakama_edge_config::Server) -> Option<PathBuf> {
    let systemd = || {
        let dirs = std::env::var_os("STATE_DIRECTORY")?;
        let first = dirs.to_str()?.split(':').next()?.to_string();
        (!first.is_empty()).then(|| PathBuf::from(first))
    };
    server.state_dir.clone().or_else(systemd)
}

/// The longest path a Unix socket's address holds (`sun_path`, less its final NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Where `run --upgrade` finds the running process: `server.upgrade_socket`, else a path of
/// this instance's own, so that one edge's upgrade never takes another's listeners on a
/// shared host: `upgrade.sock` in the state directory, else in the temporary directory, named
/// by a hash of the config file's path (or of the state directory, when its own path is too
/// long for a socket).
pub fn upgrade_socket(server: &nakama_edge_config::Server, source: &ConfigSource) -> PathBuf {
    if let Some(set) = &server.upgrade_socket {
        return set.clone();
    }
    let identity = match (state_dir(server), source) {
        (Some(dir), _) => {
            let in_state = dir.join("upgrade.sock");
            if in_state.as_os_str().len() <= MAX_SOCKET_PATH {
                return in_state;
            }
            std::fs::canonicalize(&dir).unwrap_or(dir)
        }
        (None, ConfigSource::File(path)) => {
            std::fs::canonicalize(path).unwrap_or_else(|_| path.clone())
        }
        (None, ConfigSource::Embedded) => PathBuf::from("embedded"),
    };
    std::env::temp_dir().join(format!(
        "nakama-edge-upgrade-{:016x}.sock",
        fnv1a(identity.as_os_str().as_encoded_bytes())
    ))
}

/// FNV-1a, 64 bits: a name stable across builds and versions (an upgrade's new binary must
/// find the path the old one chose).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The runtime drains: kept in the state directory ([`state_dir`]), restored now; in memory
/// only without one.
fn open_drains(
    server: &nakama_edge_config::Server,
    source: &ConfigSource,
) -> anyhow::Result<Drains> {
    let Some(dir) = state_dir(server) else {
        let why = "server.state_dir is not set: nodes drained through the admin API stay drained only until this process exits (a restart or an upgrade forgets them)";
        match source {
            ConfigSource::Embedded => tracing::info!("{why}"),
            ConfigSource::File(_) => tracing::warn!("{why}"),
        }
        return Ok(Drains::in_memory());
    };
    let drains = Drains::open(&dir).context("server.state_dir cannot be used")?;
    match drains.reload() {
        Ok(_) => {
            tracing::info!(state_dir = %dir.display(), drained = ?drains.drained(), "runtime drains restored")
        }
        Err(e) => {
            tracing::error!("{e}: runtime drains are not restored; fix or remove the file")
        }
    }
    if let Err(e) = drains.watch() {
        tracing::warn!("{e}: drains changed by another process of this edge are not seen");
    }
    Ok(drains)
}

/// Check every node once before serving, so that the first player is routed (and, during an
/// upgrade, the old process keeps serving meanwhile).
fn first_health_checks(shared: &Shared) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the first health checks")?;
    if !shared.snapshot().config.discover.is_empty() {
        let found = runtime.block_on(crate::tasks::discovery::first_round(shared));
        tracing::info!(found, "first lookups of [[discover]] entries done");
    }
    let (healthy, nodes) = runtime.block_on(crate::nodes::health_check::first_round(shared));
    if healthy == 0 && nodes > 0 {
        tracing::warn!(
            nodes,
            "no node passed its first health check: players get 503 until one does"
        );
    } else {
        tracing::info!(healthy, nodes, "first health checks done");
    }
    Ok(())
}

/// User-space buffers under the TLS and HTTP layers of a player connection: none for reads,
/// one segment for writes.
///
/// Pingora's default is a 64 KiB read buffer per connection, allocated zeroed for the whole
/// life of the connection: most of an idle WebSocket's memory. Without it, rustls reads
/// straight from the socket into its own record buffer and HTTP/1 reads straight into the
/// header buffer, so a request costs the same number of reads; an idle connection holds none.
const PLAYER_SOCKET_BUFFERS: L4BufferSettings = L4BufferSettings {
    read: Some(0),
    write: Some(0),
};

/// Marks the listeners bound once the kernel shows each one listening. (Pingora binds inside
/// each service, after it reports ready; connecting to find out would count as traffic.)
struct Readiness {
    shared: Arc<Shared>,
    addresses: Vec<SocketAddr>,
}

#[async_trait]
impl BackgroundService for Readiness {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while !self.addresses.iter().all(|a| is_listening(*a)) {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = shutdown.changed() => return,
            }
        }
        self.shared.listeners_bound.store(true, Ordering::Relaxed);
        tracing::info!("listeners bound");
        // After an upgrade this process replaces the old main process (NotifyAccess=all).
        notify_systemd(&format!("MAINPID={}\nREADY=1", std::process::id()));
    }
}

/// Ends a shutting-down process (SIGTERM, or the old process of an upgrade once it has handed
/// its sockets over) as soon as no client connection is left. Pingora otherwise sleeps out the
/// whole `server.grace_period` whatever is left, so `systemctl restart` of a quiet edge kept
/// its port closed for 30 s and an upgrade's old process lingered as long. Nothing is cut
/// sooner than before: WebSockets still get their close frames spread over the second half
/// of the grace period, idle keep-alive connections are closed halfway through, in-flight
/// requests finish; the process just leaves with its last connection (and, with `[cluster]`,
/// once it has said farewell to the database).
struct ExitWhenIdle {
    shared: Arc<Shared>,
}

/// How often a shutting-down process looks at its connection count.
const IDLE_POLL: Duration = Duration::from_millis(100);

#[async_trait]
impl BackgroundService for ExitWhenIdle {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        let since = std::time::Instant::now();
        // Zero at two looks in a row: a connection the listener accepted just before it
        // stopped is counted within a task spawn, far less than one poll.
        let mut idle_looks = 0;
        while idle_looks < 2 {
            tokio::time::sleep(IDLE_POLL).await;
            idle_looks = if self.shared.metrics.client_connections() == 0 {
                idle_looks + 1
            } else {
                0
            };
        }
        // The other edges are told this one has gone, rather than left to find out when its
        // heartbeat expires (the farewell is bounded by the database timeout).
        if let Some(link) = &self.shared.cluster {
            link.left.notified().await;
        }
        tracing::info!(
            after_ms = since.elapsed().as_millis() as u64,
            "shutting down: no client connection left, exiting"
        );
        // What pingora's run_forever does at the end of the grace period (queued access-log
        // lines are written by their atexit hook).
        std::process::exit(0)
    }
}

/// Tell systemd (`Type=notify`) how the service is doing, when it runs us under a
/// `NOTIFY_SOCKET` (a path, or an abstract name starting with `@`).
fn notify_systemd(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let target = target.as_bytes().to_vec();
    let sent = UnixDatagram::unbound().and_then(|socket| {
        let addr = match target.strip_prefix(b"@") {
            Some(name) => UnixAddr::from_abstract_name(name)?,
            None => {
                UnixAddr::from_pathname(std::path::Path::new(std::ffi::OsStr::from_bytes(&target)))?
            }
        };
        socket.send_to_addr(state.as_bytes(), &addr)
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Whether a socket listens on `addr` (Linux: `/proc/net/tcp` and `tcp6`, state 0A).
fn is_listening(addr: SocketAddr) -> bool {
    let (file, width) = match addr {
        SocketAddr::V4(_) => ("/proc/net/tcp", 8),
        SocketAddr::V6(_) => ("/proc/net/tcp6", 32),
    };
    let Ok(table) = std::fs::read_to_string(file) else {
        return false;
    };
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        let (Some(local), Some(_remote), Some(state)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return false;
        };
        let Some((ip_hex, port_hex)) = local.split_once(':') else {
            return false;
        };
        state == "0A"
            && ip_hex.len() == width
            && u16::from_str_radix(port_hex, 16).ok() == Some(addr.port())
            && {
                // The kernel prints each 32-bit word of the address in host order.
                let octets: Vec<u8> = (0..width / 8)
                    .filter_map(|w| u32::from_str_radix(&ip_hex[w * 8..w * 8 + 8], 16).ok())
                    .flat_map(u32::to_ne_bytes)
                    .collect();
                match addr {
                    SocketAddr::V4(a) => octets.as_slice() == a.ip().octets(),
                    SocketAddr::V6(a) => octets.as_slice() == a.ip().octets(),
                }
            }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(toml: &str) -> nakama_edge_config::Server {
        Config::parse(toml, "t").unwrap().server
    }

    #[test]
    fn each_instance_has_its_own_upgrade_socket_by_default() {
        let file = |p: &str| ConfigSource::File(PathBuf::from(p));
        let plain = server("");
        // Two config files on one host: two sockets; the same file (an upgrade): one.
        let a = upgrade_socket(&plain, &file("/etc/nakama-edge/a.toml"));
        let b = upgrade_socket(&plain, &file("/etc/nakama-edge/b.toml"));
        assert_ne!(a, b);
        assert_eq!(a, upgrade_socket(&plain, &file("/etc/nakama-edge/a.toml")));
        assert!(a.starts_with(std::env::temp_dir()), "{}", a.display());
        // A state directory holds it, whatever the config file.
        let with_state = server("[server]\nstate_dir = \"/var/lib/edge-1\"\n");
        assert_eq!(
            upgrade_socket(&with_state, &file("/etc/a.toml")),
            PathBuf::from("/var/lib/edge-1/upgrade.sock")
        );
        // Too long a state directory for a socket's path: a hash of it, in /tmp.
        let long = format!("/var/lib/{}", "d".repeat(120));
        let with_long = server(&format!("[server]\nstate_dir = \"{long}\"\n"));
        let hashed = upgrade_socket(&with_long, &file("/etc/a.toml"));
        assert!(hashed.as_os_str().len() <= MAX_SOCKET_PATH);
        assert_ne!(hashed, a);
        // Set: as set.
        let set = server("[server]\nupgrade_socket = \"/run/e/u.sock\"\n");
        assert_eq!(
            upgrade_socket(&set, &file("/etc/a.toml")),
            PathBuf::from("/run/e/u.sock")
        );
    }

    #[test]
    fn sees_a_listening_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(is_listening(addr));
        drop(listener);
        assert!(!is_listening(addr));
        let v6 = std::net::TcpListener::bind("[::1]:0").unwrap();
        assert!(is_listening(v6.local_addr().unwrap()));
    }
}

//! Wiring: the pingora server, its listeners, and the background tasks.
//!
//! ```text
//!   Server (pingora: signals, graceful shutdown and upgrade)
//!    ├─ https  : TCP ─► accept::Entry (firewall, TLS) ─► HttpProxy<Edge>
//!    ├─ http   : TCP ─► accept::Entry (firewall)      ─► HttpProxy<Edge> (redirect / ACME)
//!    ├─ admin  : AdminApi
//!    └─ background: HealthChecker, Reloader, Readiness
//! ```

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use nakama_edge_certs::{install_crypto_provider, CertifiedKey};
use nakama_edge_config::{CertificateSource, Config};
use pingora_core::listeners::tls::Acceptor;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{Server, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service;
use pingora_proxy::http_proxy;

use crate::accept::Entry;
use crate::admin::AdminApi;
use crate::health_check::HealthChecker;
use crate::proxy::Edge;
use crate::reload::Reloader;
use crate::route::Listener;
use crate::state::{ConfigSource, Shared};

/// How to start.
pub struct RunOptions {
    /// The config to serve and where it came from.
    pub config: Config,
    /// Where the config came from.
    pub source: ConfigSource,
    /// Take the listening sockets over from a running process.
    pub upgrade: bool,
}

fn initial_certificate(config: &Config) -> anyhow::Result<Arc<CertifiedKey>> {
    match &config.certificates {
        CertificateSource::Files { cert, key } => Ok(nakama_edge_certs::from_pem_files(cert, key)?),
        CertificateSource::SelfSigned => {
            tracing::warn!(
                "no [tls] or [acme] in the config: serving a self-signed certificate for localhost (development only)"
            );
            Ok(nakama_edge_certs::self_signed(&[
                "localhost",
                "127.0.0.1",
                "::1",
            ])?)
        }
        CertificateSource::Acme(_) => {
            anyhow::bail!(
                "[acme] is not supported by this build yet: use [tls] with certificate files"
            )
        }
    }
}

/// Serve until told to stop. Never returns on success (pingora exits the process).
pub fn run(options: RunOptions) -> anyhow::Result<()> {
    install_crypto_provider();
    let RunOptions {
        config,
        source,
        upgrade,
    } = options;
    let certificate = initial_certificate(&config)?;

    let grace = config.server.grace_period.as_secs();
    let conf = ServerConf {
        threads: config.server.threads,
        grace_period_seconds: Some(grace),
        graceful_shutdown_timeout_seconds: Some(grace.max(1)),
        ..Default::default()
    };
    let opt = Opt {
        upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    let server_conf = server.configuration.clone();

    let listeners = config.listeners.clone();
    let shared =
        Arc::new(Shared::new(config, source, certificate).context("cannot register metrics")?);

    if let Some(addr) = listeners.https {
        let tls = nakama_edge_certs::server_config(shared.certs.clone())?;
        let acceptor = Acceptor::from_server_config(Arc::new(tls));
        let edge = http_proxy(&server_conf, Edge::new(shared.clone(), Listener::Https));
        let mut service = Service::new(
            "https".to_string(),
            Entry::new(shared.clone(), Some(acceptor), edge),
        );
        service.add_tcp(&addr.to_string());
        server.add_service(service);
    }
    if let Some(addr) = listeners.http {
        let edge = http_proxy(&server_conf, Edge::new(shared.clone(), Listener::Http));
        let mut service = Service::new("http".to_string(), Entry::new(shared.clone(), None, edge));
        service.threads = Some(1);
        service.add_tcp(&addr.to_string());
        server.add_service(service);
    }
    if let Some(addr) = listeners.admin {
        let mut service = Service::new("admin".to_string(), AdminApi::new(shared.clone()));
        service.threads = Some(1);
        service.add_tcp(&addr.to_string());
        server.add_service(service);
    }
    server.add_service(background_service(
        "health checks",
        HealthChecker::new(shared.clone()),
    ));
    server.add_service(background_service(
        "config reload",
        Reloader::new(shared.clone()),
    ));
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

/// Marks the listeners bound once each one accepts a connection.
struct Readiness {
    shared: Arc<Shared>,
    addresses: Vec<SocketAddr>,
}

#[async_trait]
impl BackgroundService for Readiness {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        for addr in &self.addresses {
            let mut target = *addr;
            if target.ip().is_unspecified() {
                target.set_ip(if target.is_ipv4() {
                    [127, 0, 0, 1].into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                });
            }
            loop {
                if tokio::net::TcpStream::connect(target).await.is_ok() {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
        self.shared.listeners_bound.store(true, Ordering::Relaxed);
        tracing::info!("listeners bound");
    }
}

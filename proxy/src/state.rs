//! The one config snapshot every request reads, and how a new one replaces it.
//!
//! ```text
//!   file change / SIGHUP ──► Shared::reload ──► Config::load ──► certificates re-read
//!                                   │ all good                      │ any error
//!                                   ▼                               ▼
//!                         ArcSwap<Snapshot>.store(new)      old snapshot keeps serving,
//!                                   │                        error logged and counted
//!                                   ▼
//!   every request: Shared::snapshot() (one atomic load) ──► config, pool, firewall
//!
//!   discovery (nodes found in DNS changed) ──► Shared::rebuild_pool ──► same config, new pool
//! ```
//!
//! A snapshot's pool holds the config's `[[nodes]]` and the nodes its `[[discover]]` entries
//! found ([`crate::nodes::discovery`]); every new snapshot forgets the metrics of nodes it no longer
//! has, and wakes whoever watches the pool (`pool_changed`: health checks, discovery).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use nakama_edge_certs::{CertError, CertResolver, CertifiedKey};
use nakama_edge_config::{CertificateSource, Config, ConfigError, RoutingMode};
use tokio::sync::Notify;

use crate::limits::{Limits, OpenConnections};
use crate::listen::firewall::Firewall;
use crate::nodes::discovery::Discovered;
use crate::nodes::drains::{Drains, DrainsError};
use crate::nodes::pool::{Member, Pool, Registry};
use crate::nodes::shards::Shards;
use crate::ops::metrics::Metrics;

/// Everything a request needs from the config, built once per config version.
pub struct Snapshot {
    /// The validated config.
    pub config: Config,
    /// Nodes and routing tables.
    pub pool: Pool,
    /// The compiled firewall.
    pub firewall: Firewall,
    /// Per-client limits; kept from the previous snapshot while `[rate_limit]` is unchanged,
    /// so a reload does not hand every client a fresh budget.
    pub limits: Arc<Limits>,
    /// What decides routing, digested: edges that agree on it route a user alike.
    pub routing_digest: String,
    /// Verifies session tokens (`[nakama] session_key`); `None`: players are told apart by
    /// address only.
    pub verifier: Option<crate::limits::token::Verifier>,
    /// The shards over the pool's nodes (`routing.mode = "shards"`); `None` in cluster mode.
    pub shards: Option<Shards>,
}

impl Snapshot {
    fn build(
        config: Config,
        members: &[Member],
        registry: &Registry,
        previous: Option<&Snapshot>,
        open: &Arc<OpenConnections>,
        drains: &Drains,
        metrics: &Metrics,
    ) -> Snapshot {
        let pool = Pool::build(members, registry, drains);
        let shards = (config.routing.mode == RoutingMode::Shards)
            .then(|| Shards::build(&config, &pool, |name| metrics.shard_series(name)));
        let firewall = Firewall::new(&config.firewall);
        let limits = match previous {
            Some(p) if *p.limits.config() == config.rate_limit => p.limits.clone(),
            _ => Arc::new(Limits::new(&config.rate_limit, open.clone())),
        };
        Snapshot {
            routing_digest: crate::cluster::routing_digest(&config, members),
            verifier: crate::limits::token::Verifier::new(
                config.nakama.session_keys.iter().map(|k| k.expose()),
            ),
            config,
            pool,
            firewall,
            limits,
            shards,
        }
    }

    /// The names of the shards, if any.
    fn shard_names(&self) -> impl Iterator<Item = &str> {
        self.shards.iter().flat_map(|s| s.iter().map(|s| &*s.name))
    }
}

/// Where the config comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// `nakama-edge run` without `-c`.
    Embedded,
    /// A file, watched for changes.
    File(PathBuf),
}

/// Why a reload was refused; the previous config keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The certificate files named by the config could not be used.
    #[error(transparent)]
    Certificate(#[from] CertError),
    /// Nothing to reload from.
    #[error("the embedded config cannot be reloaded")]
    Embedded,
}

/// State shared by every listener, the admin API and the background tasks.
pub struct Shared {
    current: ArcSwap<Snapshot>,
    registry: Registry,
    open: Arc<OpenConnections>,
    /// The process's metrics.
    pub metrics: Metrics,
    /// The https listener's certificates.
    pub certs: Arc<CertResolver>,
    /// Where the config comes from.
    pub source: ConfigSource,
    reload_lock: Mutex<()>,
    /// Set once every listener accepts connections.
    pub listeners_bound: AtomicBool,
    /// Set once the https listener serves its real certificate (not an ACME placeholder).
    pub certificate_ready: AtomicBool,
    /// Set when a shutdown or an upgrade's hand-over begins: every HTTP/1.1 response from then
    /// on closes its connection, so that the client's next request opens a new one (to the new
    /// process, after an upgrade).
    pub shutting_down: AtomicBool,
    /// Notified after each new snapshot: a reload, or a change in the nodes found in DNS.
    pub pool_changed: Notify,
    /// The nodes `[[discover]]` entries found, merged into every snapshot's pool.
    pub discovered: Discovered,
    /// Every open WebSocket, to close with a close frame on shutdown.
    pub websockets: crate::http::ws_close::OpenWebSockets,
    /// Nodes drained at runtime (admin API, CLI), kept in `server.state_dir`.
    pub drains: Drains,
    /// How many failed requests may still be retried on another node.
    pub retry_budget: crate::nodes::retry_budget::RetryBudget,
    /// This edge's link to the others (`[cluster]`).
    pub cluster: Option<Arc<crate::cluster::ClusterLink>>,
}

/// Why the shared state could not be made.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The metrics could not be registered.
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] std::io::Error),
    /// `[cluster]` cannot be used.
    #[error(transparent)]
    Cluster(#[from] nakama_edge_cluster::ClusterError),
}

/// Why a drain could not be set; nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// The cluster database is unreachable: applying it here alone would split the edges.
    #[error("the cluster database is unreachable, so the drain was applied nowhere (retry once it is back): {0}")]
    Cluster(#[from] nakama_edge_cluster::ClusterError),
    /// `server.state_dir` could not be written.
    #[error(transparent)]
    State(#[from] DrainsError),
}

impl Shared {
    /// Shared state serving `config`, with `initial` as the https certificate (`certificate_ready`:
    /// it is not a placeholder awaiting ACME) and the runtime drains in `drains`.
    pub fn new(
        config: Config,
        source: ConfigSource,
        initial: Arc<CertifiedKey>,
        certificate_ready: bool,
        drains: Drains,
    ) -> Result<Shared, StartError> {
        let metrics = Metrics::new()?;
        let cluster = match &config.cluster {
            Some(c) => Some(Arc::new(crate::cluster::ClusterLink::new(
                c,
                metrics.cluster_gauges()?,
            )?)),
            None => None,
        };
        let registry = Registry::default();
        let open = Arc::new(OpenConnections::default());
        let snapshot = Snapshot::build(
            config.clone(),
            &Member::configured(&config),
            &registry,
            None,
            &open,
            &drains,
            &metrics,
        );
        Ok(Shared {
            current: ArcSwap::from_pointee(snapshot),
            registry,
            open,
            metrics,
            certs: Arc::new(CertResolver::new(initial)),
            source,
            reload_lock: Mutex::new(()),
            listeners_bound: AtomicBool::new(false),
            certificate_ready: AtomicBool::new(certificate_ready),
            shutting_down: AtomicBool::new(false),
            pool_changed: Notify::new(),
            discovered: Discovered::default(),
            websockets: Default::default(),
            drains,
            retry_budget: Default::default(),
            cluster,
        })
    }

    /// Drain or undrain the node `name` at runtime: saved first (in the cluster database with
    /// `[cluster]`, whence every edge applies it; and in `server.state_dir`, see
    /// [`crate::nodes::drains`]), then applied. `Ok(None)`: no such node.
    pub async fn set_drain(&self, name: &str, drain: bool) -> Result<Option<()>, DrainError> {
        let snapshot = self.snapshot();
        let Some(node) = snapshot.pool.by_name(name) else {
            return Ok(None);
        };
        if let Some(link) = &self.cluster {
            link.db.set_drain(name, drain, &link.name).await?;
        }
        self.drains.set(name, drain)?;
        node.runtime.set_runtime_drain(drain);
        Ok(Some(()))
    }

    /// The cluster's drains, as the database has them now: kept locally and applied.
    pub fn apply_cluster_drains(&self, drained: std::collections::BTreeSet<String>) {
        match self.drains.replace(drained) {
            Ok(true) => {
                tracing::info!(drained = ?self.drains.drained(), "runtime drains changed in the cluster")
            }
            Ok(false) => {}
            Err(e) => tracing::warn!("{e}: the cluster's drains apply but are not saved locally"),
        }
        self.snapshot().pool.apply_drains(&self.drains);
    }

    /// Re-read the runtime drains (another process of this edge changed them) and apply them.
    pub fn reload_drains(&self) -> Result<(), DrainsError> {
        if self.drains.reload()? {
            tracing::info!(drained = ?self.drains.drained(), "runtime drains changed on disk");
        }
        self.snapshot().pool.apply_drains(&self.drains);
        Ok(())
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Why the edge cannot serve players yet, or `None` when it can.
    pub fn not_ready(&self) -> Option<&'static str> {
        if !self.listeners_bound.load(Ordering::Relaxed) {
            Some("listeners not bound yet")
        } else if !self.certificate_ready.load(Ordering::Relaxed) {
            Some("certificate pending: ACME issuance has not completed")
        } else if !self.current.load().pool.any_routable() {
            Some("no routable node")
        } else {
            None
        }
    }

    /// Facts of the served certificate, unless it is a placeholder.
    pub fn served_certificate(&self) -> Option<nakama_edge_certs::info::CertInfo> {
        if !self.certificate_ready.load(Ordering::Relaxed) {
            return None;
        }
        let current = self.certs.current();
        nakama_edge_certs::info::CertInfo::of(current.cert.first()?).ok()
    }

    /// Re-read the config file (and the certificate files it names) and, if everything is
    /// valid, make it the current snapshot. On error nothing changes.
    pub fn reload(&self) -> Result<(), ReloadError> {
        let _one_at_a_time = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let result = self.try_reload();
        self.metrics.config_reload(result.is_ok());
        match &result {
            Ok(()) => tracing::info!("config reloaded"),
            Err(e) => {
                tracing::error!("config reload rejected, the previous config keeps serving:\n{e}")
            }
        }
        result
    }

    fn try_reload(&self) -> Result<(), ReloadError> {
        let ConfigSource::File(path) = &self.source else {
            return Err(ReloadError::Embedded);
        };
        let mut config = Config::load(path)?;
        let old = self.snapshot();
        if config.listeners.addresses() != old.config.listeners.addresses() {
            tracing::warn!(
                "listener addresses changed in {}: this takes a restart or `nakama-edge run --upgrade`; \
                 the old addresses keep serving",
                path.display()
            );
            let http_redirect = config.listeners.http_redirect;
            config.listeners = old.config.listeners.clone();
            config.listeners.http_redirect = http_redirect;
        }
        if config.cluster != old.config.cluster {
            tracing::warn!(
                "[cluster] settings changed: they take effect at the next restart or upgrade"
            );
            config.cluster = old.config.cluster.clone();
        }
        if config.server != old.config.server {
            tracing::warn!(
                "[server] settings changed: they take effect at the next restart or upgrade"
            );
            config.server = old.config.server.clone();
        }
        let acme_involved = [&config, &old.config]
            .iter()
            .any(|c| matches!(c.certificates, CertificateSource::Acme(_)));
        if acme_involved && config.certificates != old.config.certificates {
            tracing::warn!(
                "[acme] changed (or [tls] and [acme] swapped): this takes a restart or upgrade"
            );
            config.certificates = old.config.certificates.clone();
        }
        match &config.certificates {
            CertificateSource::Files { cert, key } => {
                let next = nakama_edge_certs::from_pem_files(cert, key)?;
                if next.cert != self.certs.current().cert {
                    tracing::info!(cert = %cert.display(), "serving a new certificate");
                }
                self.certs.replace(next);
            }
            CertificateSource::SelfSigned | CertificateSource::Acme(_) => {}
        }
        crate::ops::logging::apply(&config.log);
        self.discovered.retain_entries(&config);
        self.install(config, &old);
        Ok(())
    }

    /// Build the pool again with the current config and the nodes found in DNS now: what
    /// discovery does when they change.
    pub fn rebuild_pool(&self) {
        let _one_at_a_time = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.snapshot();
        self.install(old.config.clone(), &old);
    }

    /// Make a snapshot of `config` (with the nodes found in DNS) the current one, in place of
    /// `old`. Called with `reload_lock` held.
    fn install(&self, config: Config, old: &Snapshot) {
        let members = self.discovered.members(&config);
        let next = Snapshot::build(
            config,
            &members,
            &self.registry,
            Some(old),
            &self.open,
            &self.drains,
            &self.metrics,
        );
        for gone in old
            .shard_names()
            .filter(|name| next.shard_names().all(|n| n != *name))
        {
            self.metrics.forget_shard(gone);
        }
        for gone in old
            .pool
            .nodes
            .iter()
            .filter(|n| next.pool.by_name(&n.config.name).is_none())
        {
            self.metrics.forget_node(&gone.config.name);
        }
        self.current.store(Arc::new(next));
        self.pool_changed.notify_waiters();
    }

    /// The files whose change should trigger a reload.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let ConfigSource::File(path) = &self.source else {
            return Vec::new();
        };
        let mut files = vec![path.clone()];
        if let CertificateSource::Files { cert, key } = &self.snapshot().config.certificates {
            files.extend([cert.clone(), key.clone()]);
        }
        files
    }
}

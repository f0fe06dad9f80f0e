//! This edge's part in a cluster of edges (`[cluster]`): what it shares through the database
//! and what it learns from it. Never in a player's request path: every request is served
//! from this edge's own memory, which the sync loop keeps up to date.
//!
//! ```text
//!   ClusterSync, every 250 ms ── versions ──┬─ drains moved ──────► Drains::replace ─► every node
//!        (backoff while the                 ├─ challenges moved ──► Challenges::replace_shared
//!         database is away)                 └─ certificates moved ► ClusterLink::certificates_changed
//!                                                                    (the ACME task adopts it)
//!                every 1 s ── heartbeat (counts per node, routing digest, challenges seen)
//!                          ── live edges ─► GET /cluster, GET /nodes totals, the gauges
//! ```
//!
//! When the database is unreachable the edge serves on with its last state,
//! `nakama_edge_cluster_database_up` is 0, one WARN line says so (and one INFO line when it is
//! back), and every topic is read again on recovery.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use nakama_edge_cluster::edges::{Heartbeat, LiveEdge, NodeCounts};
use nakama_edge_cluster::{schema, topic, ClusterError, Database, Settings};
use nakama_edge_config::{Cluster, Config};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use prometheus::IntGauge;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::pool::{Member, Origin};
use crate::state::Shared;

/// How often the topics' versions are polled: a drain applies on every edge within this (and
/// a read of the drains).
pub const POLL: Duration = Duration::from_millis(250);
/// How often this edge says it is alive, with its counts.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a heartbeat keeps an edge counted as live.
pub const LIVE_FOR: Duration = Duration::from_secs(5);
/// The longest wait between attempts while the database is away.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The gauges of the contract's `nakama_edge_cluster_*` metrics.
#[derive(Debug, Clone)]
pub struct ClusterGauges {
    /// `nakama_edge_cluster_database_up`.
    pub database_up: IntGauge,
    /// `nakama_edge_cluster_edges`.
    pub edges: IntGauge,
    /// `nakama_edge_cluster_routing_mismatch`.
    pub routing_mismatch: IntGauge,
}

/// This edge's link to the cluster: the database, its name, and what it last learnt.
pub struct ClusterLink {
    /// The shared database.
    pub db: Arc<Database>,
    /// This edge's name.
    pub name: String,
    up: AtomicBool,
    /// The current outage has been logged.
    outage_logged: AtomicBool,
    live: ArcSwap<Vec<LiveEdge>>,
    /// Woken when another edge stores a certificate.
    pub certificates_changed: Notify,
    /// The `challenges` version whose answers this edge gives.
    pub challenges_seen: AtomicI64,
    /// Notified once, on shutdown, when this edge has taken its row out of the database (or
    /// failed to): the process does not exit before (`server::ExitWhenIdle`).
    pub left: Notify,
    gauges: ClusterGauges,
}

impl ClusterLink {
    /// The link of `[cluster]` (nothing is connected yet), reporting through `gauges`.
    pub fn new(cluster: &Cluster, gauges: ClusterGauges) -> Result<ClusterLink, ClusterError> {
        let db = Database::new(&Settings {
            url: cluster.database.expose().to_string(),
            password_file: cluster.database_password_file.clone(),
            ca: cluster.database_ca.clone(),
        })?;
        Ok(ClusterLink {
            db: Arc::new(db),
            name: cluster.name.clone(),
            up: AtomicBool::new(false),
            outage_logged: AtomicBool::new(false),
            live: ArcSwap::from_pointee(Vec::new()),
            certificates_changed: Notify::new(),
            challenges_seen: AtomicI64::new(0),
            left: Notify::new(),
            gauges,
        })
    }

    /// Whether the database answered last time it was asked.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The live edges as last read (this one included once its heartbeat is in).
    pub fn live_edges(&self) -> Arc<Vec<LiveEdge>> {
        self.live.load_full()
    }

    /// What the other live edges have open to `node`.
    pub fn others(&self, node: &str) -> NodeCounts {
        self.live
            .load()
            .iter()
            .filter(|e| e.heartbeat.name != self.name)
            .filter_map(|e| e.heartbeat.nodes.get(node))
            .fold(NodeCounts::default(), |sum, c| NodeCounts {
                http_in_flight: sum.http_in_flight + c.http_in_flight,
                websockets: sum.websockets + c.websockets,
            })
    }
}

/// A digest of what decides where a request goes: the nodes (name, addresses, weight; a node
/// gone from DNS counts no more, as it takes no new work) and the routing settings. Edges
/// with equal digests send the same user to the same node.
pub fn routing_digest(config: &Config, members: &[Member]) -> String {
    let mut hash = Sha256::new();
    let mut nodes: Vec<_> = members
        .iter()
        .filter(|m| !matches!(m.origin, Origin::Departed(_)))
        .map(|m| &m.config)
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    for n in nodes {
        hash.update(format!(
            "node {} {} {:?} {}\n",
            n.name, n.address, n.grpc, n.weight
        ));
    }
    hash.update(format!(
        "routing {:?} {}\n",
        config.routing.sticky_key, config.routing.websocket_path
    ));
    hash.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The background task keeping this edge and the database in step.
pub struct ClusterSync {
    shared: Arc<Shared>,
    link: Arc<ClusterLink>,
}

impl ClusterSync {
    /// The sync of `shared` through `link`.
    pub fn new(shared: Arc<Shared>, link: Arc<ClusterLink>) -> Self {
        ClusterSync { shared, link }
    }

    /// One poll: topics that moved are read again; the heartbeat when due.
    async fn poll(
        &self,
        migrated: &mut bool,
        seen: &mut HashMap<String, i64>,
        beat_due: &mut tokio::time::Instant,
    ) -> Result<(), ClusterError> {
        let db = &self.link.db;
        if !*migrated {
            schema::migrate(db).await?;
            *migrated = true;
        }
        let versions = db.versions().await?;
        let moved = |t: &str| versions.get(t) != seen.get(t);
        if moved(topic::DRAINS) {
            let drained = db.drains().await?;
            self.shared.apply_cluster_drains(drained);
        }
        if moved(topic::CHALLENGES) {
            let answers: Vec<_> = db
                .challenges()
                .await?
                .into_iter()
                .filter_map(|a| crate::acme::answer_from_row(&a))
                .collect();
            if let Err(e) = self.shared.certs.challenges().replace_shared(&answers) {
                tracing::warn!(error = %e, "a challenge answer from another edge is unusable");
            }
            let v = versions.get(topic::CHALLENGES).copied().unwrap_or(0);
            self.link.challenges_seen.store(v, Ordering::Relaxed);
            // The ordering edge waits for this edge to say it has them.
            *beat_due = tokio::time::Instant::now();
        }
        if moved(topic::CERTIFICATES) && seen.contains_key(topic::CERTIFICATES) {
            self.link.certificates_changed.notify_waiters();
        }
        *seen = versions;
        if tokio::time::Instant::now() >= *beat_due {
            db.heartbeat(&self.heartbeat(), LIVE_FOR).await?;
            let live = db.live_edges().await?;
            self.publish_view(live);
            *beat_due = tokio::time::Instant::now() + HEARTBEAT;
        }
        Ok(())
    }

    fn heartbeat(&self) -> Heartbeat {
        let snapshot = self.shared.snapshot();
        let nodes: BTreeMap<String, NodeCounts> = snapshot
            .pool
            .nodes
            .iter()
            .map(|n| {
                (
                    n.config.name.clone(),
                    NodeCounts {
                        http_in_flight: n.runtime.http_in_flight(),
                        websockets: n.runtime.websockets(),
                    },
                )
            })
            .collect();
        Heartbeat {
            name: self.link.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            routing_digest: snapshot.routing_digest.clone(),
            nodes,
            challenges_seen: self.link.challenges_seen.load(Ordering::Relaxed),
        }
    }

    fn publish_view(&self, live: Vec<LiveEdge>) {
        let gauges = &self.link.gauges;
        gauges.edges.set(live.len() as i64);
        let mut digests: Vec<&str> = live
            .iter()
            .map(|e| e.heartbeat.routing_digest.as_str())
            .collect();
        digests.sort_unstable();
        digests.dedup();
        let mismatch = digests.len() > 1;
        if mismatch && gauges.routing_mismatch.get() == 0 {
            let by_edge: Vec<String> = live
                .iter()
                .map(|e| format!("{}={}", e.heartbeat.name, e.heartbeat.routing_digest))
                .collect();
            tracing::warn!(edges = %by_edge.join(" "), "live edges route differently (their [[nodes]], discovered nodes or [routing] differ): the same player may be sent to different nodes");
        }
        gauges.routing_mismatch.set(i64::from(mismatch));
        self.link.live.store(Arc::new(live));
    }

    /// Record how the last attempt went; one line per change, and one for the first failure of
    /// an edge that starts without the database.
    fn record(&self, outcome: Result<(), &ClusterError>) {
        let link = &self.link;
        let up = outcome.is_ok();
        let was = link.up.swap(up, Ordering::Relaxed);
        link.gauges.database_up.set(i64::from(up));
        match outcome {
            Ok(()) => {
                if !was {
                    tracing::info!(edge = %link.name, "cluster database reachable: shared state in step");
                }
                link.outage_logged.store(false, Ordering::Relaxed);
            }
            Err(e) => {
                if !link.outage_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "cluster database unreachable: serving with the last shared state and retrying with backoff; drains cannot change until it is back");
                }
            }
        }
    }
}

#[async_trait]
impl BackgroundService for ClusterSync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut migrated = false;
        let mut seen = HashMap::new();
        let mut beat_due = tokio::time::Instant::now();
        let mut backoff = Duration::ZERO;
        loop {
            let wait = match self.poll(&mut migrated, &mut seen, &mut beat_due).await {
                Ok(()) => {
                    self.record(Ok(()));
                    backoff = Duration::ZERO;
                    POLL
                }
                Err(e) => {
                    self.record(Err(&e));
                    // Everything is read again once the database is back.
                    seen.clear();
                    backoff = (backoff * 2).clamp(Duration::from_secs(1), MAX_BACKOFF);
                    backoff
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => break,
            }
        }
        // Leaving cleanly: nobody waits for this edge's answers or counts.
        if let Err(e) = self.link.db.farewell(&self.link.name).await {
            tracing::debug!(error = %e, "could not say farewell to the cluster database");
        }
        self.link.left.notify_one();
    }
}

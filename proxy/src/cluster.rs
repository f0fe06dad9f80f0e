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
//! The loop is `tasks/cluster_sync.rs`; this file holds what it learns ([`ClusterLink`]).
//!
//! When the database is unreachable the edge serves on with its last state,
//! `nakama_edge_cluster_database_up` is 0, one WARN line says so (and one INFO line when it is
//! back), and every topic is read again on recovery.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use nakama_edge_cluster::edges::{LiveEdge, NodeCounts};
use nakama_edge_cluster::{ClusterError, Database, Settings};
use nakama_edge_config::{Cluster, Config};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::nodes::pool::{Member, Origin};
use crate::ops::metrics::ClusterGauges;

/// How often the topics' versions are polled: a drain applies on every edge within this (and
/// a read of the drains).
pub const POLL: Duration = Duration::from_millis(250);
/// How often this edge says it is alive, with its counts.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a heartbeat keeps an edge counted as live.
pub const LIVE_FOR: Duration = Duration::from_secs(5);
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

    /// Take in the live edges just read: the gauges, and one WARN when their routing starts
    /// to differ.
    pub fn publish(&self, live: Vec<LiveEdge>) {
        let gauges = &self.gauges;
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
        self.live.store(Arc::new(live));
    }

    /// Record how the last attempt went; one line per change, and one for the first failure of
    /// an edge that starts without the database.
    pub fn record(&self, outcome: Result<(), &ClusterError>) {
        let up = outcome.is_ok();
        let was = self.up.swap(up, Ordering::Relaxed);
        self.gauges.database_up.set(i64::from(up));
        match outcome {
            Ok(()) => {
                if !was {
                    tracing::info!(edge = %self.name, "cluster database reachable: shared state in step");
                }
                self.outage_logged.store(false, Ordering::Relaxed);
            }
            Err(e) => {
                if !self.outage_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "cluster database unreachable: serving with the last shared state and retrying with backoff; drains cannot change until it is back");
                }
            }
        }
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
    // Shard mode only, so that digests of cluster-mode edges stay as they were.
    if config.routing.mode == nakama_edge_config::RoutingMode::Shards {
        hash.update(format!("shards by {}\n", config.routing.shard_var));
        let mut shards: Vec<_> = config.shards.iter().collect();
        shards.sort_by(|a, b| a.name.cmp(&b.name));
        for s in shards {
            hash.update(format!("shard {} {} {:?}\n", s.name, s.node, s.standby));
        }
    }
    hash.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

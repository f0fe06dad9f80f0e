//! The sync loop of `[cluster]`: every 250 ms, the topics that moved in the database are read
//! again into this edge's state; every second, this edge's heartbeat goes out and the live
//! edges come back (kept in [`ClusterLink`]). See [`crate::cluster`] for the picture.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nakama_edge_cluster::edges::{Heartbeat, NodeCounts};
use nakama_edge_cluster::{schema, topic, ClusterError};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::cluster::{ClusterLink, HEARTBEAT, LIVE_FOR, POLL};
use crate::state::Shared;

/// The longest wait between attempts while the database is away.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

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
                .filter_map(|a| crate::tasks::acme::answer_from_row(&a))
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
            self.link.publish(live);
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
                    self.link.record(Ok(()));
                    backoff = Duration::ZERO;
                    POLL
                }
                Err(e) => {
                    self.link.record(Err(&e));
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

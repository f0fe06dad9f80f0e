//! The live edges: each one upserts a heartbeat row, with a short expiry, carrying what the
//! others need to know of it: its version, a digest of its routing config, its open
//! connections per node, and the challenge answers it has loaded.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{ClusterError, Database};

/// What an edge has open to one node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCounts {
    /// Requests being proxied.
    pub http_in_flight: i64,
    /// Open WebSockets.
    pub websockets: i64,
}

/// One edge's heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// Its name.
    pub name: String,
    /// Its build.
    pub version: String,
    /// A digest of its routing config (nodes, weights, sticky key): equal digests route the
    /// same user to the same node.
    pub routing_digest: String,
    /// Its open connections, by node name.
    pub nodes: BTreeMap<String, NodeCounts>,
    /// The `challenges` version whose answers it has loaded.
    pub challenges_seen: i64,
}

/// A live edge as the database last heard from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveEdge {
    /// What it said.
    pub heartbeat: Heartbeat,
    /// When, in Unix seconds (the database's clock).
    pub last_seen: i64,
}

impl Database {
    /// Say this edge is alive for `ttl`, with `beat`.
    pub async fn heartbeat(&self, beat: &Heartbeat, ttl: Duration) -> Result<(), ClusterError> {
        let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let nodes = serde_json::to_string(&beat.nodes).map_err(|e| ClusterError::Corrupt {
            what: "heartbeat",
            why: e.to_string(),
        })?;
        self.timed(async {
            let conn = self.connection().await?;
            conn.execute(
                "INSERT INTO nakama_edge_edges
                    (name, version, routing_digest, node_counts, challenges_seen, last_seen, expires_at)
                 VALUES ($1, $2, $3, $4, $5, now(), now() + $6::INT8 * INTERVAL '1 millisecond')
                 ON CONFLICT (name) DO UPDATE SET
                    version = excluded.version, routing_digest = excluded.routing_digest,
                    node_counts = excluded.node_counts, challenges_seen = excluded.challenges_seen,
                    last_seen = excluded.last_seen, expires_at = excluded.expires_at",
                &[
                    &beat.name,
                    &beat.version,
                    &beat.routing_digest,
                    &nodes,
                    &beat.challenges_seen,
                    &ms,
                ],
            )
            .await?;
            Ok(())
        })
        .await
    }

    /// Say this edge is gone (a clean shutdown), so that nobody waits for it.
    pub async fn farewell(&self, name: &str) -> Result<(), ClusterError> {
        self.timed(async {
            let conn = self.connection().await?;
            conn.execute("DELETE FROM nakama_edge_edges WHERE name = $1", &[&name])
                .await?;
            Ok(())
        })
        .await
    }

    /// Every edge whose heartbeat has not expired, by name.
    pub async fn live_edges(&self) -> Result<Vec<LiveEdge>, ClusterError> {
        self.timed(async {
            let conn = self.connection().await?;
            let rows = conn
                .query(
                    "SELECT name, version, routing_digest, node_counts, challenges_seen,
                            EXTRACT(EPOCH FROM last_seen)::INT8
                     FROM nakama_edge_edges WHERE expires_at > now() ORDER BY name",
                    &[],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    let nodes: String = r.get(3);
                    let nodes =
                        serde_json::from_str(&nodes).map_err(|e| ClusterError::Corrupt {
                            what: "heartbeat",
                            why: e.to_string(),
                        })?;
                    Ok(LiveEdge {
                        heartbeat: Heartbeat {
                            name: r.get(0),
                            version: r.get(1),
                            routing_digest: r.get(2),
                            nodes,
                            challenges_seen: r.get(4),
                        },
                        last_seen: r.get(5),
                    })
                })
                .collect()
        })
        .await
    }
}

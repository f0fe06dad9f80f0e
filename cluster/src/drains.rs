//! Runtime drains of nodes, shared by every edge: a drain set through any edge's admin API
//! applies on all of them (each polls the `drains` topic) and survives restarts.

use std::collections::BTreeSet;

use crate::{bump, topic, ClusterError, Database};

impl Database {
    /// The nodes drained at runtime.
    pub async fn drains(&self) -> Result<BTreeSet<String>, ClusterError> {
        self.timed(async {
            let conn = self.connection().await?;
            let rows = conn
                .query("SELECT node FROM nakama_edge_drains", &[])
                .await?;
            Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
        })
        .await
    }

    /// Drain (`true`) or undrain `node`, on behalf of edge `by`. Returns whether anything
    /// changed; every edge sees the change at its next poll.
    pub async fn set_drain(&self, node: &str, drain: bool, by: &str) -> Result<bool, ClusterError> {
        self.timed(async {
            let mut conn = self.connection().await?;
            let tx = conn.transaction().await?;
            let changed = if drain {
                tx.execute(
                    "INSERT INTO nakama_edge_drains (node, drained_by) VALUES ($1, $2)
                     ON CONFLICT (node) DO NOTHING",
                    &[&node, &by],
                )
                .await?
            } else {
                tx.execute("DELETE FROM nakama_edge_drains WHERE node = $1", &[&node])
                    .await?
            } > 0;
            if changed {
                bump(&tx, topic::DRAINS).await?;
            }
            tx.commit().await?;
            Ok(changed)
        })
        .await
    }
}

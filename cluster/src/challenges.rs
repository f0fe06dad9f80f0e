//! Answers to ACME challenges in progress, for every edge to give: the CA validates at
//! whichever edge DNS or the load balancer sends it to.
//!
//! ```text
//!   ordering edge: publish answers (bump `challenges`) ──► wait until every live edge has
//!                  seen that version (its heartbeat's challenges_seen) ──► ask the CA
//!   other edges:   `challenges` moved ──► load the answers ──► report challenges_seen
//! ```

use std::time::Duration;

use crate::{bump, topic, ClusterError, Database};

/// One answer: an HTTP-01 key authorization by token, or a TLS-ALPN-01 digest by domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// `http-01` or `tls-alpn-01`.
    pub kind: String,
    /// The token (HTTP-01) or the domain (TLS-ALPN-01).
    pub key: String,
    /// The key authorization (HTTP-01) or the hex SHA-256 of it (TLS-ALPN-01).
    pub answer: String,
}

impl Database {
    /// Publish `answers` for `ttl`; the `challenges` version that carries them.
    pub async fn publish_challenges(
        &self,
        answers: &[Answer],
        ttl: Duration,
    ) -> Result<i64, ClusterError> {
        let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        self.timed(async {
            let mut conn = self.connection().await?;
            let tx = conn.transaction().await?;
            let seq = bump(&tx, topic::CHALLENGES).await?;
            for a in answers {
                tx.execute(
                    "INSERT INTO nakama_edge_challenges (kind, key, answer, seq, expires_at)
                     VALUES ($1, $2, $3, $4, now() + $5::INT8 * INTERVAL '1 millisecond')
                     ON CONFLICT (kind, key) DO UPDATE SET
                        answer = excluded.answer, seq = excluded.seq,
                        expires_at = excluded.expires_at",
                    &[&a.kind, &a.key, &a.answer, &seq, &ms],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(seq)
        })
        .await
    }

    /// Withdraw `answers` (their order is over).
    pub async fn withdraw_challenges(&self, answers: &[Answer]) -> Result<(), ClusterError> {
        self.timed(async {
            let mut conn = self.connection().await?;
            let tx = conn.transaction().await?;
            for a in answers {
                tx.execute(
                    "DELETE FROM nakama_edge_challenges WHERE kind = $1 AND key = $2",
                    &[&a.kind, &a.key],
                )
                .await?;
            }
            bump(&tx, topic::CHALLENGES).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// The answers in force (not expired).
    pub async fn challenges(&self) -> Result<Vec<Answer>, ClusterError> {
        self.timed(async {
            let conn = self.connection().await?;
            let rows = conn
                .query(
                    "SELECT kind, key, answer FROM nakama_edge_challenges WHERE expires_at > now()",
                    &[],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| Answer {
                    kind: r.get(0),
                    key: r.get(1),
                    answer: r.get(2),
                })
                .collect())
        })
        .await
    }
}

//! Leases: at most one edge does a piece of work (ordering a certificate) at a time.
//!
//! ```text
//!   acquire ── INSERT, or take over a row whose expiry has passed ── a row back: held
//!   renew   ── UPDATE expiry WHERE token matches ──────────────────── 0 rows: lost
//!   release ── DELETE WHERE token matches
//! ```
//!
//! A lease is a row with an expiry on the database's clock, taken by compare-and-set: an
//! `INSERT .. ON CONFLICT DO UPDATE .. WHERE expires_at < now()` succeeds for one edge only.
//! Its holder renews it well before it expires; if the holder dies, the lease lapses and
//! another edge takes it over.

use std::time::Duration;

use crate::{ClusterError, Database};

/// A lease held by this edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// What it is for.
    pub name: String,
    /// This acquisition's token: renewing or releasing takes it.
    token: String,
}

fn token(holder: &str) -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{holder}-{}-{nanos:x}", std::process::id())
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Database {
    /// Take the lease `name` for `ttl` if nobody holds it (or its holder let it lapse).
    pub async fn acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, ClusterError> {
        let token = token(holder);
        let ms = millis(ttl);
        self.timed(async {
            let conn = self.connection().await?;
            let row = conn
                .query_opt(
                    "INSERT INTO nakama_edge_leases (name, holder, token, expires_at)
                     VALUES ($1, $2, $3, now() + $4::INT8 * INTERVAL '1 millisecond')
                     ON CONFLICT (name) DO UPDATE
                        SET holder = excluded.holder, token = excluded.token,
                            expires_at = excluded.expires_at
                        WHERE nakama_edge_leases.expires_at < now()
                     RETURNING token",
                    &[&name, &holder, &token, &ms],
                )
                .await?;
            Ok(row.map(|_| Lease {
                name: name.to_string(),
                token: token.clone(),
            }))
        })
        .await
    }

    /// Extend `lease` by `ttl` from now. `false`: it was lost (it lapsed and another edge
    /// took it).
    pub async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool, ClusterError> {
        let ms = millis(ttl);
        self.timed(async {
            let conn = self.connection().await?;
            let n = conn
                .execute(
                    "UPDATE nakama_edge_leases
                        SET expires_at = now() + $3::INT8 * INTERVAL '1 millisecond'
                     WHERE name = $1 AND token = $2",
                    &[&lease.name, &lease.token, &ms],
                )
                .await?;
            Ok(n == 1)
        })
        .await
    }

    /// Give `lease` up.
    pub async fn release(&self, lease: &Lease) -> Result<(), ClusterError> {
        self.timed(async {
            let conn = self.connection().await?;
            conn.execute(
                "DELETE FROM nakama_edge_leases WHERE name = $1 AND token = $2",
                &[&lease.name, &lease.token],
            )
            .await?;
            Ok(())
        })
        .await
    }

    /// Who holds the lease `name` now, if anyone (for operators and tests).
    pub async fn lease_holder(&self, name: &str) -> Result<Option<String>, ClusterError> {
        self.timed(async {
            let conn = self.connection().await?;
            let row = conn
                .query_opt(
                    "SELECT holder FROM nakama_edge_leases WHERE name = $1 AND expires_at >= now()",
                    &[&name],
                )
                .await?;
            Ok(row.map(|r| r.get(0)))
        })
        .await
    }
}

//! The edge's tables, created and migrated by whichever edges start, several at once.
//!
//! Every statement of a migration is idempotent (`IF NOT EXISTS`, `ON CONFLICT DO
//! NOTHING`), and `nakama_edge_schema` records the migrations done. Two edges creating the
//! same table at the same moment can make PostgreSQL report a unique violation on its own
//! catalog; that, a serialization failure (CockroachDB) or "already exists" means another
//! edge got there first, and the migration is simply run again.

use std::time::Duration;

use tokio_postgres::error::SqlState;

use crate::{ClusterError, Database};

/// The migrations, in order; `MIGRATIONS[i]` takes the schema to version `i + 1`. Plain SQL
/// that PostgreSQL and CockroachDB both run.
const MIGRATIONS: &[&[&str]] = &[&[
    "CREATE TABLE IF NOT EXISTS nakama_edge_schema (
        version INT8 PRIMARY KEY,
        applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )",
    "CREATE TABLE IF NOT EXISTS nakama_edge_versions (
        topic TEXT PRIMARY KEY,
        version INT8 NOT NULL
    )",
    "INSERT INTO nakama_edge_versions (topic, version)
        VALUES ('drains', 0), ('certificates', 0), ('challenges', 0)
        ON CONFLICT (topic) DO NOTHING",
    "CREATE TABLE IF NOT EXISTS nakama_edge_drains (
        node TEXT PRIMARY KEY,
        drained_by TEXT NOT NULL,
        since TIMESTAMPTZ NOT NULL DEFAULT now()
    )",
    "CREATE TABLE IF NOT EXISTS nakama_edge_leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        token TEXT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS nakama_edge_acme_accounts (
        directory TEXT PRIMARY KEY,
        credentials TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )",
    "CREATE TABLE IF NOT EXISTS nakama_edge_certificates (
        domains TEXT PRIMARY KEY,
        chain_pem TEXT NOT NULL,
        key_pem TEXT NOT NULL,
        not_after TIMESTAMPTZ NOT NULL,
        updated_by TEXT NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )",
    "CREATE TABLE IF NOT EXISTS nakama_edge_challenges (
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        answer TEXT NOT NULL,
        seq INT8 NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (kind, key)
    )",
    "CREATE TABLE IF NOT EXISTS nakama_edge_edges (
        name TEXT PRIMARY KEY,
        version TEXT NOT NULL,
        routing_digest TEXT NOT NULL,
        node_counts TEXT NOT NULL,
        challenges_seen INT8 NOT NULL,
        last_seen TIMESTAMPTZ NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    )",
]];

/// The schema version this build needs.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

fn someone_else_got_there(e: &ClusterError) -> bool {
    e.code().is_some_and(|c| {
        *c == SqlState::UNIQUE_VIOLATION
            || *c == SqlState::DUPLICATE_TABLE
            || *c == SqlState::DUPLICATE_OBJECT
            || *c == SqlState::T_R_SERIALIZATION_FAILURE
    })
}

/// Bring the schema up to [`VERSION`]. Safe when several edges do it at once.
pub async fn migrate(db: &Database) -> Result<(), ClusterError> {
    let mut attempt = 0u32;
    loop {
        match db.timed(migrate_once(db)).await {
            Err(e) if someone_else_got_there(&e) && attempt < 10 => {
                attempt += 1;
                // Let the other edge finish; a little longer each time.
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
            }
            other => return other,
        }
    }
}

async fn migrate_once(db: &Database) -> Result<(), ClusterError> {
    let conn = db.connection().await?;
    let done: i64 = match conn
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM nakama_edge_schema",
            &[],
        )
        .await
    {
        Ok(row) => row.get(0),
        // No schema table yet: nothing done.
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => 0,
        Err(e) => return Err(e.into()),
    };
    if done > VERSION {
        return Err(ClusterError::Corrupt {
            what: "schema version",
            why: format!("{done}, newer than this build's {VERSION}: upgrade this edge"),
        });
    }
    for (i, statements) in MIGRATIONS.iter().enumerate().skip(done as usize) {
        for statement in *statements {
            conn.batch_execute(statement).await?;
        }
        let version = i as i64 + 1;
        conn.execute(
            "INSERT INTO nakama_edge_schema (version) VALUES ($1) ON CONFLICT (version) DO NOTHING",
            &[&version],
        )
        .await?;
        tracing::info!(version, "cluster database schema migrated");
    }
    Ok(())
}

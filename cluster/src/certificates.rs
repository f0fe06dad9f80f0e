//! The ACME account and the certificates, shared: one edge orders, every edge serves.
//!
//! A certificate is stored whole (chain and key) under the key of its domain set; storing one
//! bumps the `certificates` topic, and each edge loads it at its next poll.

use crate::{bump, topic, ClusterError, Database};

/// A certificate as stored: chain (leaf first) and key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedCertificate {
    /// PEM chain, leaf first.
    pub chain_pem: String,
    /// PEM private key.
    pub key_pem: String,
    /// The edge that stored it.
    pub updated_by: String,
}

impl Database {
    /// The ACME account credentials (JSON) for `directory`, if an edge created one.
    pub async fn acme_account(&self, directory: &str) -> Result<Option<String>, ClusterError> {
        self.timed(async {
            let conn = self.connection().await?;
            let row = conn
                .query_opt(
                    "SELECT credentials FROM nakama_edge_acme_accounts WHERE directory = $1",
                    &[&directory],
                )
                .await?;
            Ok(row.map(|r| r.get(0)))
        })
        .await
    }

    /// Store `credentials` for `directory` unless an account is already there; the account to
    /// use (the one stored first).
    pub async fn save_acme_account(
        &self,
        directory: &str,
        credentials: &str,
        by: &str,
    ) -> Result<String, ClusterError> {
        self.timed(async {
            let conn = self.connection().await?;
            conn.execute(
                "INSERT INTO nakama_edge_acme_accounts (directory, credentials, created_by)
                 VALUES ($1, $2, $3) ON CONFLICT (directory) DO NOTHING",
                &[&directory, &credentials, &by],
            )
            .await?;
            let row = conn
                .query_one(
                    "SELECT credentials FROM nakama_edge_acme_accounts WHERE directory = $1",
                    &[&directory],
                )
                .await?;
            Ok(row.get(0))
        })
        .await
    }

    /// Forget the account of `directory` (the CA no longer knows it).
    pub async fn forget_acme_account(&self, directory: &str) -> Result<(), ClusterError> {
        self.timed(async {
            let conn = self.connection().await?;
            conn.execute(
                "DELETE FROM nakama_edge_acme_accounts WHERE directory = $1",
                &[&directory],
            )
            .await?;
            Ok(())
        })
        .await
    }

    /// The certificate of the domain set `domains` (a [`domain_set`] key).
    pub async fn certificate(
        &self,
        domains: &str,
    ) -> Result<Option<SharedCertificate>, ClusterError> {
        self.timed(async {
            let conn = self.connection().await?;
            let row = conn
                .query_opt(
                    "SELECT chain_pem, key_pem, updated_by FROM nakama_edge_certificates
                     WHERE domains = $1",
                    &[&domains],
                )
                .await?;
            Ok(row.map(|r| SharedCertificate {
                chain_pem: r.get(0),
                key_pem: r.get(1),
                updated_by: r.get(2),
            }))
        })
        .await
    }

    /// Store the certificate of `domains`, which expires at `not_after` (Unix seconds), for
    /// every edge to serve.
    pub async fn save_certificate(
        &self,
        domains: &str,
        cert: &SharedCertificate,
        not_after: i64,
    ) -> Result<(), ClusterError> {
        self.timed(async {
            let mut conn = self.connection().await?;
            let tx = conn.transaction().await?;
            tx.execute(
                "INSERT INTO nakama_edge_certificates
                    (domains, chain_pem, key_pem, not_after, updated_by, updated_at)
                 VALUES ($1, $2, $3, to_timestamp($4::INT8), $5, now())
                 ON CONFLICT (domains) DO UPDATE SET
                    chain_pem = excluded.chain_pem, key_pem = excluded.key_pem,
                    not_after = excluded.not_after, updated_by = excluded.updated_by,
                    updated_at = now()",
                &[
                    &domains,
                    &cert.chain_pem,
                    &cert.key_pem,
                    &not_after,
                    &cert.updated_by,
                ],
            )
            .await?;
            bump(&tx, topic::CERTIFICATES).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }
}

/// The key a domain set is stored under: its names, lowercase, sorted, without repeats.
pub fn domain_set(domains: &[String]) -> String {
    let mut sorted: Vec<String> = domains.iter().map(|d| d.to_ascii_lowercase()).collect();
    sorted.sort();
    sorted.dedup();
    sorted.join(",")
}

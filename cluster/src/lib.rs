//! The state several edges share through one database: the PostgreSQL or CockroachDB that
//! Nakama already runs. The database is never in a player's request path: each edge keeps
//! serving from its last state when it is gone.
//!
//! ```text
//!   edge A ──┐                      nakama_edge_versions   one counter per topic, polled
//!   edge B ──┼─► Database ───────►  nakama_edge_drains     runtime drains
//!   edge C ──┘   (one connection,   nakama_edge_leases     who orders a certificate now
//!                 reconnected with  nakama_edge_acme_accounts, nakama_edge_certificates
//!                 backoff)          nakama_edge_challenges ACME answers any edge gives
//!                                   nakama_edge_edges      heartbeats: counts, routing digest
//! ```
//!
//! Change is learnt by polling [`Database::versions`] (one small query): every write bumps its
//! topic's version in the same transaction. There are no advisory locks and no
//! LISTEN/NOTIFY, which CockroachDB lacks: a lease is a row with an expiry taken by
//! compare-and-set ([`leases`]). Times (expiries, last seen) are the database's clock, so
//! edges need not agree on theirs.
//!
//! | module | concern |
//! | --- | --- |
//! | [`schema`] | the tables, created and migrated safely by N edges at once |
//! | [`drains`] | runtime drains of nodes |
//! | [`leases`] | leases: rows with an expiry, taken and renewed by compare-and-set |
//! | [`certificates`] | the ACME account and the certificates (chain and key) |
//! | [`challenges`] | answers to ACME challenges in progress, for every edge to give |
//! | [`edges`] | the live edges: heartbeats with their counts and routing digest |

pub mod certificates;
pub mod challenges;
pub mod drains;
pub mod edges;
pub mod leases;
pub mod schema;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::{Client, NoTls};

/// How long connecting (or one statement) may take before the database counts as unreachable.
pub const DATABASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the shared state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// `cluster.database` could not be used (never shows the URL: it may hold a password).
    #[error("cluster.database is not a usable PostgreSQL URL: {0}")]
    Url(String),
    /// A file named by `[cluster]` could not be read.
    #[error("cannot read {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The reason.
        source: std::io::Error,
    },
    /// The database's TLS root could not be used.
    #[error("cluster.database_ca {path}: {why}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The database did not answer in time.
    #[error("the cluster database did not answer within {0:?}")]
    Timeout(Duration),
    /// The database refused or failed a statement, or the connection broke.
    #[error("cluster database: {0}")]
    Database(#[from] tokio_postgres::Error),
    /// No connection could be held (never expected: one is made first).
    #[error("no connection to the cluster database")]
    NotConnected,
    /// A row held something this edge cannot read.
    #[error("cluster database holds an unreadable {what}: {why}")]
    Corrupt {
        /// Which row.
        what: &'static str,
        /// Why.
        why: String,
    },
}

impl ClusterError {
    /// The SQLSTATE of a database error, if it is one.
    pub fn code(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            ClusterError::Database(e) => e.code(),
            _ => None,
        }
    }
}

/// How to reach the database, from `[cluster]`.
#[derive(Clone)]
pub struct Settings {
    /// The URL (never logged).
    pub url: String,
    /// A file holding the password, instead of one in the URL.
    pub password_file: Option<PathBuf>,
    /// A root to verify the database's certificate with (else the system's roots).
    pub ca: Option<PathBuf>,
}

/// The shared database, as one edge uses it: one connection, made when first needed and
/// again after it breaks.
pub struct Database {
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    client: Mutex<Option<Client>>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Neither the URL nor the password.
        f.debug_struct("Database").finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<String, ClusterError> {
    std::fs::read_to_string(path).map_err(|source| ClusterError::File {
        path: path.to_path_buf(),
        source,
    })
}

fn tls_config(ca: Option<&Path>) -> Result<rustls::ClientConfig, ClusterError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let pem = read(path)?;
            let certs = rustls_pemfile::certs(&mut pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ClusterError::Ca {
                    path: path.to_path_buf(),
                    why: e.to_string(),
                })?;
            if certs.is_empty() {
                return Err(ClusterError::Ca {
                    path: path.to_path_buf(),
                    why: "no certificate in it".into(),
                });
            }
            for cert in certs {
                roots.add(cert).map_err(|e| ClusterError::Ca {
                    path: path.to_path_buf(),
                    why: e.to_string(),
                })?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClusterError::Ca {
            path: ca.map(Path::to_path_buf).unwrap_or_default(),
            why: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl Database {
    /// The database of `settings`; nothing is connected yet.
    pub fn new(settings: &Settings) -> Result<Database, ClusterError> {
        let mut config = tokio_postgres::Config::from_str(&settings.url)
            // The parser's message does not quote the URL; it is kept short anyway.
            .map_err(|e| ClusterError::Url(e.to_string()))?;
        if let Some(file) = &settings.password_file {
            let password = read(file)?;
            config.password(password.trim_end_matches(['\r', '\n']));
        }
        config.connect_timeout(DATABASE_TIMEOUT);
        config.application_name("nakama-edge");
        let tls = match config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => None,
            _ => Some(tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(
                settings.ca.as_deref(),
            )?)),
        };
        Ok(Database {
            config,
            tls,
            client: Mutex::new(None),
        })
    }

    /// The connection, made now if there is none (or the last one broke), held for a few
    /// statements or a transaction.
    pub async fn connection(&self) -> Result<Connection<'_>, ClusterError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(Client::is_closed) {
            *guard = None;
            let client = tokio::time::timeout(DATABASE_TIMEOUT, self.connect())
                .await
                .map_err(|_| ClusterError::Timeout(DATABASE_TIMEOUT))??;
            *guard = Some(client);
        }
        MutexGuard::try_map(guard, Option::as_mut).map_err(|_| ClusterError::NotConnected)
    }

    /// Run `work` within [`DATABASE_TIMEOUT`]; past it the connection counts as stuck and the
    /// next use makes a new one.
    pub async fn timed<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, ClusterError>>,
    ) -> Result<T, ClusterError> {
        match tokio::time::timeout(DATABASE_TIMEOUT, work).await {
            Ok(result) => result,
            Err(_) => {
                // The work (and the lock it held) is gone with the timeout.
                if let Ok(mut guard) = self.client.try_lock() {
                    *guard = None;
                }
                Err(ClusterError::Timeout(DATABASE_TIMEOUT))
            }
        }
    }

    async fn connect(&self) -> Result<Client, ClusterError> {
        let log = |e: tokio_postgres::Error| {
            tracing::debug!(error = %e, "cluster database connection ended");
        };
        let client = match &self.tls {
            Some(tls) => {
                let (client, connection) = self.config.connect(tls.clone()).await?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        log(e)
                    }
                });
                client
            }
            None => {
                let (client, connection) = self.config.connect(NoTls).await?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        log(e)
                    }
                });
                client
            }
        };
        Ok(client)
    }

    /// Every topic's version: a topic whose version moved has changed since it was last read.
    pub async fn versions(&self) -> Result<HashMap<String, i64>, ClusterError> {
        self.timed(async {
            let conn = self.connection().await?;
            let rows = conn
                .query("SELECT topic, version FROM nakama_edge_versions", &[])
                .await?;
            Ok(rows
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
                .collect())
        })
        .await
    }
}

/// The one connection, held for a few statements (or a transaction).
pub type Connection<'a> = tokio::sync::MappedMutexGuard<'a, Client>;

/// Topics whose versions [`Database::versions`] reports.
pub mod topic {
    /// Runtime drains.
    pub const DRAINS: &str = "drains";
    /// Certificates.
    pub const CERTIFICATES: &str = "certificates";
    /// ACME challenge answers.
    pub const CHALLENGES: &str = "challenges";
}

/// Bump `topic`'s version inside `tx`; the new version.
pub(crate) async fn bump(
    tx: &tokio_postgres::Transaction<'_>,
    topic: &str,
) -> Result<i64, ClusterError> {
    let row = tx
        .query_one(
            "UPDATE nakama_edge_versions SET version = version + 1 WHERE topic = $1 RETURNING version",
            &[&topic],
        )
        .await?;
    Ok(row.get(0))
}

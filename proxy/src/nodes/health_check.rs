//! Active health checks: `GET health_check.path` on every node, every `interval`.
//!
//! ```text
//!   start: first_round ── every node at once, bounded by health_check.timeout ──► then the
//!          listeners (or, with --upgrade, the old process's sockets) are taken
//!   HealthChecker ── one check_loop per node runtime ── record_check ──► NodeRuntime health
//! ```
//!
//! The supervisor starts loops for nodes a reload or discovery adds and stops those of nodes
//! they remove.
//! Settings are read from the current snapshot at each check, so a reload changes them live.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hyper_util::rt::TokioIo;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::nodes::pool::{Health, NodeRuntime};
use crate::state::Shared;

/// The health-check supervisor.
pub struct HealthChecker {
    shared: Arc<Shared>,
}

impl HealthChecker {
    /// Checks of the nodes in `shared`'s snapshots.
    pub fn new(shared: Arc<Shared>) -> Self {
        HealthChecker { shared }
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tasks: HashMap<usize, JoinHandle<()>> = HashMap::new();
        loop {
            let reloaded = self.shared.pool_changed.notified();
            tokio::pin!(reloaded);
            reloaded.as_mut().enable();

            let snapshot = self.shared.snapshot();
            let key = |rt: &Arc<NodeRuntime>| Arc::as_ptr(rt) as usize;
            tasks.retain(|k, task| {
                let keep = snapshot.pool.nodes.iter().any(|n| key(&n.runtime) == *k);
                if !keep {
                    task.abort();
                }
                keep
            });
            for node in &snapshot.pool.nodes {
                tasks.entry(key(&node.runtime)).or_insert_with(|| {
                    tokio::spawn(check_loop(self.shared.clone(), node.runtime.clone()))
                });
            }
            drop(snapshot);

            tokio::select! {
                _ = &mut reloaded => {}
                _ = shutdown.changed() => break,
            }
        }
        for task in tasks.values() {
            task.abort();
        }
    }
}

/// One round of checks of every node of the current snapshot, all at once: what a starting
/// process does before it serves, so that it routes from its first connection. Takes at most
/// `health_check.timeout`. Returns how many nodes are healthy, and how many were checked.
pub async fn first_round(shared: &Shared) -> (usize, usize) {
    let snapshot = shared.snapshot();
    let checks = snapshot
        .pool
        .nodes
        .iter()
        .map(|node| check_once(shared, &node.runtime));
    futures_util::future::join_all(checks).await;
    let healthy = snapshot
        .pool
        .nodes
        .iter()
        .filter(|n| n.runtime.health() == Health::Healthy)
        .count();
    (healthy, snapshot.pool.nodes.len())
}

/// Check `node` once and record the result.
async fn check_once(shared: &Shared, node: &NodeRuntime) {
    let settings = &shared.snapshot().config.health_check;
    let started = std::time::Instant::now();
    let result = check(node.address, &settings.path, settings.timeout).await;
    shared
        .metrics
        .health_check(&node.name, result.is_ok(), started.elapsed().as_secs_f64());
    let Some(changed) = node.record_check(
        result.is_ok(),
        settings.healthy_threshold,
        settings.unhealthy_threshold,
    ) else {
        return;
    };
    match (changed, &result) {
        (Health::Healthy, _) => {
            tracing::info!(node = %node.name, address = %node.address, "node is healthy: in rotation")
        }
        (_, Err(why)) => {
            tracing::warn!(node = %node.name, address = %node.address, %why, "node is unhealthy: out of rotation")
        }
        _ => {}
    }
}

async fn check_loop(shared: Arc<Shared>, node: Arc<NodeRuntime>) {
    loop {
        // A node the first round (or a previous config) already checked waits its turn.
        if node.health() != Health::Unknown {
            let interval = shared.snapshot().config.health_check.interval;
            tokio::time::sleep(interval).await;
        }
        check_once(&shared, &node).await;
    }
}

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Connecting, writing or reading failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The node answered something other than 2xx.
    #[error("answered {0:?}")]
    Status(String),
}

/// One check: `GET path` over a fresh connection; healthy on a 2xx status.
pub async fn check(address: SocketAddr, path: &str, timeout: Duration) -> Result<(), CheckError> {
    tokio::time::timeout(timeout, check_inner(address, path))
        .await
        .map_err(|_| CheckError::Timeout(timeout))?
}

async fn check_inner(address: SocketAddr, path: &str) -> Result<(), CheckError> {
    let stream = TcpStream::connect(address).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    let request = http::Request::get(path)
        .header(http::header::HOST, address.to_string())
        .header(http::header::USER_AGENT, "nakama-edge-health-check")
        .header(http::header::CONNECTION, "close")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(std::io::Error::other)?;
    // The connection is driven here, beside the request: it ends with the check.
    let exchange = async {
        let response = sender.send_request(request).await?;
        let status = response.status();
        // The body is not wanted; dropping it closes the connection.
        drop(response);
        Ok::<_, hyper::Error>(status)
    };
    tokio::pin!(conn, exchange);
    let status = tokio::select! {
        biased;
        status = &mut exchange => status,
        // A connection that ended has handed over its answer, if it got one.
        ended = &mut conn => match ended {
            Ok(()) => exchange.await,
            Err(e) => Err(e),
        },
    }
    .map_err(std::io::Error::other)?;
    if status.is_success() {
        Ok(())
    } else {
        Err(CheckError::Status(status.to_string()))
    }
}

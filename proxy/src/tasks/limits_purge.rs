//! The limits' purge: every second, keys whose budgets are full again are forgotten.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::state::Shared;

/// Forgets refilled keys every second, so that limiter memory follows the clients of the last
/// moments, not every client ever seen.
pub struct PurgeTask {
    shared: Arc<Shared>,
}

impl PurgeTask {
    /// The purge of `shared`'s current limits.
    pub fn new(shared: Arc<Shared>) -> Self {
        PurgeTask { shared }
    }
}

#[async_trait]
impl BackgroundService for PurgeTask {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => self.shared.snapshot().limits.purge(),
                _ = shutdown.changed() => return,
            }
        }
    }
}

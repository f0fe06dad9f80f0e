//! Drains another process of this edge wrote to `server.state_dir` (during an upgrade's
//! overlap), applied here.

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::state::Shared;

/// Applies drains another process of this edge wrote (during an upgrade's overlap).
pub struct DrainsWatch {
    shared: Arc<Shared>,
}

impl DrainsWatch {
    /// The watch of `shared`'s drains.
    pub fn new(shared: Arc<Shared>) -> Self {
        DrainsWatch { shared }
    }
}

#[async_trait]
impl BackgroundService for DrainsWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if self.shared.drains.path().is_none() {
            return;
        }
        loop {
            tokio::select! {
                _ = self.shared.drains.changed() => {}
                _ = shutdown.changed() => return,
            }
            if let Err(e) = self.shared.reload_drains() {
                tracing::warn!("{e}: the runtime drains in memory stay as they were");
            }
        }
    }
}

//! WebSockets closed with close frames over the second half of the grace period on shutdown.

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::http::ws_close::GOING_AWAY;
use crate::state::Shared;

/// On shutdown or upgrade: HTTP/1.1 responses close their connections from now on
/// ([`crate::state::Shared::shutting_down`]); WebSockets get their close frames over the second
/// half of the grace period (from 50 % to 90 % of it, evenly spread), so players do not all
/// reconnect in the same second, and none is cut by the process exiting. (Idle and partial
/// keep-alive connections are closed at 50 % too, by `accept::Entry::cleanup`.)
pub struct GracefulClose {
    shared: Arc<Shared>,
}

impl GracefulClose {
    /// Close `shared`'s WebSockets when the server shuts down.
    pub fn new(shared: Arc<Shared>) -> Self {
        GracefulClose { shared }
    }
}

#[async_trait]
impl BackgroundService for GracefulClose {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        self.shared
            .shutting_down
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let grace = self.shared.snapshot().config.server.grace_period;
        let start = tokio::time::Instant::now() + grace / 2;
        tokio::time::sleep_until(start).await;
        let open = self.shared.websockets.live();
        tracing::info!(
            websockets = open.len(),
            "shutting down: closing WebSockets with close frames"
        );
        let spread = grace * 2 / 5;
        for (i, closer) in open.iter().enumerate() {
            tokio::time::sleep_until(start + spread.mul_f64(i as f64 / open.len() as f64)).await;
            closer.request(GOING_AWAY);
        }
    }
}

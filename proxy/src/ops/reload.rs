//! Hot reload: the config file (and the certificate files it names) changing on disk, and
//! SIGHUP, both lead to [`Shared::reload`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nakama_edge_config::watch::{watch_files, FileWatch};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::state::Shared;

/// Writers rarely finish a file in one event; wait for this much quiet before reading it.
const SETTLE: Duration = Duration::from_millis(200);

/// The reload trigger.
pub struct Reloader {
    shared: Arc<Shared>,
}

impl Reloader {
    /// Reloads of `shared`'s config source.
    pub fn new(shared: Arc<Shared>) -> Self {
        Reloader { shared }
    }

    fn watch(&self, tx: &mpsc::Sender<()>) -> Option<FileWatch> {
        let files = self.shared.watched_files();
        if files.is_empty() {
            return None;
        }
        let tx = tx.clone();
        match watch_files(&files, move || {
            let _ = tx.try_send(());
        }) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!("{e}; changes will be picked up on SIGHUP only");
                None
            }
        }
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!("cannot handle SIGHUP: {e}");
                None
            }
        };
        let (tx, mut rx) = mpsc::channel(1);
        let mut watched = self.shared.watched_files();
        let mut _watch = self.watch(&tx);
        loop {
            tokio::select! {
                Some(()) = rx.recv() => {
                    // Let the writer finish: reload once the file has been quiet for SETTLE.
                    while tokio::time::timeout(SETTLE, rx.recv()).await.is_ok() {}
                    tracing::info!("config or certificate file changed");
                }
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP: reloading config");
                }
                _ = shutdown.changed() => return,
            }
            if self.shared.reload().is_ok() {
                let now = self.shared.watched_files();
                if now != watched {
                    watched = now;
                    _watch = self.watch(&tx);
                }
            }
        }
    }
}

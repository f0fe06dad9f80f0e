//! The discovery tasks: a watch per `[[discover]]` entry (look up, take the answer, wait,
//! again) and the sweep of departed nodes, updating [`crate::nodes::discovery::Discovered`] in the
//! shared state and rebuilding the pool when it changes. The lookups and the registry are in
//! [`crate::nodes::discovery`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nakama_edge_config::Discover;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::task::JoinHandle;

use crate::nodes::discovery::{lookup, next_lookup, resolver, LookupError, Records};
use crate::state::Shared;

/// How often departed nodes are looked at.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Empty answers in a row that empty an entry's set.
const EMPTY_ANSWERS_TO_EMPTY: u32 = 2;

/// Look every entry of the current config up once, at the same time, and take what they
/// found: what a starting process does before its first health checks, so that it routes
/// from its first connection (an upgrade hands over no failed requests). Returns how many
/// nodes were found.
pub async fn first_round(shared: &Shared) -> usize {
    let config = &shared.snapshot().config;
    let seal = &config.seal();
    let lookups = config.discover.iter().map(|entry| async move {
        let answer = match resolver(entry) {
            Ok(r) => lookup(&r, entry, seal).await,
            Err(e) => Err(e),
        };
        (entry, answer)
    });
    let mut found = 0;
    let mut changed = false;
    for (entry, answer) in futures_util::future::join_all(lookups).await {
        shared
            .metrics
            .discovery_lookup(&entry.name, result_label(&answer));
        match answer {
            Ok(Records::Found {
                addresses, refused, ..
            }) => {
                log_refused(entry, &refused);
                found += addresses.len();
                changed |= !shared.discovered.apply(entry, &addresses).is_empty();
            }
            Ok(Records::Empty) => {
                tracing::warn!(discover = %entry.name, lookup = %entry.source.name(), "no records yet: no node found by this entry")
            }
            Err(e) => {
                tracing::warn!(discover = %entry.name, lookup = %entry.source.name(), error = %e, "lookup failed: no node found by this entry until it succeeds")
            }
        }
    }
    if changed {
        shared.rebuild_pool();
    }
    found
}

fn result_label(answer: &Result<Records, LookupError>) -> &'static str {
    match answer {
        Ok(Records::Found { .. }) => "success",
        Ok(Records::Empty) => "empty",
        Err(e) => e.label(),
    }
}

fn log_refused(entry: &Discover, refused: &[String]) {
    if !refused.is_empty() {
        tracing::warn!(discover = %entry.name, refused = ?refused, "records left out: not nodes");
    }
}

/// Watch one entry: look it up, take the answer, wait, again.
async fn watch(shared: Arc<Shared>, entry: Discover) {
    let resolver = match resolver(&entry) {
        Ok(r) => r,
        Err(e) => {
            shared.metrics.discovery_lookup(&entry.name, e.label());
            tracing::error!(discover = %entry.name, error = %e, "cannot look anything up: this entry finds no node (set discover.resolvers)");
            return;
        }
    };
    let mut empty_answers = 0u32;
    let mut failing = false;
    let mut last_refused = Vec::new();
    loop {
        let seal = shared.snapshot().config.seal();
        let answer = lookup(&resolver, &entry, &seal).await;
        shared
            .metrics
            .discovery_lookup(&entry.name, result_label(&answer));
        let wait = match answer {
            Ok(Records::Found {
                addresses,
                valid_for,
                refused,
            }) => {
                if failing {
                    tracing::info!(discover = %entry.name, "lookups succeed again");
                    failing = false;
                }
                if refused != last_refused {
                    log_refused(&entry, &refused);
                    last_refused = refused;
                }
                empty_answers = 0;
                take(&shared, &entry, &addresses);
                next_lookup(&entry, valid_for)
            }
            Ok(Records::Empty) => {
                empty_answers = empty_answers.saturating_add(1);
                if empty_answers == EMPTY_ANSWERS_TO_EMPTY {
                    tracing::warn!(discover = %entry.name, lookup = %entry.source.name(), "no records, twice in a row: every node of this entry departs");
                    take(&shared, &entry, &[]);
                } else if empty_answers < EMPTY_ANSWERS_TO_EMPTY {
                    tracing::warn!(discover = %entry.name, lookup = %entry.source.name(), "no records: the nodes stay unless the next lookup says so too");
                }
                entry.interval
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(discover = %entry.name, lookup = %entry.source.name(), error = %e, "lookup failed: the last nodes found keep serving");
                    failing = true;
                }
                entry.interval
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Take an answer: apply it, and rebuild the pool if it changed anything.
fn take(shared: &Shared, entry: &Discover, addresses: &[SocketAddr]) {
    let change = shared.discovered.apply(entry, addresses);
    if change.is_empty() {
        return;
    }
    tracing::info!(
        discover = %entry.name,
        joined = ?change.joined,
        departed = ?change.departed,
        updated = ?change.updated,
        "discovered nodes changed: new ones join after a health check, departed ones drain"
    );
    shared.rebuild_pool();
}

/// The discovery supervisor: a watch per entry of the current config (restarted when the
/// entry changes), and the sweep of departed nodes.
pub struct Discovery {
    shared: Arc<Shared>,
}

impl Discovery {
    /// Discovery for the entries of `shared`'s snapshots.
    pub fn new(shared: Arc<Shared>) -> Self {
        Discovery { shared }
    }
}

#[async_trait]
impl BackgroundService for Discovery {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut watches: HashMap<String, (Discover, JoinHandle<()>)> = HashMap::new();
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let changed = self.shared.pool_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();

            let snapshot = self.shared.snapshot();
            let entries = &snapshot.config.discover;
            watches.retain(|name, (entry, task)| {
                let keep = entries.iter().any(|e| e == entry);
                if !keep {
                    tracing::debug!(discover = %name, "entry changed or removed: its watch stops");
                    task.abort();
                }
                keep
            });
            for entry in entries {
                watches.entry(entry.name.clone()).or_insert_with(|| {
                    (
                        entry.clone(),
                        tokio::spawn(watch(self.shared.clone(), entry.clone())),
                    )
                });
            }
            let drain_timeout = snapshot.config.routing.drain_timeout;
            drop(snapshot);

            tokio::select! {
                _ = &mut changed => {}
                _ = sweep.tick() => {
                    let removed = self.shared.discovered.sweep(&self.shared.snapshot().pool, drain_timeout);
                    if !removed.is_empty() {
                        tracing::info!(removed = ?removed, "departed nodes removed: their work is done or drain_timeout passed");
                        self.shared.rebuild_pool();
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        for (_, task) in watches.values() {
            task.abort();
        }
    }
}

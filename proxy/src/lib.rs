//! nakama-edge: the front door of a Nakama deployment, on pingora's server, with hyper for HTTP.
//!
//! ```text
//!  players ──TLS──► accept (firewall, rustls) ──► http (hyper: route, rules, pick node) ──► upstream (hyper) ──► Nakama nodes
//!                        ▲                              │  ▲                                                   ▲
//!                        │ snapshot (ArcSwap)           ▼  │                                                   │
//!  config file ──► state::Shared::reload            pool (health, drain,                                  health_check
//!                        │                            counts, selection)
//!  operators ───────► admin (metrics, nodes, drain)
//! ```
//!
//! Folders are the layers; each has a crate doc of its own with a table of its files.
//!
//! | folder or file | concern |
//! | --- | --- |
//! | [`server`] | wiring: pingora's server, the listeners, the background tasks |
//! | [`listen`] | where players come in: accept, firewall, PROXY protocol, players' TLS, the client connection and its deadlines |
//! | [`http`] | the HTTP layer both protocols share (hyper): admission, budgets, routes, header rules, forwarding and retries, WebSockets and their splice, close on shutdown |
//! | [`nodes`] | the Nakama nodes: pool and selection, shards, health checks, drains, discovery's lookups, connections to nodes, the retry budget |
//! | [`limits`] | per-client budgets, failed logins, session tokens |
//! | [`cluster`] | the link to the other edges through the cluster database |
//! | [`state`] | the config snapshot and reload: the shared state every request reads |
//! | [`tasks`] | background loops acting on the shared state from outside it: ACME, cluster sync, discovery, drains watch, graceful close, limits purge |
//! | [`ops`] | what operators see and touch: admin API, metrics, logs, reload, the allocator |
//! | [`exposed`] | the few names the binary, benches and fuzz targets use; all else is private to the crate |
//!
//! The rule that keeps the layers apart: a file that is part of the shared state never
//! imports the state ([`state`]); the loops that update it live in [`tasks`].
//! `proxy/tests/layout.rs` fails on any import circle.
//!
//! Where each config section (`docs/config.md`) takes effect:
//!
//! | section | file |
//! | --- | --- |
//! | `[server]` | `server.rs` (threads, grace period, upgrade socket); `state_dir` in `nodes/drains.rs` and `tasks/acme.rs` |
//! | `[listeners]` | `server.rs` (binding), `listen/accept.rs`; `http_redirect` in `http/route.rs` |
//! | `[tls]`, `[acme]` | `server.rs` (which certificate source), `tasks/acme.rs` |
//! | `[nakama]` | `limits/token.rs` (verifying), read through `state.rs` by `limits/mod.rs` and `http/` |
//! | `[[nodes]]` | `nodes/pool.rs` |
//! | `[[discover]]` | `nodes/discovery.rs` (lookups), `tasks/discovery.rs` (when) |
//! | `[health_check]` | `nodes/health_check.rs` |
//! | `[routing]` | `websocket_path` in `http/route.rs`; `sticky_key` and `drain_timeout` in `http/websocket.rs`, `nodes/pool.rs`, `http/ws_close.rs`; `mode` and `shard_var` in `http/target.rs` (built in `state.rs`) |
//! | `[[shards]]` | `nodes/shards.rs` (which node serves a shard), chosen per request in `http/target.rs` |
//! | `[firewall]` | `listen/firewall.rs` (all lists), applied in `listen/accept.rs` and `ops/admin.rs` |
//! | `[rate_limit]` | `limits/mod.rs`; `login_failures_per_minute` in `limits/logins.rs` |
//! | `[timeouts]` | `tls_handshake` in `listen/accept.rs`; `request_header`, `http_idle`, `websocket_idle` in `listen/client_conn/clock.rs`; `upstream_connect`, `upstream_read` in `http/forward.rs`; `request_body` in `http/body.rs` |
//! | `[log]` | `ops/logging.rs` |
//! | `[cluster]` | `cluster.rs`, `tasks/cluster_sync.rs` |

pub(crate) mod cluster;
pub(crate) mod http;
pub(crate) mod limits;
pub(crate) mod listen;
pub(crate) mod nodes;
pub(crate) mod ops;
pub(crate) mod server;
pub(crate) mod state;
pub(crate) mod tasks;

/// What other crates of the workspace reach, and nothing more: the `nakama-edge` binary
/// (`main.rs`), the benchmarks (`benches/`) and the fuzz targets (`fuzz/`). Everything else in
/// this crate is private to it.
pub mod exposed {
    pub use crate::http::{head, headers, route, ws_close};
    pub use crate::limits::token;
    /// The per-client budgets (benchmarks).
    pub mod limits {
        pub use crate::limits::{client_key, Limits, OpenConnections};
    }
    pub use crate::listen::{client_conn, firewall, proxy_protocol};
    pub use crate::nodes::discovery::describe;
    pub use crate::nodes::{drains, pool, retry_budget};
    pub use crate::ops::logging::init as init_logging;
    pub use crate::ops::metrics;
    pub use crate::server::{run, RunOptions};
    pub use crate::state::ConfigSource;
}

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
//! | module | concern |
//! | --- | --- |
//! | [`server`] | wiring: pingora server, listeners, background tasks |
//! | [`accept`] | the one accept path: firewall, TLS, then HTTP |
//! | [`http`] | the HTTP layer: hyper's server per connection, and each request's way to a node and back |
//! | [`upstream`] | connections to nodes: hyper's client, kept per worker thread |
//! | [`tunnel`] | WebSockets past their upgrade: the edge's own lean splice |
//! | [`player_tls`] | a player's TLS stream: rustls over the socket |
//! | [`client_conn`] | a player's connection: head, idle and WebSocket deadlines, its slot |
//! | [`closing`] | a listener's signal to its connections to close what is idle (shutdown) |
//! | [`proxy_protocol`] | PROXY protocol v1/v2 from trusted load balancers |
//! | [`limits`] | per-client rate and connection limits: per user (verified token), else per IP |
//! | [`logins`] | failed logins per account identifier (brute force) |
//! | [`retry_budget`] | how many requests may be retried on another node |
//! | [`route`] | what a request is, from its head |
//! | [`headers`] | which headers cross the edge: address claims and hop-by-hop headers stopped |
//! | [`pool`] | nodes, their state, and node selection |
//! | [`discovery`] | nodes found in DNS (`[[discover]]`): lookups, departures, the sweep |
//! | [`health_check`] | active health checks, and the first round before serving |
//! | [`drains`] | runtime drains, kept in `server.state_dir` across restarts and upgrades |
//! | [`cluster`] | several edges: what this one shares through the cluster database, and learns |
//! | [`token`] | the user id in a Nakama session token |
//! | [`token_alarm`] | the WARN when most session tokens fail (a wrong `[nakama] session_key`) |
//! | [`firewall`] | CIDR allow/deny |
//! | [`acme`] | obtaining and renewing the certificate (the work itself is in `nakama-edge-certs`) |
//! | [`state`] | the config snapshot and reload: the shared state every request reads |
//! | [`tasks`] | background tasks acting on the shared state from outside it (cluster sync, discovery watches, drains watch, graceful close, limits purge) |
//! | [`reload`] | file watching and SIGHUP |
//! | [`admin`] | the admin API |
//! | [`metrics`] | Prometheus metrics |
//! | [`logging`] | log level and format, the access log |
//! | [`allocator`] | giving memory back after a burst: worker threads flush their allocator caches |
//! | [`ws_close`] | WebSockets closed at a drain's timeout and on shutdown, with a close frame |
//!
//! Where each config section (`docs/config.md`) takes effect:
//!
//! | section | file |
//! | --- | --- |
//! | `[server]` | [`server`] (threads, grace period, upgrade socket); `state_dir` in [`drains`] and [`acme`] |
//! | `[listeners]` | [`server`] (binding), [`accept`]; `http_redirect` in [`route`] |
//! | `[tls]`, `[acme]` | [`server`] (which certificate source), [`acme`] |
//! | `[nakama]` | [`token`] (verifying), read through [`state`] by [`limits`] and [`http`] |
//! | `[[nodes]]` | [`pool`] |
//! | `[[discover]]` | [`discovery`] |
//! | `[health_check]` | [`health_check`] |
//! | `[routing]` | `websocket_path` in [`route`]; `sticky_key` and `drain_timeout` in `http/websocket.rs`, [`pool`], [`ws_close`] |
//! | `[firewall]` | [`firewall`] (all lists), applied in [`accept`] and [`admin`] |
//! | `[rate_limit]` | [`limits`]; `login_failures_per_minute` in [`logins`] |
//! | `[timeouts]` | `tls_handshake` in [`accept`]; `request_header`, `http_idle`, `websocket_idle` in [`client_conn`]; `upstream_connect`, `upstream_read` in `http/forward.rs`; `request_body` in `http/body.rs` |
//! | `[log]` | [`logging`] |
//! | `[cluster]` | [`cluster`] |

pub mod accept;
pub mod acme;
pub mod admin;
pub mod allocator;
pub mod client_conn;
pub mod closing;
pub mod cluster;
pub mod discovery;
pub mod drains;
pub mod firewall;
pub mod headers;
pub mod health_check;
pub mod http;
pub mod limits;
pub mod logging;
pub mod logins;
pub mod metrics;
pub mod player_tls;
pub mod pool;
pub mod proxy_protocol;
pub mod reload;
pub mod retry_budget;
pub mod route;
pub mod server;
pub mod state;
pub mod tasks;
pub mod token;
pub mod token_alarm;
pub mod tunnel;
pub mod upstream;
pub mod ws_close;

//! The Prometheus metrics (docs/metrics.md), registered once, rendered on `/metrics`.
//!
//! Per-request counters are looked up by label values that are all `&'static str` (status
//! codes come from a table), so counting a request allocates nothing. Node gauges are derived
//! from the live pool at scrape time, so they can never drift from the state they describe.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use nakama_edge_certs::info::CertInfo;
use nakama_edge_config::Discover;
use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::http::route::Route;
use crate::limits::token::Refused;
use crate::limits::token_alarm::{Counts, TokenAlarm};
use crate::nodes::pool::{Origin, Pool};

/// Why a connection was refused before any HTTP was spoken.
#[derive(Debug, Clone, Copy)]
pub enum RejectReason {
    /// The firewall's deny/allow lists.
    Firewall,
    /// New connections per second from one client.
    RateLimit,
    /// Concurrent connections from one client.
    ConnectionLimit,
    /// The console listener, from a peer not in `console_allow`.
    Console,
    /// A player (verified session token) over their request budget.
    User,
    /// An account over its failed logins.
    Login,
    /// A WebSocket sending more messages than its budget, closed with 1008.
    WebsocketFlood,
}

impl RejectReason {
    fn as_str(self) -> &'static str {
        match self {
            RejectReason::Firewall => "firewall",
            RejectReason::RateLimit => "rate_limit",
            RejectReason::ConnectionLimit => "connection_limit",
            RejectReason::Console => "console",
            RejectReason::User => "user",
            RejectReason::Login => "login",
            RejectReason::WebsocketFlood => "websocket_flood",
        }
    }
}

/// What an ACME attempt was for.
#[derive(Debug, Clone, Copy)]
pub enum AcmeAttempt {
    /// The first certificate for the domains.
    Issue,
    /// A replacement for the served certificate.
    Renew,
}

impl AcmeAttempt {
    /// The metric label and the word for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AcmeAttempt::Issue => "issue",
            AcmeAttempt::Renew => "renew",
        }
    }
}

/// Every metric the edge exports.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    durations: HistogramVec,
    websockets: IntGaugeVec,
    node_up: IntGaugeVec,
    node_draining: IntGaugeVec,
    rejected: IntCounterVec,
    tls_ok: IntCounter,
    tls_error: IntCounter,
    reload_success: IntCounter,
    reload_failure: IntCounter,
    acme_attempts: IntCounterVec,
    certificate_expiry: GaugeVec,
    upstream_connect_failures: IntCounterVec,
    upstream_retries: IntCounterVec,
    retries_over_budget: IntCounter,
    health_checks: IntCounterVec,
    health_check_duration: HistogramVec,
    in_flight: IntGauge,
    open_connections: IntGaugeVec,
    tls_failures: IntCounterVec,
    websocket_duration: Histogram,
    /// Bumped when series are removed, so that handles kept per thread are let go.
    series_generation: AtomicU64,
    /// Per-route series, resolved once (a label lookup costs a hash and a lock per request):
    /// durations when first observed, bytes at start.
    route_durations: [OnceLock<Histogram>; Route::ALL.len()],
    route_received: Vec<IntCounter>,
    route_sent: Vec<IntCounter>,
    discovery_lookups: IntCounterVec,
    discovered_nodes: IntGaugeVec,
    tokens_verified: IntCounter,
    /// By [`Refused`]'s discriminant.
    tokens_refused: [IntCounter; Refused::ALL.len()],
    token_alarm: TokenAlarm,
    shard_requests: IntCounterVec,
    shard_websockets: IntGaugeVec,
    shard_on_standby: IntGaugeVec,
}

/// One shard's series (`routing.mode = "shards"`), resolved once per snapshot: requests sent
/// to it, and its open WebSockets.
#[derive(Clone)]
pub struct ShardSeries {
    /// `nakama_edge_shard_requests_total{shard}`.
    pub requests: IntCounter,
    websockets: IntGauge,
}

impl ShardSeries {
    /// Count a WebSocket of the shard while the guard lives.
    pub fn open_websocket(&self) -> OpenShardSocket {
        self.websockets.inc();
        OpenShardSocket(self.websockets.clone())
    }
}

/// Counts one open WebSocket of a shard while it lives.
pub struct OpenShardSocket(IntGauge);

impl Drop for OpenShardSocket {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Why a TLS handshake failed: a bounded set, read from the error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// Not finished within `timeouts.tls_handshake`.
    Timeout,
    /// Not TLS, or malformed.
    BadMessage,
    /// No protocol version or cipher suite in common.
    Incompatible,
    /// The client sent an alert (it did not like our certificate, say).
    Alert,
    /// Anything else.
    Other,
}

impl TlsFailure {
    const ALL: [TlsFailure; 5] = [
        TlsFailure::Timeout,
        TlsFailure::BadMessage,
        TlsFailure::Incompatible,
        TlsFailure::Alert,
        TlsFailure::Other,
    ];

    fn as_str(self) -> &'static str {
        match self {
            TlsFailure::Timeout => "timeout",
            TlsFailure::BadMessage => "bad_message",
            TlsFailure::Incompatible => "incompatible",
            TlsFailure::Alert => "alert",
            TlsFailure::Other => "other",
        }
    }

    /// The reason in a handshake error's text (the handshake reports rustls's error as text).
    pub fn of(error_text: &str) -> TlsFailure {
        if error_text.contains("corrupt message")
            || error_text.contains("InvalidMessage")
            || error_text.contains("InvalidContentType")
        {
            TlsFailure::BadMessage
        } else if error_text.contains("incompatible")
            || error_text.contains("Incompatible")
            || error_text.contains("NoCipherSuitesInCommon")
        {
            TlsFailure::Incompatible
        } else if error_text.contains("alert") || error_text.contains("Alert") {
            TlsFailure::Alert
        } else {
            TlsFailure::Other
        }
    }
}

/// Counts one request in flight while it lives.
pub struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Counts one open connection of a listener while it lives.
pub struct OpenConnection(IntGauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn metric_error(e: prometheus::Error) -> std::io::Error {
    std::io::Error::other(e)
}

/// The `nakama_edge_cluster_*` gauges (with `[cluster]`), which the cluster link sets.
#[derive(Debug, Clone)]
pub struct ClusterGauges {
    /// `nakama_edge_cluster_database_up`.
    pub database_up: IntGauge,
    /// `nakama_edge_cluster_edges`.
    pub edges: IntGauge,
    /// `nakama_edge_cluster_routing_mismatch`.
    pub routing_mismatch: IntGauge,
}

impl Metrics {
    /// Register every metric.
    pub fn new() -> Result<Metrics, std::io::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "nakama_edge_http_requests_total",
                "HTTP requests answered, by status code, route and node.",
            ),
            &["code", "route", "node"],
        )
        .map_err(metric_error)?;
        let durations = HistogramVec::new(
            HistogramOpts::new(
                "nakama_edge_http_request_duration_seconds",
                "Time from request to the end of the response, by route.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["route"],
        )
        .map_err(metric_error)?;
        let websockets = IntGaugeVec::new(
            Opts::new(
                "nakama_edge_websocket_connections",
                "Open WebSockets, by node.",
            ),
            &["node"],
        )
        .map_err(metric_error)?;
        let node_up = IntGaugeVec::new(
            Opts::new(
                "nakama_edge_node_up",
                "1 when the node passes its health checks.",
            ),
            &["node"],
        )
        .map_err(metric_error)?;
        let node_draining = IntGaugeVec::new(
            Opts::new(
                "nakama_edge_node_draining",
                "1 when the node is drained (config or admin API).",
            ),
            &["node"],
        )
        .map_err(metric_error)?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "nakama_edge_connections_rejected_total",
                "Connections refused before HTTP, and requests or WebSockets refused by the limits, by reason (firewall, rate_limit, connection_limit, console, user, login, websocket_flood).",
            ),
            &["reason"],
        )
        .map_err(metric_error)?;
        let tls = IntCounterVec::new(
            Opts::new(
                "nakama_edge_tls_handshakes_total",
                "TLS handshakes, by result.",
            ),
            &["result"],
        )
        .map_err(metric_error)?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "nakama_edge_config_reloads_total",
                "Config reloads, by result.",
            ),
            &["result"],
        )
        .map_err(metric_error)?;
        let acme_attempts = IntCounterVec::new(
            Opts::new(
                "nakama_edge_acme_attempts_total",
                "ACME certificate orders, by kind (issue, renew) and result.",
            ),
            &["kind", "result"],
        )
        .map_err(metric_error)?;
        let certificate_expiry = GaugeVec::new(
            Opts::new(
                "nakama_edge_certificate_expiry_timestamp_seconds",
                "When the served certificate expires, by domain.",
            ),
            &["domain"],
        )
        .map_err(metric_error)?;
        let by = |name: &str, help: &str, label: &str| {
            IntCounterVec::new(Opts::new(name, help), &[label])
        };
        let upstream_connect_failures = by(
            "nakama_edge_upstream_connect_failures_total",
            "Connections to a node that failed (refused, timed out), by node.",
            "node",
        )
        .map_err(metric_error)?;
        let upstream_retries = by(
            "nakama_edge_upstream_retries_total",
            "Requests retried on another node after this node failed them, by node.",
            "node",
        )
        .map_err(metric_error)?;
        let retries_over_budget = IntCounter::new(
            "nakama_edge_retries_over_budget_total",
            "Failed requests not retried on another node because the retry budget (20 % of requests, at least 10 a second) was spent.",
        )
        .map_err(metric_error)?;
        let session_tokens = IntCounterVec::new(
            Opts::new(
                "nakama_edge_session_tokens_total",
                "Session tokens checked against [nakama] session_key, by result (verified, bad_signature, expired, malformed). Mostly bad_signature: the key is not Nakama's session.encryption_key.",
            ),
            &["result"],
        )
        .map_err(metric_error)?;
        let health_checks = IntCounterVec::new(
            Opts::new(
                "nakama_edge_health_checks_total",
                "Active health checks, by node and result.",
            ),
            &["node", "result"],
        )
        .map_err(metric_error)?;
        let health_check_duration = HistogramVec::new(
            HistogramOpts::new(
                "nakama_edge_health_check_duration_seconds",
                "Time a health check took, by node.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["node"],
        )
        .map_err(metric_error)?;
        let discovery_lookups = IntCounterVec::new(
            Opts::new(
                "nakama_edge_discovery_lookups_total",
                "DNS lookups of [[discover]] entries, by entry and result (success, empty, failure, timeout).",
            ),
            &["discover", "result"],
        )
        .map_err(metric_error)?;
        let discovered_nodes = IntGaugeVec::new(
            Opts::new(
                "nakama_edge_discovered_nodes",
                "Nodes a [[discover]] entry finds in its records now (not counting departed ones still draining).",
            ),
            &["discover"],
        )
        .map_err(metric_error)?;
        let in_flight = IntGauge::new(
            "nakama_edge_http_requests_in_flight",
            "Requests being answered now.",
        )
        .map_err(metric_error)?;
        let open_connections = IntGaugeVec::new(
            Opts::new(
                "nakama_edge_open_connections",
                "Open client connections, by listener.",
            ),
            &["listener"],
        )
        .map_err(metric_error)?;
        let tls_failures = by(
            "nakama_edge_tls_handshake_failures_total",
            "Failed TLS handshakes, by reason (timeout, bad_message, incompatible, alert, other).",
            "reason",
        )
        .map_err(metric_error)?;
        let websocket_duration = Histogram::with_opts(
            HistogramOpts::new(
                "nakama_edge_websocket_session_duration_seconds",
                "How long WebSocket sessions lasted.",
            )
            .buckets(vec![
                1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0,
            ]),
        )
        .map_err(metric_error)?;
        let bytes_received = by(
            "nakama_edge_received_bytes_total",
            "Body bytes received from clients (WebSocket frames included), by route.",
            "route",
        )
        .map_err(metric_error)?;
        let bytes_sent = by(
            "nakama_edge_sent_bytes_total",
            "Body bytes sent to clients (WebSocket frames included), by route.",
            "route",
        )
        .map_err(metric_error)?;
        let start_time = Gauge::new(
            "nakama_edge_start_time_seconds",
            "When the process started, in Unix seconds.",
        )
        .map_err(metric_error)?;
        start_time.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        let build_info = IntGaugeVec::new(
            Opts::new(
                "nakama_edge_build_info",
                "Always 1; the labels say which build runs.",
            ),
            &["version"],
        )
        .map_err(metric_error)?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for failure in TlsFailure::ALL {
            tls_failures.with_label_values(&[failure.as_str()]);
        }
        let route_received = Route::ALL
            .iter()
            .map(|route| bytes_received.with_label_values(&[route.as_str()]))
            .collect();
        let route_sent = Route::ALL
            .iter()
            .map(|route| bytes_sent.with_label_values(&[route.as_str()]))
            .collect();
        let shard_requests = IntCounterVec::new(
            Opts::new(
                "nakama_edge_shard_requests_total",
                "Requests and WebSocket upgrades routed by shard (routing.mode = \"shards\"); \
                 \"none\": round-robin, without a verified session token.",
            ),
            &["shard"],
        )
        .map_err(metric_error)?;
        let shard_websockets = IntGaugeVec::new(
            Opts::new(
                "nakama_edge_shard_websockets",
                "Open WebSockets by shard (routing.mode = \"shards\").",
            ),
            &["shard"],
        )
        .map_err(metric_error)?;
        let shard_on_standby = IntGaugeVec::new(
            Opts::new(
                "nakama_edge_shard_on_standby",
                "1 while a shard's new work goes to its standby (its node down or drained).",
            ),
            &["shard"],
        )
        .map_err(metric_error)?;
        for c in [
            Box::new(shard_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(shard_websockets.clone()),
            Box::new(shard_on_standby.clone()),
        ] {
            registry.register(c).map_err(metric_error)?;
        }
        for c in [
            Box::new(upstream_connect_failures.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(upstream_retries.clone()),
            Box::new(retries_over_budget.clone()),
            Box::new(session_tokens.clone()),
            Box::new(health_checks.clone()),
            Box::new(health_check_duration.clone()),
            Box::new(in_flight.clone()),
            Box::new(open_connections.clone()),
            Box::new(tls_failures.clone()),
            Box::new(websocket_duration.clone()),
            Box::new(bytes_received.clone()),
            Box::new(bytes_sent.clone()),
            Box::new(discovery_lookups.clone()),
            Box::new(discovered_nodes.clone()),
            Box::new(start_time),
            Box::new(build_info),
        ] {
            registry.register(c).map_err(metric_error)?;
        }
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(durations.clone()),
            Box::new(websockets.clone()),
            Box::new(node_up.clone()),
            Box::new(node_draining.clone()),
            Box::new(rejected.clone()),
            Box::new(tls.clone()),
            Box::new(reloads.clone()),
            Box::new(acme_attempts.clone()),
            Box::new(certificate_expiry.clone()),
        ] {
            registry.register(c).map_err(metric_error)?;
        }
        for route in Route::ALL {
            durations.with_label_values(&[route.as_str()]);
        }
        for reason in [
            RejectReason::Firewall,
            RejectReason::RateLimit,
            RejectReason::ConnectionLimit,
            RejectReason::Console,
            RejectReason::User,
            RejectReason::Login,
            RejectReason::WebsocketFlood,
        ] {
            rejected.with_label_values(&[reason.as_str()]);
        }
        Ok(Metrics {
            tokens_verified: session_tokens.with_label_values(&["verified"]),
            tokens_refused: Refused::ALL.map(|r| session_tokens.with_label_values(&[r.as_str()])),
            token_alarm: TokenAlarm::new(Instant::now()),
            shard_requests,
            shard_websockets,
            shard_on_standby,
            tls_ok: tls.with_label_values(&["ok"]),
            tls_error: tls.with_label_values(&["error"]),
            reload_success: reloads.with_label_values(&["success"]),
            reload_failure: reloads.with_label_values(&["failure"]),
            registry,
            requests,
            durations,
            websockets,
            node_up,
            node_draining,
            rejected,
            acme_attempts,
            certificate_expiry,
            upstream_connect_failures,
            upstream_retries,
            retries_over_budget,
            health_checks,
            health_check_duration,
            in_flight,
            open_connections,
            tls_failures,
            websocket_duration,
            series_generation: AtomicU64::new(0),
            route_durations: Default::default(),
            route_received,
            route_sent,
            discovery_lookups,
            discovered_nodes,
        })
    }

    /// One lookup of the `[[discover]]` entry `entry`; `result` is `success`, `empty`,
    /// `failure` or `timeout`.
    pub fn discovery_lookup(&self, entry: &str, result: &str) {
        self.discovery_lookups
            .with_label_values(&[entry, result])
            .inc();
    }

    /// Drop every series of the node `name`: it has left the pool (gone from DNS and drained,
    /// or removed from the config), so it is gone from the metrics too.
    pub fn forget_node(&self, name: &str) {
        self.series_generation.fetch_add(1, Ordering::Relaxed);
        forget(&self.requests, name);
        forget(&self.health_checks, name);
        forget(&self.health_check_duration, name);
        forget(&self.upstream_connect_failures, name);
        forget(&self.upstream_retries, name);
    }

    /// The series of shard `name`.
    pub fn shard_series(&self, name: &str) -> ShardSeries {
        ShardSeries {
            requests: self.shard_requests.with_label_values(&[name]),
            websockets: self.shard_websockets.with_label_values(&[name]),
        }
    }

    /// Drop the series of shard `name`: no longer in the config. (A WebSocket still open on
    /// it counts down a detached gauge.)
    pub fn forget_shard(&self, name: &str) {
        let _ = self.shard_requests.remove_label_values(&[name]);
        let _ = self.shard_websockets.remove_label_values(&[name]);
        let _ = self.shard_on_standby.remove_label_values(&[name]);
    }

    /// A connection to `node` failed.
    pub fn upstream_connect_failure(&self, node: &str) {
        self.upstream_connect_failures
            .with_label_values(&[node])
            .inc();
    }

    /// A request `node` failed is retried elsewhere.
    pub fn upstream_retry(&self, node: &str) {
        self.upstream_retries.with_label_values(&[node]).inc();
    }

    /// Register the `nakama_edge_cluster_*` gauges (only with `[cluster]`: a lone edge has no
    /// database to report down).
    pub fn cluster_gauges(&self) -> Result<ClusterGauges, std::io::Error> {
        let gauge = |name: &str, help: &str| -> Result<IntGauge, std::io::Error> {
            let g = IntGauge::new(name, help).map_err(metric_error)?;
            self.registry
                .register(Box::new(g.clone()))
                .map_err(metric_error)?;
            Ok(g)
        };
        Ok(ClusterGauges {
            database_up: gauge(
                "nakama_edge_cluster_database_up",
                "1 when the cluster database answered this edge's last poll.",
            )?,
            edges: gauge(
                "nakama_edge_cluster_edges",
                "Live edges seen in the cluster database (this one included).",
            )?,
            routing_mismatch: gauge(
                "nakama_edge_cluster_routing_mismatch",
                "1 when live edges have different routing configs (nodes, weights, sticky key).",
            )?,
        })
    }

    /// A failed request that the retry budget did not let go to another node.
    pub fn retry_over_budget(&self) {
        self.retries_over_budget.inc();
    }

    /// One active health check of `node`.
    pub fn health_check(&self, node: &str, ok: bool, seconds: f64) {
        self.health_checks
            .with_label_values(&[node, if ok { "success" } else { "failure" }])
            .inc();
        self.health_check_duration
            .with_label_values(&[node])
            .observe(seconds);
    }

    /// A request in flight until the guard drops.
    pub fn request_started(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// An open connection of `listener` until the guard drops.
    pub fn connection_opened(&self, listener: &str) -> OpenConnection {
        let gauge = self.open_connections.with_label_values(&[listener]);
        gauge.inc();
        OpenConnection(gauge)
    }

    /// Client connections open on the player and console listeners, in whatever state
    /// (handshake, request, WebSocket, lingering close); the admin API's are not counted.
    pub fn client_connections(&self) -> i64 {
        self.open_connections
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|metric| metric.get_gauge().get_value() as i64)
            .sum()
    }

    /// A failed TLS handshake.
    pub fn tls_failure(&self, reason: TlsFailure) {
        self.tls_error.inc();
        self.tls_failures
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// A WebSocket session ended after `seconds`.
    pub fn websocket_closed(&self, seconds: f64) {
        self.websocket_duration.observe(seconds);
    }

    /// Body bytes of one request or WebSocket session.
    pub fn bytes(&self, route: Route, received: usize, sent: usize) {
        if received > 0 {
            self.route_received[route.index()].inc_by(received as u64);
        }
        if sent > 0 {
            self.route_sent[route.index()].inc_by(sent as u64);
        }
    }

    /// The `requests` series of `(code, route, node)`: a label lookup hashes three strings and
    /// takes a lock, so the handles are kept per worker thread for the codes and nodes it sees.
    fn count_request(&self, code: u16, route: Route, node: &str) {
        thread_local! {
            static SERIES: RefCell<SeriesCache> = RefCell::new(SeriesCache::default());
        }
        let owner = std::ptr::from_ref(self) as usize;
        let generation = self.series_generation.load(Ordering::Relaxed);
        SERIES.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.owner != owner || cache.generation != generation || cache.series.len() > 512 {
                cache.series.clear();
                cache.owner = owner;
                cache.generation = generation;
            }
            let key = (code, route.index() as u8);
            if let Some((_, _, counter)) = cache
                .series
                .iter()
                .find(|(k, name, _)| *k == key && **name == *node)
            {
                counter.inc();
                return;
            }
            let counter =
                self.requests
                    .with_label_values(&[code_label(code), route.as_str(), node]);
            counter.inc();
            cache.series.push((key, node.into(), counter));
        })
    }

    /// Count one answered request.
    pub fn request(&self, code: u16, route: Route, node: &str, seconds: f64) {
        self.count_request(code, route, node);
        self.route_durations[route.index()]
            .get_or_init(|| self.durations.with_label_values(&[route.as_str()]))
            .observe(seconds);
    }

    /// Count one session token's verification; on a bad signature, a WARN when most tokens
    /// fail ([`TokenAlarm`]).
    pub fn session_token(&self, verified: Result<(), Refused>) {
        match verified {
            Ok(()) => self.tokens_verified.inc(),
            Err(refused) => {
                self.tokens_refused[refused as usize].inc();
                if refused == Refused::BadSignature {
                    let counts = Counts {
                        verified: self.tokens_verified.get(),
                        bad_signature: self.tokens_refused[Refused::BadSignature as usize].get(),
                    };
                    if let Some(text) = self.token_alarm.bad_signature(counts, Instant::now()) {
                        tracing::warn!("{text}");
                    }
                }
            }
        }
    }

    /// Count one refused connection.
    pub fn rejected(&self, reason: RejectReason) {
        self.rejected.with_label_values(&[reason.as_str()]).inc();
    }

    /// Count one TLS handshake.
    pub fn tls_handshake(&self, ok: bool) {
        if ok { &self.tls_ok } else { &self.tls_error }.inc();
    }

    /// Count one config reload.
    pub fn config_reload(&self, ok: bool) {
        if ok {
            &self.reload_success
        } else {
            &self.reload_failure
        }
        .inc();
    }

    /// Count one ACME order.
    pub fn acme_attempt(&self, kind: AcmeAttempt, ok: bool) {
        self.acme_attempts
            .with_label_values(&[kind.as_str(), if ok { "success" } else { "failure" }])
            .inc();
    }

    /// The text exposition, with node gauges read from `pool` and certificate expiry from
    /// `certificate` (the served one, when it is not a placeholder).
    /// `on_standby`: each shard's name, and whether its standby takes its new work.
    pub fn render<'a>(
        &self,
        pool: &Pool,
        discover: &[Discover],
        certificate: Option<&CertInfo>,
        on_standby: impl Iterator<Item = (&'a str, bool)>,
    ) -> Vec<u8> {
        for (shard, standby) in on_standby {
            self.shard_on_standby
                .with_label_values(&[shard])
                .set(standby as i64);
        }
        for g in [
            &self.websockets,
            &self.node_up,
            &self.node_draining,
            &self.discovered_nodes,
        ] {
            g.reset();
        }
        for entry in discover {
            self.discovered_nodes.with_label_values(&[&entry.name]);
        }
        self.certificate_expiry.reset();
        if let Some(info) = certificate {
            for domain in &info.names {
                self.certificate_expiry
                    .with_label_values(&[domain.as_str()])
                    .set(info.expiry_timestamp());
            }
        }
        for n in &pool.nodes {
            let name = [n.config.name.as_str()];
            let rt = &n.runtime;
            self.websockets
                .with_label_values(&name)
                .set(rt.websockets());
            self.node_up
                .with_label_values(&name)
                .set((rt.health() == crate::nodes::pool::Health::Healthy) as i64);
            self.node_draining
                .with_label_values(&name)
                .set(rt.is_draining() as i64);
            if let Origin::Discovered(entry) = &n.origin {
                self.discovered_nodes.with_label_values(&[entry]).inc();
            }
        }
        let mut out = Vec::with_capacity(8192);
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// Remove the series of `vec` whose `node` label is `node`.
fn forget<T: MetricVecBuilder>(vec: &MetricVec<T>, node: &str) {
    for family in vec.collect() {
        for metric in family.get_metric() {
            let labels = metric.get_label();
            if labels
                .iter()
                .any(|l| l.name() == "node" && l.value() == node)
            {
                let values: HashMap<&str, &str> =
                    labels.iter().map(|l| (l.name(), l.value())).collect();
                // Gone already (another scrape raced it): nothing to do.
                let _ = vec.remove(&values);
            }
        }
    }
}

/// The `code` label of a status code, without formatting per request.
/// A worker thread's `requests` series handles.
#[derive(Default)]
struct SeriesCache {
    owner: usize,
    generation: u64,
    series: Vec<((u16, u8), Box<str>, IntCounter)>,
}

fn code_label(code: u16) -> &'static str {
    static LABELS: OnceLock<Vec<String>> = OnceLock::new();
    let labels = LABELS.get_or_init(|| (0..1000).map(|c| c.to_string()).collect());
    labels.get(code as usize).map_or("other", String::as_str)
}

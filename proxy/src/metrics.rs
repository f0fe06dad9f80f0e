//! The Prometheus metrics of `CONTRACT.md`, registered once, rendered on `/metrics`.
//!
//! Per-request counters are looked up by label values that are all `&'static str` (status
//! codes come from a table), so counting a request allocates nothing. Node gauges are derived
//! from the live pool at scrape time, so they can never drift from the state they describe.

use std::sync::OnceLock;

use nakama_edge_certs::info::CertInfo;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::pool::Pool;
use crate::route::Route;

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
}

impl RejectReason {
    fn as_str(self) -> &'static str {
        match self {
            RejectReason::Firewall => "firewall",
            RejectReason::RateLimit => "rate_limit",
            RejectReason::ConnectionLimit => "connection_limit",
            RejectReason::Console => "console",
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
}

fn metric_error(e: prometheus::Error) -> std::io::Error {
    std::io::Error::other(e)
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
                "Connections refused before HTTP, by reason.",
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
        ] {
            rejected.with_label_values(&[reason.as_str()]);
        }
        Ok(Metrics {
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
        })
    }

    /// Count one answered request.
    pub fn request(&self, code: u16, route: Route, node: &str, seconds: f64) {
        self.requests
            .with_label_values(&[code_label(code), route.as_str(), node])
            .inc();
        self.durations
            .with_label_values(&[route.as_str()])
            .observe(seconds);
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
    pub fn render(&self, pool: &Pool, certificate: Option<&CertInfo>) -> Vec<u8> {
        for g in [&self.websockets, &self.node_up, &self.node_draining] {
            g.reset();
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
                .set((rt.health() == crate::pool::Health::Healthy) as i64);
            self.node_draining
                .with_label_values(&name)
                .set(rt.is_draining() as i64);
        }
        let mut out = Vec::with_capacity(8192);
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// The `code` label of a status code, without formatting per request.
fn code_label(code: u16) -> &'static str {
    static LABELS: OnceLock<Vec<String>> = OnceLock::new();
    let labels = LABELS.get_or_init(|| (0..1000).map(|c| c.to_string()).collect());
    labels.get(code as usize).map_or("other", String::as_str)
}

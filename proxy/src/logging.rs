//! Logs: level and format from `[log]`, both changeable on reload; the access log.
//!
//! `NAKAMA_EDGE_LOG`, when set, overrides `log.level` (for debugging a running setup without
//! editing its config).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use nakama_edge_config::{Log, LogFormat};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// The tracing target of access-log lines.
pub const ACCESS_TARGET: &str = "nakama_edge::access";

static JSON: AtomicBool = AtomicBool::new(false);
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// The HTTP and TLS libraries write whole request heads (query strings with session tokens
/// and `http_key`, Authorization headers) at debug and trace: whatever level is asked for,
/// they stay at info.
const NO_SECRETS: &str = "pingora_core=info,pingora_proxy=info,pingora_http=info,pingora_pool=info,\
                          pingora_rustls=info,h2=info,hyper=info,hyper_util=info,rustls=info,tungstenite=info";

/// Lines the libraries write per request or per connection (a client gone mid-response or
/// mid-handshake, a node's error answer, pingora's benign connection-pool race, issue #998), at
/// ERROR and WARN.
/// The access log and the metrics already show each of them, and the edge logs what an
/// operator can act on (a node refusing connections, a node out of rotation) itself: they are
/// off unless `log.level` names these targets again.
const PER_REQUEST: &str = "pingora_proxy=off,pingora_core::connectors=off,pingora_core::apps=off";

fn filter(log: &Log) -> EnvFilter {
    let spec = std::env::var("NAKAMA_EDGE_LOG").unwrap_or_else(|_| log.level.clone());
    let asked = |spec: &str| EnvFilter::try_new(format!("{PER_REQUEST},{spec}"));
    asked(&spec).unwrap_or_else(|_| asked("info").unwrap_or_else(|_| EnvFilter::new("info")))
}

/// The second filter every line passes: [`NO_SECRETS`], whatever `log.level` asks for.
fn no_secrets() -> EnvFilter {
    EnvFilter::new(format!("trace,{NO_SECRETS}"))
}

/// Human or JSON, chosen per line from a switch that a reload flips.
struct Switchable {
    human: Format,
    json: Format<Json>,
}

impl<S, N> FormatEvent<S, N> for Switchable
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        if JSON.load(Ordering::Relaxed) {
            self.json.format_event(ctx, writer, event)
        } else {
            self.human.format_event(ctx, writer, event)
        }
    }
}

/// Install the process's logger, configured by `log`. Lines go to stderr (the journal under
/// systemd); colours only on a terminal.
pub fn init(log: &Log) {
    JSON.store(log.format == LogFormat::Json, Ordering::Relaxed);
    let (filter_layer, handle) = reload::Layer::new(filter(log));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .event_format(Switchable {
            human: Format::default().with_ansi(ansi),
            json: Format::default().json().flatten_event(true),
        })
        .with_writer(std::io::stderr);
    if tracing_subscriber::registry()
        .with(filter_layer)
        .with(no_secrets())
        .with(fmt)
        .try_init()
        .is_ok()
    {
        let _ = FILTER.set(handle);
    }
}

/// Apply a reloaded `[log]`.
pub fn apply(log: &Log) {
    JSON.store(log.format == LogFormat::Json, Ordering::Relaxed);
    if let Some(handle) = FILTER.get() {
        let _ = handle.reload(filter(log));
    }
}

/// One access-log line. Only the path is written: tokens and `http_key` travel in query strings,
/// and no header (Authorization included) is ever written.
#[allow(clippy::too_many_arguments)]
pub fn access(
    client: Option<IpAddr>,
    method: &str,
    path: &str,
    status: u16,
    route: &str,
    node: &str,
    duration_ms: f64,
    bytes_in: usize,
    bytes_out: usize,
    tls: &str,
    alpn: &str,
) {
    tracing::info!(
        target: ACCESS_TARGET,
        client = client.map(tracing::field::display),
        method,
        path,
        status,
        route,
        node,
        duration_ms,
        bytes_in,
        bytes_out,
        tls,
        alpn,
        "access"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(level: &str) -> Log {
        Log {
            level: level.to_string(),
            format: LogFormat::Human,
            access_log: true,
        }
    }

    /// Whether an event of `target` at `level` passes the filter of `log.level = spec`.
    fn passes(spec: &str, target: &str, level: tracing::Level) -> bool {
        let subscriber = tracing_subscriber::registry()
            .with(filter(&log(spec)))
            .with(no_secrets());
        let hit = std::sync::Arc::new(AtomicBool::new(false));
        struct Probe(std::sync::Arc<AtomicBool>);
        impl<S: Subscriber> tracing_subscriber::Layer<S> for Probe {
            fn on_event(&self, _: &Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let subscriber = subscriber.with(Probe(hit.clone()));
        tracing::subscriber::with_default(subscriber, || match (target, level) {
            ("pingora_proxy", tracing::Level::ERROR) => {
                tracing::error!(target: "pingora_proxy", "Fail to proxy")
            }
            ("pingora_core::connectors", tracing::Level::ERROR) => {
                tracing::error!(target: "pingora_core::connectors", "failed to acquire reusable stream")
            }
            ("pingora_core::apps", tracing::Level::ERROR) => {
                tracing::error!(target: "pingora_core::apps", "H2 handshake error")
            }
            ("pingora_core::server", tracing::Level::ERROR) => {
                tracing::error!(target: "pingora_core::server", "cannot send the sockets")
            }
            ("nakama_edge::health_check", tracing::Level::WARN) => {
                tracing::warn!(target: "nakama_edge::health_check", "node out")
            }
            ("pingora_proxy", tracing::Level::DEBUG) => {
                tracing::debug!(target: "pingora_proxy", "a request head")
            }
            _ => unreachable!(),
        });
        hit.load(Ordering::Relaxed)
    }

    #[test]
    fn per_request_library_lines_are_off_by_default_and_can_be_asked_for() {
        use tracing::Level;
        assert!(!passes("info", "pingora_proxy", Level::ERROR));
        assert!(!passes("info", "pingora_core::connectors", Level::ERROR));
        assert!(!passes("info", "pingora_core::apps", Level::ERROR));
        assert!(passes("info", "pingora_core::server", Level::ERROR));
        assert!(passes("info", "nakama_edge::health_check", Level::WARN));
        assert!(passes(
            "info,pingora_proxy=warn",
            "pingora_proxy",
            Level::ERROR
        ));
        // Secrets stay out whatever is asked for.
        assert!(!passes(
            "debug,pingora_proxy=debug",
            "pingora_proxy",
            Level::DEBUG
        ));
    }
}

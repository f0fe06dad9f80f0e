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

fn filter(log: &Log) -> EnvFilter {
    let spec = std::env::var("NAKAMA_EDGE_LOG").unwrap_or_else(|_| log.level.clone());
    let capped = |spec: &str| EnvFilter::try_new(format!("{spec},{NO_SECRETS}"));
    capped(&spec).unwrap_or_else(|_| capped("info").unwrap_or_else(|_| EnvFilter::new("info")))
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

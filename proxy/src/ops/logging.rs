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
/// they stay at info. rustls's message parser warns about what clients send (an IP address
/// as SNI, which wrk and many test clients do; a duplicate or invalid host name): nothing an
/// operator can act on, so only its errors pass.
const NO_SECRETS: &str =
    "pingora_core=info,pingora_http=info,pingora_pool=info,pingora_rustls=info,\
                          h2=info,hyper=info,hyper_util=info,rustls=info,tungstenite=info,\
                          rustls::msgs::handshake=error";

fn filter(log: &Log) -> EnvFilter {
    let spec = std::env::var("NAKAMA_EDGE_LOG").unwrap_or_else(|_| log.level.clone());
    EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info"))
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
///
/// The line is neither formatted nor written here, on the request's path: its fields are
/// copied into a record for the access-log thread ([`batch`]), which formats and writes the
/// lines in batches, as nginx buffers its log. When the access log is filtered out
/// (`log.level` above info), nothing is copied.
#[allow(clippy::too_many_arguments)]
pub fn access(
    client: Option<IpAddr>,
    method: &str,
    path: &str,
    status: u16,
    route: &'static str,
    node: &str,
    duration_ms: f64,
    bytes_in: usize,
    bytes_out: usize,
    tls: &'static str,
    alpn: &'static str,
) {
    if !tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO) {
        return;
    }
    batch::send(batch::Record {
        at: std::time::SystemTime::now(),
        client,
        method: batch::Text::of(method),
        path: batch::Text::of(path),
        status,
        route,
        node: batch::Text::of(node),
        duration_ms,
        bytes_in,
        bytes_out,
        tls,
        alpn,
    });
}

/// A duration in milliseconds for the access log, to the microsecond: `1.099708`, not the
/// `1.0997080000000001` that `as_secs_f64() * 1000.0` prints.
pub fn millis(d: std::time::Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// The access-log thread: records in, lines out in batches.
///
/// ```text
///   request path ── Record (fields copied) ──► queue (a Vec under a mutex)
///                                                 │ every FLUSH, or at WAKE_AT records
///                                                 ▼
///                              access-log thread: formats each line (human or JSON, as
///                              tracing's formatter writes them) and writes them to stderr
///                              in one write per 64 KiB
/// ```
///
/// Nothing wakes the thread per line (a wake-up costs more than the line). A queue at
/// [`batch::MAX_QUEUED`] (stderr not taking lines) makes the request path write its own line,
/// so that none is dropped; the lines still queued when the process exits are written then.
pub mod batch {
    use std::io::Write as _;
    use std::net::IpAddr;
    use std::sync::atomic::Ordering;
    use std::sync::{Mutex, OnceLock};
    use std::thread::Thread;
    use std::time::{Duration, SystemTime};

    /// How long a line may wait in the queue.
    pub const FLUSH: Duration = Duration::from_millis(100);
    /// Queued records that wake the thread before [`FLUSH`] has passed: small batches, so
    /// that a worker sharing the core waits a fraction of a millisecond for one, not several.
    pub const WAKE_AT: usize = 256;
    /// Queued records past which the request path writes its own line.
    pub const MAX_QUEUED: usize = 64 * 1024;
    /// Bytes of lines written at once.
    const WRITE_BYTES: usize = 64 * 1024;
    /// Text kept in a record without an allocation.
    const INLINE: usize = 96;

    /// Text copied into a record: inline when short (paths, methods and node names are),
    /// on the heap otherwise.
    pub enum Text {
        /// Up to [`INLINE`] bytes.
        Inline {
            /// Bytes used.
            len: u8,
            /// The text, then zeros.
            bytes: [u8; INLINE],
        },
        /// Longer text.
        Heap(Box<str>),
    }

    impl Text {
        /// `text`, copied.
        pub fn of(text: &str) -> Text {
            if text.len() <= INLINE {
                let mut bytes = [0u8; INLINE];
                bytes[..text.len()].copy_from_slice(text.as_bytes());
                Text::Inline {
                    len: text.len() as u8,
                    bytes,
                }
            } else {
                Text::Heap(text.into())
            }
        }

        /// The text.
        pub fn as_str(&self) -> &str {
            match self {
                // Copied whole from a &str: valid UTF-8.
                Text::Inline { len, bytes } => {
                    std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or("")
                }
                Text::Heap(text) => text,
            }
        }
    }

    /// One access-log line's fields.
    #[allow(missing_docs)]
    pub struct Record {
        pub at: SystemTime,
        pub client: Option<IpAddr>,
        pub method: Text,
        pub path: Text,
        pub status: u16,
        pub route: &'static str,
        pub node: Text,
        pub duration_ms: f64,
        pub bytes_in: usize,
        pub bytes_out: usize,
        pub tls: &'static str,
        pub alpn: &'static str,
    }

    static QUEUE: Mutex<Vec<Record>> = Mutex::new(Vec::new());
    static WRITER: OnceLock<Option<Thread>> = OnceLock::new();

    fn writer() -> Option<&'static Thread> {
        WRITER
            .get_or_init(|| {
                // Lines still queued at exit (pingora ends the process with exit()) are
                // written then.
                // SAFETY: `write_queued` is a plain function that does not unwind.
                unsafe { libc::atexit(write_queued_at_exit) };
                std::thread::Builder::new()
                    .name("access-log".into())
                    .spawn(run)
                    .ok()
                    .map(|handle| handle.thread().clone())
            })
            .as_ref()
    }

    /// Queue `record` for the access-log thread.
    pub fn send(record: Record) {
        let Some(writer) = writer() else {
            return write_now(&record);
        };
        let queued = {
            let Ok(mut queue) = QUEUE.lock() else {
                return write_now(&record);
            };
            if queue.len() >= MAX_QUEUED {
                drop(queue);
                return write_now(&record);
            }
            queue.push(record);
            queue.len()
        };
        if queued == WAKE_AT {
            writer.unpark();
        }
    }

    fn write_now(record: &Record) {
        let mut line = Vec::with_capacity(512);
        format(record, super::JSON.load(Ordering::Relaxed), &mut line);
        let _ = std::io::stderr().lock().write_all(&line);
    }

    /// The access-log thread's nice value. A batch formatted at the workers' priority held up
    /// the requests in flight on that core while it ran: the edge's p99 under load doubled
    /// with the log on (BENCHMARKS.md). At nice 10 the thread gives way to the workers and
    /// still gets a tenth of a busy core, several times what a saturated worker's lines take
    /// to format. (At SCHED_IDLE it got too little under saturation: the queue filled and the
    /// request path wrote its own lines.)
    pub const NICE: i32 = 10;

    fn run() {
        #[cfg(target_os = "linux")]
        // SAFETY: gettid has no preconditions; setpriority on this thread's own id only
        // lowers its priority, which needs no privilege. A failure leaves it as it was.
        unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICE);
        }
        let mut taken = Vec::new();
        let mut lines = Vec::with_capacity(WRITE_BYTES + 1024);
        loop {
            std::thread::park_timeout(FLUSH);
            write_queued(&mut taken, &mut lines);
        }
    }

    /// Format and write every queued record.
    fn write_queued(taken: &mut Vec<Record>, lines: &mut Vec<u8>) {
        if let Ok(mut queue) = QUEUE.lock() {
            std::mem::swap(&mut *queue, taken);
        }
        let json = super::JSON.load(Ordering::Relaxed);
        for record in taken.drain(..) {
            format(&record, json, lines);
            if lines.len() >= WRITE_BYTES {
                let _ = std::io::stderr().lock().write_all(lines);
                lines.clear();
            }
        }
        if !lines.is_empty() {
            let _ = std::io::stderr().lock().write_all(lines);
            lines.clear();
        }
    }

    extern "C" fn write_queued_at_exit() {
        write_queued(&mut Vec::new(), &mut Vec::new());
    }

    /// Whether `text` is written the same quoted by Rust's `Debug` and by JSON: printable
    /// ASCII but `"` and `\` (paths, methods, node names almost always are).
    fn plain(text: &str) -> bool {
        text.bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    }

    /// `text` quoted: as Rust's `Debug` writes it (`json`: as serde_json does).
    fn quoted(out: &mut Vec<u8>, text: &str, json: bool) {
        use std::io::Write as _;
        if plain(text) {
            out.push(b'"');
            out.extend_from_slice(text.as_bytes());
            out.push(b'"');
        } else if json {
            let _ = serde_json::to_writer(&mut *out, text);
        } else {
            let _ = write!(out, "{text:?}");
        }
    }

    /// One line, as tracing's formatter writes an event with these fields (human: Rust's
    /// `Debug` for strings; JSON: flattened, strings escaped by serde_json).
    pub fn format(r: &Record, json: bool, out: &mut Vec<u8>) {
        use std::io::Write as _;
        // `,"name":` or ` name=`.
        let key = |out: &mut Vec<u8>, name: &str| {
            out.extend_from_slice(if json { b",\"" } else { b" " });
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(if json { b"\":" } else { b"=" });
        };
        let text = |out: &mut Vec<u8>, name: &str, value: &str| {
            key(out, name);
            quoted(out, value, json);
        };
        if json {
            out.extend_from_slice(b"{\"timestamp\":\"");
            timestamp(r.at, out);
            out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"access\"");
        } else {
            timestamp(r.at, out);
            out.extend_from_slice(b"  INFO ");
            out.extend_from_slice(super::ACCESS_TARGET.as_bytes());
            out.extend_from_slice(b": access");
        }
        // Writing into a Vec cannot fail.
        if let Some(ip) = r.client {
            key(out, "client");
            let _ = if json {
                write!(out, "\"{ip}\"")
            } else {
                write!(out, "{ip}")
            };
        }
        text(out, "method", r.method.as_str());
        text(out, "path", r.path.as_str());
        key(out, "status");
        let _ = write!(out, "{}", r.status);
        text(out, "route", r.route);
        text(out, "node", r.node.as_str());
        key(out, "duration_ms");
        let _ = if json {
            serde_json::to_writer(&mut *out, &r.duration_ms).map_err(|_| std::fmt::Error)
        } else {
            write!(out, "{:?}", r.duration_ms).map_err(|_| std::fmt::Error)
        };
        key(out, "bytes_in");
        let _ = write!(out, "{}", r.bytes_in);
        key(out, "bytes_out");
        let _ = write!(out, "{}", r.bytes_out);
        text(out, "tls", r.tls);
        text(out, "alpn", r.alpn);
        if json {
            text(out, "target", super::ACCESS_TARGET);
            out.push(b'}');
        }
        out.push(b'\n');
    }

    /// `2026-11-30T15:14:06.798219Z` (RFC 3339, UTC, microseconds), as tracing writes it.
    pub fn timestamp(at: SystemTime, out: &mut Vec<u8>) {
        use std::io::Write as _;
        thread_local! {
            /// The last second written, as `2026-11-30T15:14:06.` (lines come in order).
            static SECOND: std::cell::RefCell<(u64, Vec<u8>)> =
                const { std::cell::RefCell::new((u64::MAX, Vec::new())) };
        }
        let since = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let secs = since.as_secs();
        SECOND.with(|second| {
            let mut second = second.borrow_mut();
            let (at, text) = &mut *second;
            if *at != secs {
                *at = secs;
                text.clear();
                date_time(secs, text);
            }
            out.extend_from_slice(text);
        });
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{:06}Z", since.subsec_micros());
    }

    /// `2026-11-30T15:14:06.` for `secs` since the epoch.
    fn date_time(secs: u64, out: &mut Vec<u8>) {
        use std::io::Write as _;
        let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
        // Days to a civil date (H. Hinnant's algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        let _ = write!(
            out,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.",
            rest / 3600,
            rest / 60 % 60,
            rest % 60,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What tracing's own formatter (the one every other line goes through) writes for the
    /// access event of `r`, and what the access-log thread writes, timestamps aside.
    fn both_ways(r: &batch::Record, json: bool) -> (String, String) {
        #[derive(Clone, Default)]
        struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let captured = Captured::default();
        let writer = captured.clone();
        let fmt = tracing_subscriber::fmt::layer()
            .event_format(Switchable {
                human: Format::default().with_ansi(false),
                json: Format::default().json().flatten_event(true),
            })
            .with_writer(move || writer.clone());
        JSON.store(json, Ordering::Relaxed);
        tracing::subscriber::with_default(tracing_subscriber::registry().with(fmt), || {
            tracing::info!(
                target: ACCESS_TARGET,
                client = r.client.map(tracing::field::display),
                method = r.method.as_str(),
                path = r.path.as_str(),
                status = r.status,
                route = r.route,
                node = r.node.as_str(),
                duration_ms = r.duration_ms,
                bytes_in = r.bytes_in,
                bytes_out = r.bytes_out,
                tls = r.tls,
                alpn = r.alpn,
                "access"
            );
        });
        JSON.store(false, Ordering::Relaxed);
        let theirs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let mut ours = Vec::new();
        batch::format(r, json, &mut ours);
        let ours = String::from_utf8(ours).unwrap();
        // The timestamps differ by when each was taken: 27 characters, after a JSON prefix.
        let strip = |line: &str| {
            let at = line.find("20").unwrap();
            format!("{}{}", &line[..at], &line[at + 27..])
        };
        (strip(&theirs), strip(&ours))
    }

    fn record(client: Option<IpAddr>, path: &str) -> batch::Record {
        batch::Record {
            at: std::time::SystemTime::now(),
            client,
            method: batch::Text::of("POST"),
            path: batch::Text::of(path),
            status: 401,
            route: "api",
            node: batch::Text::of("nakama-1"),
            duration_ms: 1.3850500000000001,
            bytes_in: 30,
            bytes_out: 97,
            tls: "TLSv1_3",
            alpn: "http/1.1",
        }
    }

    #[test]
    fn durations_are_logged_in_milliseconds_to_the_microsecond() {
        use std::time::Duration;
        for (d, shown) in [
            (Duration::from_nanos(1_099_708_400), "1099.708"),
            (Duration::from_nanos(1_099_708), "1.099"),
            (Duration::from_nanos(1_385_050), "1.385"),
            (Duration::from_nanos(999), "0.0"),
        ] {
            assert_eq!(format!("{:?}", super::millis(d)), shown, "{d:?}");
        }
    }

    #[test]
    fn access_lines_read_as_tracing_writes_them() {
        let long = format!("/v2/rpc/{}", "x".repeat(300));
        for r in [
            record(
                Some("203.0.113.7".parse().unwrap()),
                "/v2/account/authenticate/device",
            ),
            record(Some("2001:db8::1".parse().unwrap()), "/p%22q\"\\x\u{7f}é"),
            record(None, &long),
        ] {
            for json in [false, true] {
                let (theirs, ours) = both_ways(&r, json);
                assert_eq!(ours, theirs, "json: {json}");
            }
        }
    }

    #[test]
    fn timestamps_are_rfc_3339_utc_with_microseconds() {
        let at = |secs: u64, micros: u32| {
            let mut out = Vec::new();
            batch::timestamp(
                std::time::UNIX_EPOCH + std::time::Duration::new(secs, micros * 1000),
                &mut out,
            );
            String::from_utf8(out).unwrap()
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.000005Z");
        assert_eq!(at(1_796_052_846, 798_219), "2026-11-30T15:34:06.798219Z");
        assert_eq!(at(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z");
    }

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
            ("pingora_core::server", tracing::Level::ERROR) => {
                tracing::error!(target: "pingora_core::server", "cannot send the sockets")
            }
            ("nakama_edge::nodes::health_check", tracing::Level::WARN) => {
                tracing::warn!(target: "nakama_edge::nodes::health_check", "node out")
            }
            ("h2", tracing::Level::DEBUG) => {
                tracing::debug!(target: "h2", "a request head")
            }
            _ => unreachable!(),
        });
        hit.load(Ordering::Relaxed)
    }

    #[test]
    fn library_lines_an_operator_acts_on_pass_and_request_heads_never_do() {
        use tracing::Level;
        assert!(passes("info", "pingora_core::server", Level::ERROR));
        assert!(passes(
            "info",
            "nakama_edge::nodes::health_check",
            Level::WARN
        ));
        // Secrets stay out whatever is asked for.
        assert!(!passes("debug,h2=debug", "h2", Level::DEBUG));
    }
}

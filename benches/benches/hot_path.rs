//! The work the edge does per request or per connection, measured alone:
//! picking a node (round-robin and consistent hash), reading the user id from a session
//! token, a firewall lookup among 10,000 CIDRs, a rate-limit check, rendering /metrics, the
//! header rules (address claims, hop-by-hop), the retry budget, measuring a request head.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion};
use nakama_edge::drains::Drains;
use nakama_edge::firewall::Firewall;
use nakama_edge::limits::{client_key, Limits, OpenConnections};
use nakama_edge::metrics::Metrics;
use nakama_edge::pool::{Member, Pool, Registry, Tried};
use nakama_edge::route::Route;
use nakama_edge::token;
use nakama_edge_config::Config;

fn config(nodes: usize, extra: &str) -> Config {
    let mut text = String::from(extra);
    for i in 0..nodes {
        text.push_str(&format!(
            "[[nodes]]\nname = \"nakama-{i}\"\naddress = \"127.0.0.{}:7350\"\ngrpc = \"127.0.0.{}:7349\"\n",
            i + 1,
            i + 1
        ));
    }
    Config::parse(&text, "bench").expect("bench config")
}

fn healthy_pool(nodes: usize) -> Pool {
    let config = config(nodes, "");
    let pool = Pool::build(
        &config,
        &Member::configured(&config),
        &Registry::default(),
        &Drains::in_memory(),
    );
    for n in &pool.nodes {
        n.runtime.record_check(true, 1, 1);
    }
    pool
}

fn session_token(uid: &str) -> String {
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = format!(
        r#"{{"tid":"6f1d2c4e-8a2b-4c1d-9e3f-0a1b2c3d4e5f","uid":"{uid}","usn":"player123","vrs":{{}},"exp":1900000000,"iat":1800000000}}"#
    );
    format!(
        "{}.{}.{}",
        e.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        e.encode(claims),
        e.encode([7u8; 32])
    )
}

fn pick(c: &mut Criterion) {
    let pool = healthy_pool(10);
    c.bench_function("pick node: weighted round-robin of 10", |b| {
        b.iter(|| black_box(pool.pick_round_robin(Tried::default())))
    });
    let uid = b"0b0e7d9a-1b7b-4b6e-9d1e-1f6d2a3b4c5d";
    c.bench_function("pick node: consistent hash of 10", |b| {
        b.iter(|| black_box(pool.pick_sticky(black_box(uid), Tried::default())))
    });
}

fn tokens(c: &mut Criterion) {
    let t = session_token("0b0e7d9a-1b7b-4b6e-9d1e-1f6d2a3b4c5d");
    let query = format!("lang=en&status=true&token={t}");
    c.bench_function("user id from a session token (query string)", |b| {
        b.iter(|| {
            black_box(token::session_token(Some(black_box(&query)), None).and_then(token::user_id))
        })
    });
}

fn verify(c: &mut Criterion) {
    use hmac::{Hmac, Mac};
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let unsigned = format!(
        "{}.{}",
        e.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        e.encode(r#"{"tid":"6f1d2c4e-8a2b-4c1d-9e3f-0a1b2c3d4e5f","uid":"0b0e7d9a-1b7b-4b6e-9d1e-1f6d2a3b4c5d","usn":"player123","vrs":{},"exp":4000000000,"iat":1800000000}"#)
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"defaultencryptionkey").expect("key");
    mac.update(unsigned.as_bytes());
    let token = format!("{unsigned}.{}", e.encode(mac.finalize().into_bytes()));
    let verifier = token::Verifier::new(["defaultencryptionkey"]).expect("verifier");
    assert!(verifier.verify(&token, 1_900_000_000).is_some());
    c.bench_function("verify a session token (HS256) and read its user", |b| {
        b.iter(|| black_box(verifier.verify(black_box(&token), 1_900_000_000)))
    });
}

fn firewall(c: &mut Criterion) {
    // 10,000 distinct /24s in deny, allow everything.
    let deny: Vec<String> = (0..10_000u32)
        .map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256))
        .collect();
    let config = config(1, &format!("[firewall]\ndeny = [{}]\n", deny.join(", ")));
    let fw = Firewall::new(&config.firewall);
    let allowed = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let denied = IpAddr::V4(Ipv4Addr::new(10, 39, 15, 7));
    c.bench_function("firewall: 10,000 CIDRs, allowed peer", |b| {
        b.iter(|| black_box(fw.allows(black_box(allowed))))
    });
    c.bench_function("firewall: 10,000 CIDRs, denied peer", |b| {
        b.iter(|| black_box(fw.allows(black_box(denied))))
    });
}

fn rate_limit(c: &mut Criterion) {
    let config = config(
        1,
        "[rate_limit]\nrequests_per_second = 1000000\nburst = 1000000\n",
    );
    let limits = Limits::new(&config.rate_limit, Arc::new(OpenConnections::default()));
    let key = client_key(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)));
    c.bench_function("rate limit: one request of a known client", |b| {
        b.iter(|| black_box(limits.check_request(black_box(key), false)))
    });
}

fn metrics(c: &mut Criterion) {
    let pool = healthy_pool(10);
    let metrics = Metrics::new().expect("metrics");
    for code in [200, 401, 404, 429, 500, 503] {
        for route in Route::ALL {
            for n in &pool.nodes {
                metrics.request(code, route, &n.config.name, 0.003);
            }
        }
    }
    c.bench_function("count one request", |b| {
        b.iter(|| metrics.request(black_box(200), Route::Api, black_box("nakama-3"), 0.002))
    });
    c.bench_function("render /metrics (10 nodes, 360 request series)", |b| {
        b.iter(|| black_box(metrics.render(&pool, &[], None)))
    });
}

/// A browser's request head as the edge receives it.
fn browser_request() -> pingora_http::RequestHeader {
    let mut req =
        pingora_http::RequestHeader::build("POST", b"/v2/rpc/whoami", None).expect("request");
    for (k, v) in [
        ("host", "play.example.com"),
        ("connection", "keep-alive"),
        ("content-type", "application/json"),
        ("authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0",
        ),
        ("accept", "application/json"),
        ("accept-language", "en-GB,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br"),
        ("origin", "https://game.example.com"),
        ("content-length", "42"),
    ] {
        req.append_header(k.to_string(), v).expect("header");
    }
    req
}

fn headers(c: &mut Criterion) {
    let req = browser_request();
    c.bench_function(
        "headers: strip a browser's request (10 headers, Connection)",
        |b| {
            b.iter_batched(
                || req.clone(),
                |mut r| {
                    nakama_edge::headers::strip_request(&mut r, false);
                    r
                },
                criterion::BatchSize::SmallInput,
            )
        },
    );
    let mut clean = browser_request();
    nakama_edge::headers::strip_request(&mut clean, false);
    c.bench_function(
        "headers: a request with nothing to strip (9 headers)",
        |b| b.iter(|| nakama_edge::headers::strip_request(black_box(&mut clean), false)),
    );
}

fn retry_budget(c: &mut Criterion) {
    let budget = nakama_edge::retry_budget::RetryBudget::default();
    c.bench_function("retry budget: count a request", |b| {
        b.iter(|| budget.record_request())
    });
}

fn head_scan(c: &mut Criterion) {
    let head = b"POST /v2/rpc/whoami?http_key=defaulthttpkey HTTP/1.1\r\nHost: play.example.com\r\n\
                 Content-Type: application/json\r\nAuthorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig\r\n\
                 User-Agent: Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0\r\n\
                 Accept: application/json\r\nContent-Length: 42\r\n\r\n";
    c.bench_function("measure a 300-byte request head as it arrives", |b| {
        b.iter(|| {
            let mut scan = nakama_edge::client_conn::HeadScan::default();
            black_box(scan.advance(black_box(head)))
        })
    });
}

/// The edge's own HTTP/1.1 API path (`h1_api`): a player's request head read and the node's
/// written; a node's response head read and the player's written; a chunked body's end found.
fn h1_api(c: &mut Criterion) {
    use nakama_edge::h1_api::{
        examine, parse_response_head, write_response_head, Arrival, ChunkScan,
    };
    let request = b"POST /v2/rpc/whoami HTTP/1.1\r\nHost: play.example.com\r\n\
                    Content-Type: application/json\r\nAuthorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig\r\n\
                    User-Agent: Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0\r\n\
                    Accept: application/json\r\nAccept-Encoding: gzip, deflate\r\n\
                    Connection: keep-alive\r\nContent-Length: 2\r\n\r\n{}";
    let arrival = Arrival {
        listener: nakama_edge::route::Listener::Https,
        client: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
    };
    let mut out = Vec::with_capacity(1024);
    c.bench_function(
        "HTTP/1.1 API path: read a 350-byte request head, write the node's",
        |b| {
            b.iter(|| {
                out.clear();
                black_box(examine(black_box(request), &arrival, false, &mut out))
            })
        },
    );
    let response = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                     Grpc-Metadata-Content-Type: application/grpc\r\nVary: Accept-Encoding\r\n\
                     Date: Mon, 30 Nov 2026 12:00:00 GMT\r\nContent-Length: 2\r\n\r\n{}";
    c.bench_function(
        "HTTP/1.1 API path: read a node's response head, write the player's",
        |b| {
            b.iter(|| {
                out.clear();
                if let Ok(Some(head)) = parse_response_head(black_box(response)) {
                    write_response_head(&response[..head.len], &mut out, false);
                }
                black_box(&out);
            })
        },
    );
    let mut chunked = Vec::new();
    for _ in 0..4 {
        chunked.extend_from_slice(b"800\r\n");
        chunked.extend_from_slice(&[b'x'; 2048]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    c.bench_function(
        "HTTP/1.1 API path: find the end of an 8 KiB chunked body",
        |b| b.iter(|| black_box(ChunkScan::default().advance(black_box(&chunked)))),
    );
}

criterion_group! {
    name = hot_path;
    config = Criterion::default().warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = pick, tokens, verify, firewall, rate_limit, metrics, headers, retry_budget, head_scan, h1_api
}
criterion_main!(hot_path);

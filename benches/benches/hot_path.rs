//! The work the edge does per request or per connection, measured alone:
//! picking a node (round-robin and consistent hash), reading the user id from a session
//! token, a firewall lookup among 10,000 CIDRs, a rate-limit check, rendering /metrics, the
//! head rules (admission, the node's head, the player's head), the retry budget, finding where
//! a request head ends.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion};
use nakama_edge::exposed::drains::Drains;
use nakama_edge::exposed::firewall::Firewall;
use nakama_edge::exposed::limits::{client_key, Limits, OpenConnections};
use nakama_edge::exposed::metrics::Metrics;
use nakama_edge::exposed::pool::{Member, Pool, Registry, Tried};
use nakama_edge::exposed::route::Route;
use nakama_edge::exposed::token;
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
        e.encode(r#"{"tid":"6f1d2c4e-8a2b-4c1d-9e3f-0a1b2c3d4e5f","uid":"0b0e7d9a-1b7b-4b6e-9d1e-1f6d2a3b4c5d","usn":"player123","vrs":{"region":"eu","shard":"eu-ranked"},"exp":4000000000,"iat":1800000000}"#)
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"defaultencryptionkey").expect("key");
    mac.update(unsigned.as_bytes());
    let token = format!("{unsigned}.{}", e.encode(mac.finalize().into_bytes()));
    let verifier = token::Verifier::new(["defaultencryptionkey"]).expect("verifier");
    assert!(verifier.verify(&token, 1_900_000_000, None).is_ok());
    c.bench_function("verify a session token (HS256) and read its user", |b| {
        b.iter(|| black_box(verifier.verify(black_box(&token), 1_900_000_000, None)))
    });
    let shard = verifier.verify(&token, 1_900_000_000, Some("shard"));
    assert!(shard.is_ok_and(|v| v.var.is_some()));
    c.bench_function(
        "verify a session token (HS256) and read its user and shard var",
        |b| b.iter(|| black_box(verifier.verify(black_box(&token), 1_900_000_000, Some("shard")))),
    );
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
        b.iter(|| black_box(metrics.render(&pool, &[], None, std::iter::empty())))
    });
}

/// A browser's request head as hyper hands it to the edge.
fn browser_request() -> http::request::Parts {
    let mut req = http::Request::builder()
        .method("POST")
        .uri("/v2/rpc/whoami");
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
        req = req.header(k, v);
    }
    req.body(()).expect("request").into_parts().0
}

/// The request path's rules on a head: whether it may go on, and the head the node gets; then
/// the player's head from a node's answer.
fn heads(c: &mut Criterion) {
    use nakama_edge::exposed::head::{admit, for_node, for_player, Toward};
    use nakama_edge::exposed::headers::Keep;
    let xff = http::HeaderValue::from_static("203.0.113.7");
    let req = browser_request();
    c.bench_function("head rules: admit a browser's request (10 headers)", |b| {
        b.iter(|| black_box(admit(black_box(&req), false)))
    });
    c.bench_function(
        "head rules: the node's head from a browser's request (10 headers, Connection)",
        |b| {
            b.iter_batched(
                browser_request,
                |mut r| {
                    let _ = for_node(&mut r, Toward::Http1(Keep::default()), &xff, "https");
                    r
                },
                criterion::BatchSize::SmallInput,
            )
        },
    );
    let answer = || {
        http::Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .header("grpc-metadata-content-type", "application/grpc")
            .header("vary", "Accept-Encoding")
            .header("date", "Mon, 30 Nov 2026 12:00:00 GMT")
            .header("content-length", "2")
            .body(())
            .expect("response")
            .into_parts()
            .0
    };
    c.bench_function(
        "head rules: the player's head from a node's answer (5 headers)",
        |b| {
            b.iter_batched(
                answer,
                |mut r| {
                    let _ = for_player(&mut r, false);
                    r
                },
                criterion::BatchSize::SmallInput,
            )
        },
    );
}

fn retry_budget(c: &mut Criterion) {
    let budget = nakama_edge::exposed::retry_budget::RetryBudget::default();
    c.bench_function("retry budget: count a request", |b| {
        b.iter(|| budget.record_request())
    });
}

fn head_end(c: &mut Criterion) {
    let head = b"POST /v2/rpc/whoami?http_key=defaulthttpkey HTTP/1.1\r\nHost: play.example.com\r\n\
                 Content-Type: application/json\r\nAuthorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig\r\n\
                 User-Agent: Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0\r\n\
                 Accept: application/json\r\nContent-Length: 42\r\n\r\n";
    c.bench_function(
        "find where a 300-byte request head ends, as it arrives",
        |b| {
            b.iter(|| {
                let mut scan = nakama_edge::exposed::client_conn::HeadEnd::default();
                black_box(scan.find(black_box(head)))
            })
        },
    );
}

criterion_group! {
    name = hot_path;
    config = Criterion::default().warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = pick, tokens, verify, firewall, rate_limit, metrics, heads, retry_budget, head_end
}
criterion_main!(hot_path);

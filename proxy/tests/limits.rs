//! Limits that know players: per-user budgets from verified session tokens, NAT-safe
//! defaults, failed logins per account, WebSocket floods closed with 1008.

mod support;

use std::process::Command;
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use support::*;

/// An empty `[rate_limit]`: every limit at its default (the harness otherwise lifts them).
const DEFAULT_LIMITS: &str = "[rate_limit]\n";
/// The stand-in's (and Nakama's default) session.encryption_key.
const SESSION_KEY: &str = "defaultencryptionkey";

/// A session token for `uid` signed with `key`, as Nakama makes them.
fn token(key: &str, uid: &str) -> String {
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let unsigned = format!(
        "{}.{}",
        e.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        e.encode(format!(
            r#"{{"tid":"t","uid":"{uid}","usn":"u","vrs":{{}},"exp":{exp},"iat":1}}"#
        ))
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(unsigned.as_bytes());
    format!("{unsigned}.{}", e.encode(mac.finalize().into_bytes()))
}

fn uid(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

/// `n` RPCs with `bearer`, all at once; their statuses.
async fn rpcs(edge: &Edge, client: &reqwest::Client, bearer: &str, n: usize) -> Vec<u16> {
    let url = edge.url("/v2/rpc/whoami");
    let sends = (0..n).map(|_| client.get(&url).bearer_auth(bearer).send());
    let mut statuses = Vec::new();
    for r in futures_util::future::join_all(sends).await {
        let r = r.unwrap();
        if r.status() == 429 {
            assert!(
                r.headers().contains_key("retry-after"),
                "429 says when to retry"
            );
        }
        statuses.push(r.status().as_u16());
    }
    statuses
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_session_key_a_flooding_player_is_limited_and_another_behind_the_same_address_is_not(
) {
    let sections = format!(
        "[nakama]\nsession_key = \"{SESSION_KEY}\"\n\n[rate_limit]\nrequests_per_second = 5\nburst = 10\n"
    );
    let (_nodes, edge) = cluster_with(&["a"], &sections).await;
    let client = edge.client(None);
    let (a, b) = (token(SESSION_KEY, &uid(1)), token(SESSION_KEY, &uid(2)));
    let flood = rpcs(&edge, &client, &a, 40).await;
    assert!(
        count(&flood, 429) >= 20,
        "the flooding player is held back: {flood:?}"
    );
    // Same address, another player: their own budget.
    let other = rpcs(&edge, &client, &b, 8).await;
    assert_eq!(count(&other, 200), 8, "{other:?}");
    assert!(
        edge.metric("nakama_edge_connections_rejected_total{reason=\"user\"}")
            .await
            >= 20.0
    );
    assert!(!edge.log().contains(&a), "no token in the log");
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_tokens_from_one_address_share_its_budget_while_genuine_ones_do_not() {
    let sections = format!(
        "[nakama]\nsession_key = \"{SESSION_KEY}\"\n\n[rate_limit]\nrequests_per_second = 5\nburst = 10\n"
    );
    let (_nodes, edge) = cluster_with(&["a"], &sections).await;
    let client = edge.client(None);
    // 50 players, 4 requests each: each within their own budget.
    let mut genuine = Vec::new();
    for i in 0..50 {
        genuine.extend(rpcs(&edge, &client, &token(SESSION_KEY, &uid(100 + i)), 4).await);
    }
    assert_eq!(count(&genuine, 429), 0);
    // The same with 50 made-up users (tokens signed with another key): one address's budget.
    let mut forged = Vec::new();
    for i in 0..50 {
        forged.extend(rpcs(&edge, &client, &token("not-the-key", &uid(200 + i)), 4).await);
    }
    assert!(
        count(&forged, 429) >= 100,
        "forged tokens got fresh budgets: {} limited",
        count(&forged, 429)
    );
    assert!(
        edge.metric("nakama_edge_connections_rejected_total{reason=\"rate_limit\"}")
            .await
            >= 100.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_session_key_is_counted_and_named_in_a_warn_line_and_the_right_one_is_not() {
    // The operator copied the wrong key: Nakama signs with SESSION_KEY.
    let sections = "[nakama]\nsession_key = \"a-key-nakama-does-not-use\"\n";
    let (_nodes, edge) = cluster_with(&["a"], sections).await;
    let client = edge.client(None);
    let mut statuses = Vec::new();
    for i in 0..25 {
        statuses.extend(rpcs(&edge, &client, &token(SESSION_KEY, &uid(300 + i)), 1).await);
    }
    assert_eq!(
        count(&statuses, 200),
        25,
        "players are still served: {statuses:?}"
    );
    let bad = "nakama_edge_session_tokens_total{result=\"bad_signature\"}";
    assert_eq!(edge.metric(bad).await, 25.0);
    eventually("a WARN line naming [nakama] session_key", || async {
        edge.log()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("[nakama] session_key"))
    })
    .await;
    let log = edge.log();
    let warns = log
        .lines()
        .filter(|l| l.contains("bad signature") && l.contains("WARN"))
        .count();
    assert_eq!(warns, 1, "one WARN, not one per token:\n{log}");
    assert!(
        !log.contains("a-key-nakama-does-not-use"),
        "the key never reaches the log"
    );

    // The right key: verified, no WARN.
    let sections = format!("[nakama]\nsession_key = \"{SESSION_KEY}\"\n");
    let (_nodes, edge) = cluster_with(&["a"], &sections).await;
    let client = edge.client(None);
    for i in 0..25 {
        rpcs(&edge, &client, &token(SESSION_KEY, &uid(400 + i)), 1).await;
    }
    rpcs(&edge, &client, "not.a.token", 1).await;
    let verified = "nakama_edge_session_tokens_total{result=\"verified\"}";
    assert_eq!(edge.metric(verified).await, 25.0);
    let malformed = "nakama_edge_session_tokens_total{result=\"malformed\"}";
    assert_eq!(edge.metric(malformed).await, 1.0);
    assert_eq!(edge.metric(bad).await, 0.0);
    assert!(
        !edge.log().contains("[nakama] session_key"),
        "{}",
        edge.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_failed_logins_lock_that_account_only_while_another_logs_in_from_the_same_address() {
    let (_nodes, edge) = cluster_with(&["a"], DEFAULT_LIMITS).await;
    let client = edge.client(None);
    let login = |email: &str, password: &str, create: bool| {
        client
            .post(edge.url(&format!("/v2/account/authenticate/email?create={create}")))
            .basic_auth("defaultkey", Some(""))
            .json(&serde_json::json!({"email": email, "password": password}))
            .send()
    };
    assert_eq!(
        login("victim@x.test", "correct-horse", true)
            .await
            .unwrap()
            .status(),
        200
    );
    for _ in 0..10 {
        assert_eq!(
            login("victim@x.test", "wrong-guess!", false)
                .await
                .unwrap()
                .status(),
            401
        );
    }
    let locked = login("victim@x.test", "correct-horse", false)
        .await
        .unwrap();
    assert_eq!(locked.status(), 429);
    let retry: u64 = locked.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(
        login("player@x.test", "another-pass", true)
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        login("player@x.test", "another-pass", false)
            .await
            .unwrap()
            .status(),
        200
    );

    // Devices: ten logins with a wrong server key for one device id, then that id is locked
    // while another device logs in.
    let device = |id: &str, key: &str| {
        client
            .post(edge.url("/v2/account/authenticate/device?create=true"))
            .basic_auth(key, Some(""))
            .json(&serde_json::json!({ "id": id }))
            .send()
    };
    for _ in 0..10 {
        assert_eq!(
            device("device-victim-1", "guessed-key")
                .await
                .unwrap()
                .status(),
            401
        );
    }
    assert_eq!(
        device("device-victim-1", "defaultkey")
            .await
            .unwrap()
            .status(),
        429
    );
    assert_eq!(
        device("device-other-1", "defaultkey")
            .await
            .unwrap()
            .status(),
        200
    );
    edge.assert_metric(
        "nakama_edge_connections_rejected_total{reason=\"login\"}",
        2.0,
    )
    .await;
    assert!(
        !edge.log().contains("victim@x.test"),
        "identifiers are never logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_socket_flooding_messages_is_closed_with_1008_while_one_at_60_a_second_stays_open() {
    let (_nodes, edge) = cluster_with(&["a"], DEFAULT_LIMITS).await;
    let client = edge.client(None);
    let (s1, s2) = (
        edge.authenticate(&client, "flooder-device").await,
        edge.authenticate(&client, "player-device").await,
    );
    let mut flooder = edge.websocket(&s1.token, ip("127.0.0.1")).await.unwrap();
    let mut player = edge.websocket(&s2.token, ip("127.0.0.1")).await.unwrap();
    flooder.flood(2000).await;
    let how = flooder.closed().await;
    assert!(how.contains("Policy"), "closed with 1008: {how}");
    // 60 messages a second for 3 s, each answered.
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / 60));
    for _ in 0..180 {
        tick.tick().await;
        player.whoami().await.unwrap();
    }
    assert_eq!(player.node().await, "a", "still open");
    edge.assert_metric(
        "nakama_edge_connections_rejected_total{reason=\"websocket_flood\"}",
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn five_hundred_devices_authenticate_and_open_a_socket_from_one_address_with_the_defaults() {
    let (_nodes, edge) = cluster_with(&["a", "b"], DEFAULT_LIMITS).await;
    let client = edge.client(None);
    let mut sockets = Vec::new();
    // A crowd arriving: 25 players a second for 20 s, well within a minute.
    let mut pace = tokio::time::interval(Duration::from_secs(1));
    for batch in 0..20 {
        pace.tick().await;
        let logins = (0..25).map(|i| {
            let client = client.clone();
            let url = edge.url("/v2/account/authenticate/device?create=true");
            async move {
                client
                    .post(url)
                    .basic_auth("defaultkey", Some(""))
                    .json(&serde_json::json!({ "id": format!("venue-device-{batch}-{i}") }))
                    .send()
                    .await
                    .unwrap()
            }
        });
        for r in futures_util::future::join_all(logins).await {
            assert_eq!(
                r.status(),
                200,
                "a player behind the shared address was refused"
            );
            let v: serde_json::Value = r.json().await.unwrap();
            let token = v["token"].as_str().unwrap().to_string();
            sockets.push(edge.websocket(&token, ip("127.0.0.1")).await.unwrap());
        }
    }
    assert_eq!(sockets.len(), 500);
    for reason in ["rate_limit", "connection_limit", "user", "login"] {
        assert_eq!(
            edge.metric(&format!(
                "nakama_edge_connections_rejected_total{{reason=\"{reason}\"}}"
            ))
            .await,
            0.0,
            "{reason}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dozen_nakama_js_players_behind_one_address_are_never_limited_with_the_defaults() {
    js::install();
    let (_nodes, edge) = cluster_with(&["a", "b", "c"], DEFAULT_LIMITS).await;
    let ca = edge.dir().join("ca.pem");
    std::fs::write(&ca, &edge.certs.ca_pem).unwrap();
    let port = edge.https.port().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("sticky.mjs")
            .arg("12")
            .current_dir(js::dir())
            .env("EDGE_PORT", port)
            .env("NODE_EXTRA_CA_CERTS", ca)
            .env("SOURCES", "127.0.0.1")
            .env("ROUNDS", "3")
            .output()
            .expect("node is needed for the nakama-js tests")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node failed (a 429?):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let players: Vec<serde_json::Value> = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(players.len(), 36, "12 players, 3 rounds");
    assert!(!edge.metrics().await.contains("code=\"429\""));
}

//! Automatic certificates against Pebble, a real ACME server: issuance through HTTP-01 and
//! TLS-ALPN-01, live renewal, a CA outage during renewal, and a restart from stored state.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use support::pebble::{client_config, served_leaf, Pebble};
use support::*;

const PLAY: &str = "play.nakama-edge.test";
const API: &str = "api.nakama-edge.test";

fn acme_section(pebble: &Pebble, challenge: &str, state_dir: &std::path::Path) -> String {
    pebble.acme_section(&[PLAY, API], challenge, state_dir)
}

/// An HTTPS client for the ACME names, trusting only `root_pem`.
fn pebble_client(edge: &Edge, root_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(root_pem.as_bytes()).unwrap())
        .tls_built_in_root_certs(false)
        .resolve(PLAY, edge.https)
        .resolve(API, edge.https)
        .build()
        .unwrap()
}

async fn attempts(edge: &Edge, kind: &str, result: &str) -> f64 {
    edge.metric(&format!(
        "nakama_edge_acme_attempts_total{{kind=\"{kind}\",result=\"{result}\"}}"
    ))
    .await
}

async fn readyz(edge: &Edge) -> (u16, String) {
    match edge.admin_get("/readyz").await {
        Some(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        None => (0, String::new()),
    }
}

/// Issue through `challenge` and check what players and operators see.
async fn issuance_through(challenge: &str) {
    let Issued {
        edge,
        root,
        state,
        node: _node,
        pebble: _pebble,
        ..
    } = issued(challenge, None).await;
    let (leaf, alpn) = served_leaf(&edge, API, &root).await.unwrap();
    assert_eq!(
        alpn.as_deref(),
        Some(&b"h2"[..]),
        "ordinary clients still negotiate h2"
    );
    assert_eq!(
        served_leaf(&edge, PLAY, &root).await.unwrap().0,
        leaf,
        "one certificate for both names"
    );

    // A player trusting only the CA's root gets through to Nakama.
    let client = pebble_client(&edge, &root);
    eventually("ready", || async { readyz(&edge).await.0 == 200 }).await;
    let r = client
        .get(format!(
            "https://{PLAY}:{}/v2/rpc/whoami?http_key=defaulthttpkey",
            edge.https.port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    assert_eq!(attempts(&edge, "issue", "success").await, 1.0);
    for domain in [PLAY, API] {
        let expiry = edge
            .metric(&format!(
                "nakama_edge_certificate_expiry_timestamp_seconds{{domain=\"{domain}\"}}"
            ))
            .await;
        assert!(expiry > 1.7e9, "{domain} expiry {expiry}");
    }
    let log = edge.log();
    assert!(
        log.contains("issue certificate obtained and served"),
        "{log}"
    );
    assert!(log.contains(challenge), "the log names the challenge");

    // The account and the certificate are on disk, private.
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state.path().join("account.json")), 0o600);
    let keys: Vec<_> = walk(state.path())
        .into_iter()
        .filter(|p| p.ends_with("privkey.pem"))
        .collect();
    assert_eq!(keys.len(), 1);
    assert_eq!(mode(&keys[0]), 0o600);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn issues_through_http_01() {
    issuance_through("http-01").await;
}

#[tokio::test]
async fn issues_through_tls_alpn_01() {
    issuance_through("tls-alpn-01").await;
}

#[tokio::test]
async fn before_the_first_certificate_a_placeholder_serves_and_readiness_says_why() {
    let node = StandIn::start("a");
    let ports = Ports::free();
    // A directory nobody answers on: issuance cannot complete.
    let state = TempDir::new("acme-state");
    let section = format!(
        "[acme]\ndomains = [\"{PLAY}\"]\ndirectory = \"https://127.0.0.1:{}/dir\"\nstate_dir = \"{}\"\nretry_backoff = \"1s\"\n",
        free_port(),
        state.path().display()
    );
    let edge = Edge::start_at(ports, TempDir::new("edge"), &node.toml(), &section);
    eventually("a failed attempt", || async {
        attempts(&edge, "issue", "failure").await >= 1.0
    })
    .await;
    eventually("readiness names the pending certificate", || async {
        let (status, why) = readyz(&edge).await;
        status == 503 && why.contains("certificate pending")
    })
    .await;
    // The listener is up with the placeholder, which no CA vouches for.
    let err = served_leaf(&edge, PLAY, &edge.certs.ca_pem)
        .await
        .unwrap_err();
    assert!(
        err.contains("UnknownIssuer") || err.contains("invalid peer certificate"),
        "{err}"
    );
    assert!(edge.log().contains("placeholder"), "{}", edge.log());
    assert!(!edge
        .metrics()
        .await
        .contains("nakama_edge_certificate_expiry_timestamp_seconds{"));
}

/// Pebble (certificates living `validity`, or its default), an edge in front of a stand-in
/// ordering through `challenge`, and the first certificate served.
struct Issued {
    node: StandIn,
    pebble: Pebble,
    state: TempDir,
    edge: Edge,
    ports: Ports,
    root: String,
    leaf: Vec<u8>,
}

async fn issued(challenge: &str, validity: Option<Duration>) -> Issued {
    let node = StandIn::start("a");
    let ports = Ports::free();
    let pebble = Pebble::start(ports, validity, &[]);
    pebble.wait_up().await;
    let state = TempDir::new("acme-state");
    let edge = Edge::start_at(
        ports,
        TempDir::new("edge"),
        &node.toml(),
        &acme_section(&pebble, challenge, state.path()),
    );
    let root = pebble.issuing_root().await;
    eventually("the first certificate", || async {
        served_leaf(&edge, PLAY, &root).await.is_ok()
    })
    .await;
    let leaf = served_leaf(&edge, PLAY, &root).await.unwrap().0;
    Issued {
        node,
        pebble,
        state,
        edge,
        ports,
        root,
        leaf,
    }
}

#[tokio::test]
async fn renewal_replaces_the_served_certificate_while_a_websocket_stays_open() {
    let Issued {
        edge,
        root,
        leaf: first,
        node: _node,
        pebble: _pebble,
        state: _state,
        ..
    } = issued("http-01", Some(Duration::from_secs(12))).await;

    // A player's socket, opened over the first certificate.
    let tcp = tokio::net::TcpStream::connect(edge.https).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(client_config(&root, &[b"http/1.1"]))
        .connect(rustls::pki_types::ServerName::try_from(PLAY).unwrap(), tcp)
        .await
        .unwrap();
    let client = pebble_client(&edge, &root);
    eventually("ready", || async { readyz(&edge).await.0 == 200 }).await;
    let login = format!(
        "https://{PLAY}:{}/v2/account/authenticate/device",
        edge.https.port()
    );
    let (_, session) =
        with_server_key(&client, login, serde_json::json!({"id": "renewal-device"})).await;
    let url = format!(
        "wss://{PLAY}:{}/ws?token={}",
        edge.https.port(),
        session["token"].as_str().unwrap()
    );
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();

    // Renewal at two thirds of 12 s.
    eventually("a renewed certificate", || async {
        served_leaf(&edge, PLAY, &root)
            .await
            .is_ok_and(|(leaf, _)| leaf != first)
    })
    .await;
    assert!(attempts(&edge, "renew", "success").await >= 1.0);
    assert_eq!(
        ws_whoami(&mut ws).await["node"],
        "a",
        "the socket opened before the renewal still works"
    );
}

/// The `whoami` rpc's payload over `ws`.
async fn ws_whoami(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    >,
) -> serde_json::Value {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::Text(
        r#"{"cid":"7","rpc":{"id":"whoami","payload":""}}"#.into(),
    ))
    .await
    .unwrap();
    loop {
        match tokio::time::timeout(DEADLINE, ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) if t.contains("\"cid\":\"7\"") => {
                let envelope: serde_json::Value = serde_json::from_str(&t).unwrap();
                return serde_json::from_str(envelope["rpc"]["payload"].as_str().unwrap()).unwrap();
            }
            Some(Ok(_)) => {}
            other => panic!("socket ended: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_ca_outage_during_renewal_keeps_the_old_certificate_until_the_retry_succeeds() {
    let Issued {
        edge,
        root: old_root,
        leaf: first,
        mut pebble,
        node: _node,
        state: _state,
        ..
    } = issued("tls-alpn-01", Some(Duration::from_secs(15))).await;

    pebble.stop();
    eventually("renewal attempts failing", || async {
        attempts(&edge, "renew", "failure").await >= 2.0
    })
    .await;
    assert_eq!(
        served_leaf(&edge, PLAY, &old_root).await.unwrap().0,
        first,
        "the old certificate keeps serving"
    );
    assert!(edge.log().contains("the current certificate keeps serving"));

    // Pebble is back (with a new root and no memory of the account).
    pebble.restart().await;
    let new_root = pebble.issuing_root().await;
    eventually("renewed from the restarted CA", || async {
        served_leaf(&edge, PLAY, &new_root).await.is_ok()
    })
    .await;
    assert!(attempts(&edge, "renew", "success").await >= 1.0);
}

#[tokio::test]
async fn a_restart_reuses_the_stored_account_and_certificate_without_a_new_order() {
    let Issued {
        edge,
        root,
        leaf,
        node,
        pebble,
        state,
        ports,
    } = issued("http-01", None).await;
    let section = acme_section(&pebble, "http-01", state.path());
    let account = std::fs::read_to_string(state.path().join("account.json")).unwrap();
    let orders_before = pebble.log().matches("POST /order-plz").count();
    assert!(orders_before >= 1, "Pebble logs the first order");
    let dir = edge.stop();

    let edge = Edge::start_at(ports, dir, &node.toml(), &section);
    eventually("ready after the restart", || async {
        readyz(&edge).await.0 == 200
    })
    .await;
    assert_eq!(
        served_leaf(&edge, PLAY, &root).await.unwrap().0,
        leaf,
        "the stored certificate is served"
    );
    assert_eq!(
        attempts(&edge, "issue", "success").await + attempts(&edge, "issue", "failure").await,
        0.0
    );
    assert_eq!(
        std::fs::read_to_string(state.path().join("account.json")).unwrap(),
        account
    );
    assert_eq!(
        pebble.log().matches("POST /order-plz").count(),
        orders_before,
        "no new order"
    );
    assert!(edge.log().contains("serving the stored certificate"));
}

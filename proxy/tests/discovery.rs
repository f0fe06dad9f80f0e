//! Nodes found in DNS (`[[discover]]`), against real DNS servers on loopback: A records from
//! `pebble-challtestsrv`, SRV records from `dnsmasq`. Stand-in nodes listen on one port at
//! 127.0.0.11, .12 and .13, as pods of one Service would.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Command;

use serde_json::Value;
use support::dns::{port_free_on, ARecords, Srv, SrvRecords};
use support::*;

const HOST: &str = "nakama.test.";
const IPS: [&str; 3] = ["127.0.0.11", "127.0.0.12", "127.0.0.13"];

/// Stand-ins named n1, n2, n3 on one port at each of [`IPS`].
fn three_nodes() -> (Vec<StandIn>, u16) {
    let port = port_free_on(&IPS);
    let nodes = IPS
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            let http: SocketAddr = format!("{ip}:{port}").parse().unwrap();
            StandIn::start_with(&format!("n{}", i + 1), http, &[])
        })
        .collect();
    (nodes, port)
}

/// A `[[discover]]` entry named "nakama" for [`HOST`] on `port`, asking `dns`.
fn discover(port: u16, dns: SocketAddr, interval: &str) -> String {
    format!(
        "[[discover]]\nname = \"nakama\"\ndns = \"{HOST}\"\nport = {port}\ninterval = \"{interval}\"\nresolvers = [\"{dns}\"]\n"
    )
}

/// The node name discovery gives the node at `ip`.
fn named(ip: &str, port: u16) -> String {
    format!("nakama-{ip}:{port}")
}

async fn node_view(edge: &Edge, name: &str) -> Option<Value> {
    edge.nodes().await.into_iter().find(|n| n["name"] == name)
}

/// The nodes `n` whoami requests through the edge reached.
async fn reached(edge: &Edge, n: usize) -> HashSet<String> {
    let client = edge.client(None);
    let mut nodes = HashSet::new();
    for _ in 0..n {
        let who = whoami_http(edge, &client).await.expect("request served");
        nodes.insert(who["node"].as_str().unwrap().to_string());
    }
    nodes
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_added_to_the_record_get_traffic_after_their_first_check() {
    let dns = ARecords::start().await;
    dns.set(HOST, &IPS[..1]).await;
    let (nodes, port) = three_nodes();
    nodes[2].set_healthy(false).await;
    let edge = Edge::start(&discover(port, dns.addr, "1s"), "");
    let n1 = named(IPS[0], port);
    edge.wait_healthy(&[&n1]).await;
    let view = node_view(&edge, &n1).await.unwrap();
    assert_eq!(view["discovered_by"], "nakama");
    assert_eq!(view["address"], format!("{}:{port}", IPS[0]));
    assert_eq!(reached(&edge, 10).await, HashSet::from(["n1".to_string()]));

    // Two pods scale up: one passes its check and gets work, one fails it and gets none.
    dns.set(HOST, &IPS).await;
    let (n2, n3) = (named(IPS[1], port), named(IPS[2], port));
    eventually("the new healthy node in rotation", || async {
        edge.node_state(&n2).await == "healthy"
    })
    .await;
    eventually("the new failing node listed, out of rotation", || async {
        edge.node_state(&n3).await == "unhealthy"
    })
    .await;
    assert_eq!(
        reached(&edge, 30).await,
        HashSet::from(["n1".to_string(), "n2".to_string()]),
        "work for both checked nodes, none for the failing one"
    );
    edge.assert_metric("nakama_edge_discovered_nodes{discover=\"nakama\"}", 3.0)
        .await;
    assert!(
        edge.metric("nakama_edge_discovery_lookups_total{discover=\"nakama\",result=\"success\"}")
            .await
            >= 2.0
    );

    // Once it passes, it gets work too.
    nodes[2].set_healthy(true).await;
    eventually("the third node in rotation", || async {
        edge.node_state(&n3).await == "healthy"
    })
    .await;
    assert!(reached(&edge, 30).await.contains("n3"));
    assert!(
        edge.log().contains("discovered nodes changed"),
        "the change is logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_gone_from_the_record_keeps_its_websockets_and_gets_no_new_work() {
    let dns = ARecords::start().await;
    dns.set(HOST, &IPS[..2]).await;
    let (nodes, port) = three_nodes();
    let edge = Edge::start(&discover(port, dns.addr, "1s"), "");
    let (n1, n2) = (named(IPS[0], port), named(IPS[1], port));
    edge.wait_healthy(&[&n1, &n2]).await;

    // A player whose socket is on n2.
    let client = edge.client(None);
    let mut found = None;
    for i in 0..100 {
        let session = edge.authenticate(&client, &format!("departed-{i}")).await;
        let mut ws = edge
            .websocket(&session.token, ip("127.0.0.1"))
            .await
            .unwrap();
        if ws.node().await == "n2" {
            found = Some((session, ws));
            break;
        }
        ws.close().await;
    }
    let (session, mut ws) = found.expect("some player lands on n2");
    assert!(edge.metrics().await.contains(&format!("node=\"{n2}\"")));

    dns.set(HOST, &IPS[..1]).await;
    eventually("the departed node draining", || async {
        edge.node_state(&n2).await == "draining"
    })
    .await;
    let view = node_view(&edge, &n2).await.unwrap();
    assert_eq!(view["drained_by"], serde_json::json!(["dns"]));
    assert_eq!(view["websockets"], 1);

    // Its socket carries on; new work, the same player's next socket included, goes to n1.
    assert_eq!(ws.node().await, "n2");
    assert_eq!(reached(&edge, 20).await, HashSet::from(["n1".to_string()]));
    let mut again = edge
        .websocket(&session.token, ip("127.0.0.1"))
        .await
        .unwrap();
    assert_eq!(again.node().await, "n1");
    again.close().await;
    assert_eq!(ws.node().await, "n2", "still open after all that");
    assert_eq!(nodes[1].stats().await["websockets"], 1);
    // Some sweeps of departed nodes later (lookups and sweeps both run every second)...
    let success = "nakama_edge_discovery_lookups_total{discover=\"nakama\",result=\"success\"}";
    let lookups = edge.metric(success).await;
    eventually("two more lookups", || async {
        edge.metric(success).await >= lookups + 2.0
    })
    .await;
    let view = node_view(&edge, &n2)
        .await
        .expect("listed while its socket is open");
    assert_eq!(
        (view["state"].as_str(), view["websockets"].as_i64()),
        (Some("draining"), Some(1))
    );

    // The socket closes: the node's work is done, and it is gone from /nodes and the metrics.
    ws.close().await;
    eventually("the departed node removed", || async {
        edge.node_state(&n2).await == "absent"
    })
    .await;
    eventually("its metrics gone", || async {
        !edge.metrics().await.contains(&n2)
    })
    .await;
    edge.assert_metric("nakama_edge_discovered_nodes{discover=\"nakama\"}", 1.0)
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_departed_nodes_websockets_are_closed_after_drain_timeout() {
    let dns = ARecords::start().await;
    dns.set(HOST, &IPS[..2]).await;
    let (_nodes, port) = three_nodes();
    let edge = Edge::start(
        &discover(port, dns.addr, "1s"),
        "[routing]\ndrain_timeout = \"1s\"\n",
    );
    let (n1, n2) = (named(IPS[0], port), named(IPS[1], port));
    edge.wait_healthy(&[&n1, &n2]).await;
    let client = edge.client(None);
    let mut found = None;
    for i in 0..100 {
        let session = edge
            .authenticate(&client, &format!("timeout-player-{i}"))
            .await;
        let mut ws = edge
            .websocket(&session.token, ip("127.0.0.1"))
            .await
            .unwrap();
        if ws.node().await == "n2" {
            found = Some(ws);
            break;
        }
        ws.close().await;
    }
    let mut ws = found.expect("some player lands on n2");
    dns.set(HOST, &IPS[..1]).await;
    eventually("the departed node draining", || async {
        edge.node_state(&n2).await == "draining"
    })
    .await;
    // Traffic on the socket meets the deadline: closed "going away", so the client reconnects.
    let mut closed = None;
    for _ in 0..100 {
        if ws.whoami().await.is_err() {
            closed = Some(());
            break;
        }
        if let Some(how) = ws
            .closed_within(std::time::Duration::from_millis(200))
            .await
        {
            assert!(how.contains("Away") || how.contains("1001"), "{how}");
            closed = Some(());
            break;
        }
    }
    assert!(closed.is_some(), "the socket outlived drain_timeout");
    eventually("the departed node removed", || async {
        edge.node_state(&n2).await == "absent"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_dns_server_down_traffic_continues_on_the_last_set() {
    let mut dns = ARecords::start().await;
    dns.set(HOST, &IPS[..2]).await;
    let (_nodes, port) = three_nodes();
    let edge = Edge::start(&discover(port, dns.addr, "1s"), "");
    let (n1, n2) = (named(IPS[0], port), named(IPS[1], port));
    edge.wait_healthy(&[&n1, &n2]).await;

    let failed = || async {
        let metric = |result: &str| {
            format!(
                "nakama_edge_discovery_lookups_total{{discover=\"nakama\",result=\"{result}\"}}"
            )
        };
        edge.metric(&metric("failure")).await + edge.metric(&metric("timeout")).await
    };
    let before = failed().await;
    dns.stop();
    eventually("two failed lookups", || async {
        failed().await >= before + 2.0
    })
    .await;
    assert_eq!(
        reached(&edge, 30).await,
        HashSet::from(["n1".to_string(), "n2".to_string()]),
        "the last set keeps serving"
    );
    for name in [&n1, &n2] {
        assert_eq!(edge.node_state(name).await, "healthy");
    }
    assert!(edge
        .log()
        .contains("lookup failed: the last nodes found keep serving"));

    // Back, with a third node: lookups succeed and the new record is taken.
    dns.restart().await;
    dns.set(HOST, &IPS).await;
    let n3 = named(IPS[2], port);
    eventually("the third node found once DNS is back", || async {
        edge.node_state(&n3).await == "healthy"
    })
    .await;
    assert!(edge.log().contains("lookups succeed again"));
}

#[tokio::test(flavor = "multi_thread")]
async fn one_empty_answer_changes_nothing_two_empty_the_set() {
    let dns = ARecords::start().await;
    dns.set(HOST, &IPS[..2]).await;
    let (_nodes, port) = three_nodes();
    // After an empty answer the next lookup waits the whole interval: time to put the records
    // back before it.
    let edge = Edge::start(&discover(port, dns.addr, "5s"), "");
    let (n1, n2) = (named(IPS[0], port), named(IPS[1], port));
    edge.wait_healthy(&[&n1, &n2]).await;

    let empty = "nakama_edge_discovery_lookups_total{discover=\"nakama\",result=\"empty\"}";
    let success = "nakama_edge_discovery_lookups_total{discover=\"nakama\",result=\"success\"}";
    dns.clear(HOST).await;
    eventually("one empty answer", || async {
        edge.metric(empty).await >= 1.0
    })
    .await;
    dns.set(HOST, &IPS[..2]).await;
    let successes = edge.metric(success).await;
    eventually("the records answered again", || async {
        edge.metric(success).await > successes
    })
    .await;
    assert_eq!(edge.metric(empty).await, 1.0);
    for name in [&n1, &n2] {
        assert_eq!(edge.node_state(name).await, "healthy", "{name} was kept");
    }
    assert!(!edge.log().contains("departed=[\""), "nothing departed");

    // Two in a row: every node departs, and, idle, leaves.
    dns.clear(HOST).await;
    eventually("the set emptied", || async {
        edge.nodes().await.is_empty()
    })
    .await;
    assert!(edge.metric(empty).await >= 3.0);
    let ready = edge.admin_get("/readyz").await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("no routable node"));
}

#[tokio::test(flavor = "multi_thread")]
async fn srv_records_give_addresses_and_ports_and_never_a_console_port() {
    let port = port_free_on(&IPS);
    let nodes: Vec<StandIn> = IPS[..2]
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            StandIn::start_with(
                &format!("n{}", i + 1),
                format!("{ip}:{port}").parse().unwrap(),
                &[],
            )
        })
        .collect();
    let name = "_api._tcp.nakama.test";
    let record = |n: usize, port: u16| Srv {
        target: format!("n{n}.nakama.test"),
        port,
        ip: IPS[n - 1].to_string(),
    };
    let mut dns =
        SrvRecords::start(name, &[record(1, port), record(2, port), record(3, 7351)]).await;
    let entry = format!(
        "[[discover]]\nname = \"consul\"\nsrv = \"{name}\"\ninterval = \"1s\"\nresolvers = [\"{}\"]\n",
        dns.addr
    );
    let edge = Edge::start(&entry, "");
    let at = |ip: &str, port: u16| format!("consul-{ip}:{port}");
    edge.wait_healthy(&[&at(IPS[0], port), &at(IPS[1], port)])
        .await;
    let names: Vec<String> = edge
        .nodes()
        .await
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names.len(),
        2,
        "the console-port record is no node: {names:?}"
    );
    assert!(edge.log().contains("7351 is a Nakama console port"));
    assert_eq!(
        reached(&edge, 20).await,
        HashSet::from(["n1".to_string(), "n2".to_string()])
    );

    // What an operator sees from `check --resolve`.
    let out = Command::new(edge_bin())
        .args(["check", "--resolve", "-c"])
        .arg(&edge.config_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 [[discover]] entry"), "{text}");
    assert!(text.contains(&format!("SRV {name}")), "{text}");
    assert!(
        text.contains(&format!("consul-{}:{port}", IPS[0])),
        "{text}"
    );
    assert!(
        text.contains(&format!("consul-{}:{port}", IPS[1])),
        "{text}"
    );
    assert!(
        text.contains("left out: n3.nakama.test.:7351 is a Nakama console port"),
        "{text}"
    );

    // The record set shrinks: the node departs and, idle, leaves.
    dns.serve(&[record(1, port)]).await;
    eventually("the second node gone", || async {
        edge.node_state(&at(IPS[1], port)).await == "absent"
    })
    .await;
    assert_eq!(reached(&edge, 10).await, HashSet::from(["n1".to_string()]));
    drop(nodes);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lookup_failure_shows_in_check_resolve_with_exit_status_2() {
    let dns = ARecords::start().await;
    let dir = TempDir::new("check-resolve");
    let config = dir.path().join("edge.toml");
    // Nobody answers on this port; the other entry's name has no records.
    let silent = SocketAddr::from(([127, 0, 0, 1], port_free_on(&["127.0.0.1"])));
    std::fs::write(
        &config,
        format!(
            "{}[[discover]]\nname = \"down\"\ndns = \"x.test.\"\nport = 7350\nresolvers = [\"{silent}\"]\n",
            discover(7350, dns.addr, "5s")
        ),
    )
    .unwrap();
    let out = Command::new(edge_bin())
        .args(["check", "--resolve", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("[[discover]] \"nakama\""), "{text}");
    assert!(text.contains("no records"), "{text}");
    assert!(text.contains("[[discover]] \"down\""), "{text}");
    assert!(text.contains("lookup failed"), "{text}");
    // Without --resolve nothing is looked up.
    let out = Command::new(edge_bin())
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("lookup failed"));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_edges_reading_the_same_records_send_a_player_to_the_same_node() {
    let dns = ARecords::start().await;
    dns.set(HOST, &IPS).await;
    let (_nodes, port) = three_nodes();
    let entry = discover(port, dns.addr, "1s");
    let a = Edge::start(&entry, "");
    let b = Edge::start(&entry, "");
    let names: Vec<String> = IPS.iter().map(|ip| named(ip, port)).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    a.wait_healthy(&names).await;
    b.wait_healthy(&names).await;
    let client = a.client(None);
    let mut used = HashSet::new();
    for i in 0..12 {
        let session = a.authenticate(&client, &format!("both-edges-{i}")).await;
        let mut via_a = a.websocket(&session.token, ip("127.0.0.1")).await.unwrap();
        let mut via_b = b.websocket(&session.token, ip("127.0.0.2")).await.unwrap();
        let (on_a, on_b) = (via_a.node().await, via_b.node().await);
        assert_eq!(on_a, on_b, "player {i}");
        used.insert(on_a);
        via_a.close().await;
        via_b.close().await;
    }
    assert!(used.len() >= 2, "players spread over the nodes: {used:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_with_only_discovered_nodes_fails_nothing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let dns = ARecords::start().await;
    dns.set(HOST, &IPS).await;
    let (_nodes, port) = three_nodes();
    let mut edge = Edge::start(&discover(port, dns.addr, "1s"), "");
    let names: Vec<String> = IPS.iter().map(|ip| named(ip, port)).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    edge.wait_healthy(&names).await;

    let stop = Arc::new(AtomicBool::new(false));
    let url = edge.url("/v2/rpc/whoami?http_key=defaulthttpkey");
    let load = steady_load(&edge, &url, 4, Connections::Fresh, stop.clone());
    let served = format!(
        "nakama_edge_http_requests_total{{code=\"200\",node=\"{}\",route=\"api\"}}",
        names[0]
    );
    eventually("load on the old process", || async {
        edge.metric(&served).await > 20.0
    })
    .await;
    let mut old = edge.upgrade();
    let status = tokio::task::spawn_blocking(move || old.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0), "the old process exits cleanly");
    // The new process looked its nodes up before it took the sockets: it serves at once.
    let before = edge.metric(&served).await;
    eventually("the new process serving", || async {
        edge.metric(&served).await > before + 30.0
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let report = load.await.unwrap();
    assert!(
        report.failures.is_empty(),
        "{} of {} requests failed, first: {:?}",
        report.failures.len(),
        report.ok as usize + report.failures.len(),
        &report.failures[..report.failures.len().min(5)]
    );
    assert!(edge
        .log()
        .contains("first lookups of [[discover]] entries done"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_keeps_discovered_nodes_and_a_removed_entry_takes_its_nodes_along() {
    let dns = ARecords::start().await;
    dns.set(HOST, &IPS[1..]).await;
    let (_nodes, port) = three_nodes();
    let fixed = format!(
        "[[nodes]]\nname = \"fixed\"\naddress = \"{}:{port}\"\n",
        IPS[0]
    );
    let entry = discover(port, dns.addr, "1s");
    let edge = Edge::start(&format!("{fixed}{entry}"), "");
    let (n2, n3) = (named(IPS[1], port), named(IPS[2], port));
    edge.wait_healthy(&["fixed", &n2, &n3]).await;
    let reloads = "nakama_edge_config_reloads_total{result=\"success\"}";

    // A reload that changes something else keeps the discovered nodes, healthy.
    edge.write_config(
        &format!("{fixed}{entry}"),
        "[routing]\ndrain_timeout = \"2m\"\n",
    );
    edge.assert_metric(reloads, 1.0).await;
    for name in ["fixed", &n2, &n3] {
        assert_eq!(edge.node_state(name).await, "healthy", "{name}");
    }

    // The entry removed: its nodes go, as removed [[nodes]] entries do.
    edge.write_config(&fixed, "");
    edge.assert_metric(reloads, 2.0).await;
    let names: Vec<Value> = edge
        .nodes()
        .await
        .iter()
        .map(|n| n["name"].clone())
        .collect();
    assert_eq!(names, vec![Value::from("fixed")]);
    assert_eq!(reached(&edge, 10).await, HashSet::from(["n1".to_string()]));

    // And back: found again at once.
    edge.write_config(&format!("{fixed}{entry}"), "");
    edge.assert_metric(reloads, 3.0).await;
    eventually("the entry's nodes found again", || async {
        edge.node_state(&n2).await == "healthy" && edge.node_state(&n3).await == "healthy"
    })
    .await;
}

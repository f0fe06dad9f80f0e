//! What an operator sees from `Config::parse`: a full file accepted, and each kind of mistake
//! rejected with the line and column where it was made.

use std::time::Duration;

use nakama_edge_config::*;

const FULL: &str = r#"
[server]
threads = 4
grace_period = "30s"

[listeners]
https = "127.0.0.1:8443"
http = "127.0.0.1:8080"
http_redirect = true
admin = "127.0.0.1:9180"
console = "127.0.0.1:7451"

[tls]
cert = "/etc/nakama-edge/fullchain.pem"
key = "/etc/nakama-edge/privkey.pem"

[[nodes]]
name = "nakama-1"
address = "127.0.0.1:7350"
grpc = "127.0.0.1:7349"
console = "127.0.0.1:7351"
weight = 2

[[nodes]]
name = "nakama-2"
address = "127.0.0.2:7350"
drain = true

[health_check]
path = "/healthcheck"
interval = "2s"
timeout = "1s"
unhealthy_threshold = 3
healthy_threshold = 2

[routing]
websocket_path = "/ws"
sticky_key = "client_ip"
drain_timeout = "5m"

[firewall]
allow = ["0.0.0.0/0", "::/0"]
deny = ["127.0.0.9/32", "2001:db8::/32", "10.1.2.3"]
console_allow = ["127.0.0.1/32"]
trusted_proxies = []

[rate_limit]
requests_per_second = 50
burst = 100
auth_requests_per_minute = 30
connections_per_ip = 200
new_connections_per_second = 50

[timeouts]
tls_handshake = "10s"
request_header = "10s"
http_idle = "60s"
websocket_idle = "120s"
upstream_connect = "2s"
"#;

fn problems(text: &str) -> Vec<Problem> {
    match Config::parse(text, "test.toml") {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(ConfigError::Invalid { problems, .. }) => problems,
        Err(e) => panic!("unexpected error {e}"),
    }
}

fn one_problem(text: &str) -> Problem {
    let p = problems(text);
    assert_eq!(p.len(), 1, "{p:?}");
    p.into_iter().next().unwrap()
}

#[test]
fn the_contract_example_is_accepted_with_its_values() {
    let c = Config::parse(FULL, "full.toml").unwrap();
    assert_eq!(c.server.threads, 4);
    assert_eq!(c.listeners.https, Some("127.0.0.1:8443".parse().unwrap()));
    assert_eq!(c.listeners.console, Some("127.0.0.1:7451".parse().unwrap()));
    assert!(matches!(c.certificates, CertificateSource::Files { .. }));
    assert_eq!(c.nodes.len(), 2);
    assert_eq!(c.nodes[0].weight, 2);
    assert_eq!(c.nodes[0].grpc, Some("127.0.0.1:7349".parse().unwrap()));
    assert!(c.nodes[1].drain);
    assert_eq!(c.routing.sticky_key, StickyKey::ClientIp);
    assert_eq!(c.routing.drain_timeout, Duration::from_secs(300));
    assert_eq!(c.firewall.deny.len(), 3);
    assert_eq!(c.firewall.deny[2].to_string(), "10.1.2.3/32");
    assert_eq!(c.timeouts.websocket_idle, Duration::from_secs(120));
}

#[test]
fn defaults_fill_what_is_left_out() {
    let c = Config::parse(
        "[[nodes]]\nname = \"a\"\naddress = \"127.0.0.1:7350\"\n",
        "t",
    )
    .unwrap();
    assert_eq!(c.health_check.path, "/healthcheck");
    assert_eq!(c.health_check.interval, Duration::from_secs(2));
    assert_eq!(c.routing.websocket_path, "/ws");
    assert_eq!(c.routing.sticky_key, StickyKey::User);
    assert_eq!(c.listeners.admin, Some("127.0.0.1:9180".parse().unwrap()));
    assert!(c.listeners.http_redirect);
    assert_eq!(c.certificates, CertificateSource::SelfSigned);
    assert_eq!(c.firewall.allow.len(), 2);
    assert_eq!(c.timeouts.request_body, Duration::from_secs(30));
    assert_eq!(c.timeouts.upstream_read, Duration::from_secs(60));
}

#[test]
fn the_embedded_default_is_the_contracts() {
    let c = Config::embedded_default().unwrap();
    assert_eq!(c.listeners.https, Some("127.0.0.1:8443".parse().unwrap()));
    assert_eq!(c.listeners.http, Some("127.0.0.1:8080".parse().unwrap()));
    assert_eq!(c.listeners.admin, Some("127.0.0.1:9180".parse().unwrap()));
    assert_eq!(c.nodes[0].address, "127.0.0.1:7350".parse().unwrap());
    assert_eq!(c.certificates, CertificateSource::SelfSigned);
}

#[test]
fn unknown_key_is_an_error_at_its_line() {
    let p = one_problem("[server]\nthreads = 2\ngrace = \"1s\"\n");
    assert_eq!((p.line, p.column), (3, 1));
    assert!(p.message.contains("unknown field `grace`"), "{}", p.message);

    let p = one_problem("[[nodes]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\nwieght = 3\n");
    assert_eq!(p.line, 4);
    assert!(p.message.contains("wieght"));

    let p = one_problem("[sever]\nthreads = 2\n");
    assert_eq!(p.line, 1);
}

#[test]
fn syntax_error_has_a_position() {
    let p = one_problem("[server]\nthreads = \n");
    assert_eq!(p.line, 2);
}

#[test]
fn duplicate_node_names_point_at_the_second() {
    let p = one_problem(
        "[[nodes]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n\n[[nodes]]\nname = \"a\"\naddress = \"127.0.0.1:2\"\n",
    );
    assert_eq!((p.line, p.column), (6, 8));
    assert!(p.message.contains("used twice"));
}

#[test]
fn bad_cidr_points_at_the_entry() {
    let p = one_problem("[firewall]\ndeny = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n");
    assert_eq!((p.line, p.column), (2, 23));
    assert!(p.message.contains("10.0.0.0/33"));
}

#[test]
fn bad_durations_are_rejected() {
    let p = one_problem("[health_check]\ninterval = \"2\"\n");
    assert_eq!((p.line, p.column), (2, 12));
    assert!(p.message.contains("unit"));
    let p = one_problem("[timeouts]\nhttp_idle = \"5 minutes\"\n");
    assert_eq!(p.line, 2);
    let p = one_problem("[health_check]\ninterval = \"0s\"\n");
    assert!(p.message.contains("longer than 0"));
    let p = one_problem("[timeouts]\nwebsocket_idle = \"10s\"\n");
    assert!(p.message.contains("30s"));
    let p = one_problem("[timeouts]\nupstream_read = \"0s\"\n");
    assert!(p
        .message
        .contains("timeouts.upstream_read must be longer than 0"));
}

#[test]
fn a_node_on_a_console_port_is_refused() {
    let p = one_problem("[[nodes]]\nname = \"a\"\naddress = \"127.0.0.1:7351\"\n");
    assert_eq!((p.line, p.column), (3, 11));
    assert!(p.message.contains("console"));
    let p = one_problem(
        "[[nodes]]\nname = \"a\"\naddress = \"127.0.0.1:7350\"\ngrpc = \"127.0.0.1:7348\"\n",
    );
    assert_eq!(p.line, 4);
}

#[test]
fn every_problem_is_reported_at_once_in_file_order() {
    let p = problems(
        "[routing]\nsticky_key = \"session\"\n[firewall]\nallow = [\"nope\"]\n[[nodes]]\nname = \"a b\"\naddress = \"127.0.0.1:7351\"\nweight = 0\n",
    );
    let lines: Vec<usize> = p.iter().map(|p| p.line).collect();
    assert_eq!(lines, vec![2, 4, 6, 7, 8], "{p:?}");
}

#[test]
fn tls_and_acme_together_are_refused() {
    let p = one_problem(
        "[tls]\ncert = \"a\"\nkey = \"b\"\n[acme]\ndomains = [\"play.example.com\"]\ndirectory = \"https://x/dir\"\nstate_dir = \"/tmp/x\"\n",
    );
    assert!(p.message.contains("not both"));
}

#[test]
fn acme_section_is_typed() {
    let c = Config::parse(
        "[acme]\ndomains = [\"Play.Example.com\"]\ndirectory = \"https://127.0.0.1:14000/dir\"\nchallenge = \"http-01\"\nstate_dir = \"/tmp/acme\"\n",
        "t",
    )
    .unwrap();
    let CertificateSource::Acme(a) = c.certificates else {
        panic!()
    };
    assert_eq!(a.domains, vec!["play.example.com"]);
    assert_eq!(a.challenge, AcmeChallenge::Http01);
}

#[test]
fn error_text_names_file_line_and_column() {
    let e = Config::parse("[server]\nthreads = 0\n", "edge.toml").unwrap_err();
    assert_eq!(
        e.to_string(),
        "edge.toml:2:11: server.threads must be between 1 and 1024, not 0"
    );
}

#[test]
fn a_node_on_nakamas_metrics_port_is_refused() {
    let p = one_problem("[[nodes]]\nname = \"a\"\naddress = \"127.0.0.1:9100\"\n");
    assert_eq!((p.line, p.column), (3, 11));
    assert!(p.message.contains("metrics port"), "{}", p.message);
}

#[test]
fn the_admin_api_is_for_loopback_unless_configured() {
    let c = Config::parse("", "t").unwrap();
    let allowed: Vec<String> = c
        .firewall
        .admin_allow
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(allowed, ["127.0.0.0/8", "::1/128"]);
    let c = Config::parse("[firewall]\nadmin_allow = [\"10.0.0.0/8\"]\n", "t").unwrap();
    assert_eq!(c.firewall.admin_allow.len(), 1);
}

#[test]
fn a_cluster_section_is_read_and_its_url_never_printed() {
    let text = "[[nodes]]\nname = \"a\"\naddress = \"127.0.0.1:7350\"\n\n[cluster]\n\
                database = \"postgres://edge:s3cret@db.internal:5432/nakama_edge?sslmode=require\"\n\
                database_ca = \"/etc/nakama-edge/db-ca.pem\"\nname = \"edge-1\"\n";
    let config = Config::parse(text, "test.toml").unwrap();
    let cluster = config.cluster.as_ref().unwrap();
    assert_eq!(cluster.name, "edge-1");
    assert_eq!(
        cluster.database_ca.as_deref(),
        Some(std::path::Path::new("/etc/nakama-edge/db-ca.pem"))
    );
    assert!(cluster.database.expose().contains("db.internal"));
    assert!(
        !format!("{config:?}").contains("s3cret"),
        "Debug shows no password"
    );
    // Without a name: the host name.
    let unnamed = Config::parse(
        "[cluster]\ndatabase = \"postgresql://edge@db:5432/x\"\n",
        "test.toml",
    )
    .unwrap();
    assert!(!unnamed.cluster.unwrap().name.is_empty());
    assert!(Config::parse("", "t").unwrap().cluster.is_none());
}

#[test]
fn a_bad_cluster_section_points_at_its_mistakes_without_echoing_the_url() {
    let p = one_problem("[cluster]\ndatabase = \"mysql://root:hunter2@db/x\"\n");
    assert_eq!((p.line, p.column), (2, 12));
    assert!(p.message.contains("postgres://"), "{}", p.message);
    assert!(!p.message.contains("hunter2"));
    let p = one_problem("[cluster]\ndatabase = \"postgres://u:hunter2@/x\"\n");
    assert!(
        p.message.contains("no host") && !p.message.contains("hunter2"),
        "{}",
        p.message
    );
    let p = one_problem("[cluster]\ndatabase = \"postgres://db/x\"\nname = \"edge one\"\n");
    assert_eq!(p.line, 3);
    let p = one_problem("[cluster]\ndatabase = \"postgres://db/x\"\npassword = \"x\"\n");
    assert_eq!(p.line, 3, "unknown keys are errors: {}", p.message);
}

#[test]
fn discover_entries_are_read_with_their_defaults() {
    let c = Config::parse(
        r#"
[[discover]]
name = "k8s"
dns = "nakama.game.svc.cluster.local"
port = 7350
grpc_port = 7349

[[discover]]
name = "consul"
srv = "_api._tcp.nakama.service.consul."
interval = "30s"
weight = 3
resolvers = ["127.0.0.1:8600", "::1", "10.0.0.2"]
"#,
        "t",
    )
    .unwrap();
    assert!(c.nodes.is_empty(), "discovery alone is a valid config");
    assert_eq!(c.discover.len(), 2);
    let k8s = &c.discover[0];
    assert_eq!(
        k8s.source,
        DnsSource::Addresses {
            host: "nakama.game.svc.cluster.local".into(),
            port: 7350
        }
    );
    assert_eq!(k8s.grpc_port, Some(7349));
    assert_eq!(k8s.interval, Duration::from_secs(5));
    assert_eq!(k8s.weight, 1);
    assert!(k8s.resolvers.is_empty(), "the system's resolvers");
    let consul = &c.discover[1];
    assert_eq!(
        consul.source,
        DnsSource::Srv {
            name: "_api._tcp.nakama.service.consul.".into()
        }
    );
    assert_eq!(consul.interval, Duration::from_secs(30));
    assert_eq!(consul.weight, 3);
    assert_eq!(
        consul.resolvers,
        vec![
            "127.0.0.1:8600".parse().unwrap(),
            "[::1]:53".parse().unwrap(),
            "10.0.0.2:53".parse().unwrap()
        ]
    );
    assert!(
        c.summary().contains("2 [[discover]] entries"),
        "{}",
        c.summary()
    );
}

#[test]
fn discover_mistakes_point_at_their_keys() {
    let entry = |body: &str| format!("[[discover]]\nname = \"d\"\n{body}");
    let cases: &[(&str, u32, &str)] = &[
        ("dns = \"n.test\"\nport = 7351\n", 4, "console port"),
        ("dns = \"n.test\"\nport = 9100\n", 4, "metrics port"),
        (
            "dns = \"n.test\"\nport = 7350\ngrpc_port = 7348\n",
            5,
            "console port",
        ),
        ("dns = \"n.test\"\n", 3, "needs discover.port"),
        (
            "srv = \"_api._tcp.n.test\"\nport = 7350\n",
            4,
            "SRV record carries its own port",
        ),
        (
            "dns = \"n.test\"\nsrv = \"_api._tcp.n.test\"\nport = 1\n",
            4,
            "one or the other",
        ),
        ("interval = \"5s\"\n", 2, "needs dns (with port) or srv"),
        ("dns = \"n..test\"\nport = 7350\n", 3, "not a DNS name"),
        (
            "dns = \"n.test\"\nport = 7350\nresolvers = [\"dns.google\"]\n",
            5,
            "not an address",
        ),
        (
            "dns = \"n.test\"\nport = 7350\ninterval = \"100ms\"\n",
            5,
            "at least 1s",
        ),
        ("dns = \"n.test\"\nport = 70000\n", 4, "must be a port"),
        (
            "dns = \"n.test\"\nport = 7400\nconsole_port = 7400\n",
            4,
            "the console port of discover \"d\"",
        ),
        (
            "dns = \"n.test\"\nport = 7350\ngrpc_port = 7397\nconsole_port = 7400\n",
            5,
            "the console gRPC port of discover \"d\"",
        ),
    ];
    for (body, line, message) in cases {
        let p = one_problem(&entry(body));
        assert_eq!(p.line as u32, *line, "{body}: {p:?}");
        assert!(p.message.contains(message), "{body}: {}", p.message);
    }
    // Two entries of one name, and a name whose nodes would look like a [[nodes]] entry's.
    let p = one_problem(
        "[[discover]]\nname = \"d\"\nsrv = \"_a._tcp.x\"\n[[discover]]\nname = \"d\"\nsrv = \"_b._tcp.x\"\n",
    );
    assert_eq!(p.line, 5);
    assert!(p.message.contains("used twice"), "{}", p.message);
    let p = one_problem(
        "[[nodes]]\nname = \"nakama-1\"\naddress = \"127.0.0.1:7350\"\n[[discover]]\nname = \"nakama\"\nsrv = \"_a._tcp.x\"\n",
    );
    assert_eq!(p.line, 5);
    assert!(
        p.message.contains("like a [[nodes]] entry"),
        "{}",
        p.message
    );
}

#[test]
fn a_node_at_another_nodes_console_or_console_grpc_address_is_refused() {
    let nodes = |second: &str| {
        format!(
            "[[nodes]]\nname = \"a\"\naddress = \"127.0.0.1:7350\"\nconsole = \"127.0.0.1:7451\"\n\
             [[nodes]]\nname = \"b\"\n{second}"
        )
    };
    // Its HTTP address on a's console: players would reach a's console.
    let p = one_problem(&nodes("address = \"127.0.0.1:7451\"\n"));
    assert_eq!((p.line, p.column), (7, 11), "{p:?}");
    assert!(
        p.message.contains("the console of node \"a\""),
        "{}",
        p.message
    );
    // Its gRPC on a's console gRPC (Nakama's console port - 3).
    let p = one_problem(&nodes(
        "address = \"127.0.0.1:7360\"\ngrpc = \"127.0.0.1:7448\"\n",
    ));
    assert_eq!(p.line, 8, "{p:?}");
    assert!(
        p.message.contains("the console gRPC of node \"a\""),
        "{}",
        p.message
    );
    // The same ports on another address are another machine's: allowed.
    assert!(Config::parse(&nodes("address = \"127.0.0.2:7451\"\n"), "t").is_ok());
}

#[test]
fn the_seal_refuses_declared_consoles_and_nakamas_ports_and_nothing_else() {
    let c = Config::parse(
        "[[nodes]]\nname = \"a\"\naddress = \"10.0.0.1:7350\"\nconsole = \"10.0.0.1:7451\"\n\
         [[discover]]\nname = \"d\"\ndns = \"n.test\"\nport = 7350\nconsole_port = 7500\n",
        "t",
    )
    .unwrap();
    let seal = c.seal();
    let refused = |a: &str| seal.refuses(a.parse().unwrap()).is_some();
    for sealed in [
        "10.0.0.1:7451",
        "10.0.0.1:7448",
        "10.0.0.9:7500",
        "10.0.0.9:7497",
        "10.0.0.9:7351",
        "10.0.0.9:7348",
        "10.0.0.9:9100",
    ] {
        assert!(refused(sealed), "{sealed} must be sealed");
    }
    for open in ["10.0.0.1:7350", "10.0.0.2:7451", "10.0.0.9:7349"] {
        assert!(!refused(open), "{open} is a node's address");
    }
}

#[test]
fn shard_mode_is_read_with_its_defaults() {
    let c = Config::parse(
        "[routing]\nmode = \"shards\"\n[nakama]\nsession_key = \"k\"\n\
         [[shards]]\nname = \"eu\"\nnode = \"a\"\nstandby = \"b\"\n\
         [[shards]]\nname = \"us\"\nnode = \"found\"\n\
         [[discover]]\nname = \"found\"\nsrv = \"_api._tcp.n.test\"\n\
         [[nodes]]\nname = \"a\"\naddress = \"127.0.0.1:7350\"\n\
         [[nodes]]\nname = \"b\"\naddress = \"127.0.0.2:7350\"\n",
        "t",
    )
    .unwrap();
    assert_eq!(c.routing.mode, RoutingMode::Shards);
    assert_eq!(c.routing.shard_var, "shard");
    assert_eq!(
        c.shards,
        vec![
            Shard {
                name: "eu".into(),
                node: "a".into(),
                standby: Some("b".into())
            },
            Shard {
                name: "us".into(),
                node: "found".into(),
                standby: None
            },
        ]
    );
    let c = Config::parse("", "t").unwrap();
    assert_eq!(c.routing.mode, RoutingMode::Cluster);
    assert!(c.shards.is_empty());
}

#[test]
fn shard_mistakes_point_at_their_keys() {
    let nodes = "[[nodes]]\nname = \"a\"\naddress = \"127.0.0.1:7350\"\n\
                 [[nodes]]\nname = \"b\"\naddress = \"127.0.0.2:7350\"\n";
    let shards_mode = "[routing]\nmode = \"shards\"\n[nakama]\nsession_key = \"k\"\n";
    let cases: &[(String, usize, &str)] = &[
        (
            format!("{shards_mode}[[shards]]\nname = \"s\"\nnode = \"c\"\n{nodes}"),
            7,
            "neither a [[nodes]] nor a [[discover]] name",
        ),
        (
            format!(
                "{shards_mode}[[shards]]\nname = \"s\"\nnode = \"a\"\n\
                 [[shards]]\nname = \"t\"\nnode = \"a\"\n{nodes}"
            ),
            10,
            "already holds shard \"s\"",
        ),
        (
            format!(
                "{shards_mode}[[shards]]\nname = \"s\"\nnode = \"a\"\nstandby = \"a\"\n{nodes}"
            ),
            8,
            "the shard's own node",
        ),
        (
            format!(
                "{shards_mode}[[shards]]\nname = \"s\"\nnode = \"a\"\n\
                 [[shards]]\nname = \"s\"\nnode = \"b\"\n{nodes}"
            ),
            9,
            "used twice",
        ),
        (
            format!("{shards_mode}[[shards]]\nname = \"none\"\nnode = \"a\"\n{nodes}"),
            6,
            "labels the requests of no shard",
        ),
        (
            format!("[routing]\nmode = \"shards\"\n{nodes}"),
            2,
            "set [nakama] session_key",
        ),
        (
            format!("[[shards]]\nname = \"s\"\nnode = \"a\"\n{nodes}"),
            2,
            "is for routing.mode = \"shards\"",
        ),
        (
            "[routing]\nmode = \"sharded\"\n".to_string(),
            2,
            "\"cluster\" or \"shards\"",
        ),
        (
            "[routing]\nshard_var = \"\"\n".to_string(),
            2,
            "must not be empty",
        ),
    ];
    for (text, line, message) in cases {
        let p = one_problem(text);
        assert_eq!(p.line, *line, "{text}: {p:?}");
        assert!(p.message.contains(message), "{text}: {}", p.message);
    }
}

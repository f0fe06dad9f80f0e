//! From [`RawConfig`] to [`Config`]: defaults, types and every cross-field rule, collecting
//! all problems instead of stopping at the first.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;

use crate::schema::*;
use crate::*;

struct Checker<'a> {
    text: &'a str,
    problems: Vec<(usize, String)>,
}

pub(crate) fn parse(text: &str) -> Result<Config, Vec<Problem>> {
    let mut c = Checker {
        text,
        problems: Vec::new(),
    };
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let at = e.span().map_or(0, |s| s.start);
            c.problems.push((at, e.message().trim().to_string()));
            return Err(c.finish());
        }
    };
    let config = c.config(raw);
    if c.problems.is_empty() {
        Ok(config)
    } else {
        Err(c.finish())
    }
}

impl Checker<'_> {
    fn problem(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.problems.push((span.start, message.into()));
    }

    fn finish(mut self) -> Vec<Problem> {
        self.problems.sort_by_key(|(at, _)| *at);
        let text = self.text;
        self.problems
            .into_iter()
            .map(|(at, message)| {
                let at = at.min(text.len());
                let before = &text[..text.floor_char_boundary_compat(at)];
                let line = before.matches('\n').count() + 1;
                let line_start = before.rfind('\n').map_or(0, |i| i + 1);
                let column = before[line_start..].chars().count() + 1;
                Problem {
                    line,
                    column,
                    message,
                }
            })
            .collect()
    }

    fn duration(
        &mut self,
        value: &S<String>,
        key: &str,
        default: Duration,
        positive: bool,
    ) -> Duration {
        let Some(v) = value else { return default };
        match parse_duration(v.get_ref()) {
            Ok(d) if positive && d.is_zero() => {
                self.problem(v.span(), format!("{key} must be longer than 0"));
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.problem(v.span(), format!("{key}: {e}"));
                default
            }
        }
    }

    fn number(&mut self, value: &S<i64>, key: &str, default: u32, min: u32, max: u32) -> u32 {
        let Some(v) = value else { return default };
        match u32::try_from(*v.get_ref()) {
            Ok(n) if (min..=max).contains(&n) => n,
            _ => {
                self.problem(
                    v.span(),
                    format!("{key} must be between {min} and {max}, not {}", v.get_ref()),
                );
                default
            }
        }
    }

    fn address(&mut self, value: &Spanned<String>, key: &str) -> Option<SocketAddr> {
        let text = value.get_ref();
        if let Ok(a) = text.parse::<SocketAddr>() {
            return Some(a);
        }
        match text.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(a)) => Some(a),
            _ => {
                self.problem(
                    value.span(),
                    format!("{key}: {text:?} is not a host:port address"),
                );
                None
            }
        }
    }

    fn cidrs(&mut self, values: &[Spanned<String>], key: &str) -> Vec<IpNet> {
        let mut out = Vec::with_capacity(values.len());
        for v in values {
            let text = v.get_ref().trim();
            match text.parse::<IpNet>() {
                Ok(net) => out.push(net.trunc()),
                Err(_) => match text.parse::<IpAddr>() {
                    Ok(ip) => out.push(IpNet::from(ip)),
                    Err(_) => self.problem(
                        v.span(),
                        format!("{key}: {text:?} is not a CIDR (like \"10.0.0.0/8\" or \"2001:db8::/32\") or an IP address"),
                    ),
                },
            }
        }
        out
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let server = Server {
            threads: self.number(&raw.server.threads, "server.threads", 2, 1, 1024) as usize,
            grace_period: self.duration(
                &raw.server.grace_period,
                "server.grace_period",
                Duration::from_secs(30),
                false,
            ),
            upgrade_socket: raw.server.upgrade_socket.as_ref().and_then(|p| {
                if p.get_ref().is_empty() {
                    self.problem(p.span(), "server.upgrade_socket must not be empty");
                    return None;
                }
                Some(PathBuf::from(p.get_ref()))
            }),
            state_dir: raw.server.state_dir.as_ref().and_then(|p| {
                if p.get_ref().is_empty() {
                    self.problem(p.span(), "server.state_dir must not be empty");
                    return None;
                }
                Some(PathBuf::from(p.get_ref()))
            }),
        };

        let l = &raw.listeners;
        let mut listener =
            |v: &S<String>, key: &str, default: Option<&str>| -> Option<SocketAddr> {
                match v {
                    Some(v) => self.address(v, key),
                    None => default.and_then(|d| d.parse().ok()),
                }
            };
        let listeners = Listeners {
            https: listener(&l.https, "listeners.https", Some("0.0.0.0:443")),
            http: listener(&l.http, "listeners.http", Some("0.0.0.0:80")),
            http_redirect: l.http_redirect.unwrap_or(true),
            admin: listener(&l.admin, "listeners.admin", Some("127.0.0.1:9180")),
            console: listener(&l.console, "listeners.console", None),
        };
        self.distinct_listeners(&raw.listeners, &listeners);

        let certificates = self.certificates(raw.tls, raw.acme);
        let nodes = self.nodes(&raw.nodes);

        let h = &raw.health_check;
        let path = h
            .path
            .as_ref()
            .map_or_else(|| "/healthcheck".to_string(), |p| p.get_ref().clone());
        if let Some(p) = &h.path {
            if !p.get_ref().starts_with('/') {
                self.problem(p.span(), "health_check.path must start with '/'");
            }
        }
        let health_check = HealthCheck {
            path,
            interval: self.duration(
                &h.interval,
                "health_check.interval",
                Duration::from_secs(2),
                true,
            ),
            timeout: self.duration(
                &h.timeout,
                "health_check.timeout",
                Duration::from_secs(1),
                true,
            ),
            unhealthy_threshold: self.number(
                &h.unhealthy_threshold,
                "health_check.unhealthy_threshold",
                3,
                1,
                100,
            ),
            healthy_threshold: self.number(
                &h.healthy_threshold,
                "health_check.healthy_threshold",
                2,
                1,
                100,
            ),
        };

        let r = &raw.routing;
        let websocket_path = r
            .websocket_path
            .as_ref()
            .map_or_else(|| "/ws".to_string(), |p| p.get_ref().clone());
        if let Some(p) = &r.websocket_path {
            if !p.get_ref().starts_with('/') {
                self.problem(p.span(), "routing.websocket_path must start with '/'");
            }
        }
        let sticky_key = match r
            .sticky_key
            .as_ref()
            .map(|s| (s.get_ref().as_str(), s.span()))
        {
            None | Some(("user", _)) => StickyKey::User,
            Some(("client_ip", _)) => StickyKey::ClientIp,
            Some((other, span)) => {
                self.problem(
                    span,
                    format!("routing.sticky_key must be \"user\" or \"client_ip\", not {other:?}"),
                );
                StickyKey::User
            }
        };
        let mode = match r.mode.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
            None | Some(("cluster", _)) => RoutingMode::Cluster,
            Some(("shards", _)) => RoutingMode::Shards,
            Some((other, span)) => {
                self.problem(
                    span,
                    format!("routing.mode must be \"cluster\" or \"shards\", not {other:?}"),
                );
                RoutingMode::Cluster
            }
        };
        let shard_var = match &r.shard_var {
            Some(v) if v.get_ref().is_empty() => {
                self.problem(v.span(), "routing.shard_var must not be empty");
                "shard".to_string()
            }
            Some(v) => v.get_ref().clone(),
            None => "shard".to_string(),
        };
        let routing = Routing {
            websocket_path,
            sticky_key,
            drain_timeout: self.duration(
                &r.drain_timeout,
                "routing.drain_timeout",
                Duration::from_secs(300),
                false,
            ),
            mode,
            shard_var,
        };

        let f = &raw.firewall;
        let firewall = Firewall {
            allow: match &f.allow {
                Some(allow) => self.cidrs(allow, "firewall.allow"),
                None => vec![IpNet::V4(Default::default()), IpNet::V6(Default::default())],
            },
            deny: self.cidrs(&f.deny, "firewall.deny"),
            console_allow: self.cidrs(&f.console_allow, "firewall.console_allow"),
            trusted_proxies: self.cidrs(&f.trusted_proxies, "firewall.trusted_proxies"),
            admin_allow: match &f.admin_allow {
                Some(list) => self.cidrs(list, "firewall.admin_allow"),
                None => vec![
                    IpNet::V4(
                        ipnet::Ipv4Net::new(std::net::Ipv4Addr::LOCALHOST, 8)
                            .unwrap_or_default()
                            .trunc(),
                    ),
                    IpNet::V6(
                        ipnet::Ipv6Net::new(std::net::Ipv6Addr::LOCALHOST, 128).unwrap_or_default(),
                    ),
                ],
            },
        };

        let rl = &raw.rate_limit;
        let max = 10_000_000;
        let rate_limit = RateLimit {
            // Defaults chosen for players behind one address (README, "Rate limits").
            requests_per_second: self.number(
                &rl.requests_per_second,
                "rate_limit.requests_per_second",
                200,
                1,
                max,
            ),
            burst: self.number(&rl.burst, "rate_limit.burst", 400, 1, max),
            auth_requests_per_minute: self.number(
                &rl.auth_requests_per_minute,
                "rate_limit.auth_requests_per_minute",
                1000,
                1,
                max,
            ),
            connections_per_ip: self.number(
                &rl.connections_per_ip,
                "rate_limit.connections_per_ip",
                2000,
                1,
                max,
            ),
            new_connections_per_second: self.number(
                &rl.new_connections_per_second,
                "rate_limit.new_connections_per_second",
                200,
                1,
                max,
            ),
            login_failures_per_minute: self.number(
                &rl.login_failures_per_minute,
                "rate_limit.login_failures_per_minute",
                10,
                1,
                max,
            ),
            websocket_messages_per_second: self.number(
                &rl.websocket_messages_per_second,
                "rate_limit.websocket_messages_per_second",
                100,
                1,
                max,
            ),
            websocket_message_burst: self.number(
                &rl.websocket_message_burst,
                "rate_limit.websocket_message_burst",
                200,
                1,
                max,
            ),
        };

        let t = &raw.timeouts;
        let timeouts = Timeouts {
            tls_handshake: self.duration(
                &t.tls_handshake,
                "timeouts.tls_handshake",
                Duration::from_secs(10),
                true,
            ),
            request_header: self.duration(
                &t.request_header,
                "timeouts.request_header",
                Duration::from_secs(10),
                true,
            ),
            http_idle: self.duration(
                &t.http_idle,
                "timeouts.http_idle",
                Duration::from_secs(60),
                true,
            ),
            websocket_idle: self.duration(
                &t.websocket_idle,
                "timeouts.websocket_idle",
                Duration::from_secs(120),
                true,
            ),
            upstream_connect: self.duration(
                &t.upstream_connect,
                "timeouts.upstream_connect",
                Duration::from_secs(2),
                true,
            ),
            upstream_read: self.duration(
                &t.upstream_read,
                "timeouts.upstream_read",
                Duration::from_secs(60),
                true,
            ),
            request_body: self.duration(
                &t.request_body,
                "timeouts.request_body",
                Duration::from_secs(30),
                true,
            ),
        };
        if let Some(ws) = &t.websocket_idle {
            if timeouts.websocket_idle < Duration::from_secs(30) {
                self.problem(
                    ws.span(),
                    "timeouts.websocket_idle must be at least 30s: Nakama pings every 15s and a shorter idle timeout cuts healthy sockets",
                );
            }
        }

        let l = &raw.log;
        let format = match l.format.as_ref().map(|f| (f.get_ref().as_str(), f.span())) {
            None | Some(("human", _)) => LogFormat::Human,
            Some(("json", _)) => LogFormat::Json,
            Some((other, span)) => {
                self.problem(
                    span,
                    format!("log.format must be \"human\" or \"json\", not {other:?}"),
                );
                LogFormat::Human
            }
        };
        let level = l
            .level
            .as_ref()
            .map_or_else(|| "info".to_string(), |v| v.get_ref().clone());
        if let Some(v) = &l.level {
            let valid = v.get_ref().split(',').all(|directive| {
                let level = directive
                    .rsplit('=')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                ["trace", "debug", "info", "warn", "error", "off"].contains(&level.as_str())
            });
            if !valid {
                self.problem(v.span(), format!("log.level {:?} is not a level (trace, debug, info, warn, error, off) or target=level list", v.get_ref()));
            }
        }
        let log = Log {
            level,
            format,
            access_log: l.access_log.unwrap_or(true),
        };

        let cluster = raw.cluster.map(|c| self.cluster(c.into_inner()));
        let nakama = raw
            .nakama
            .map(|n| self.nakama(n.into_inner()))
            .unwrap_or_default();
        let discover = self.discover(&raw.discover, &nodes);
        self.sealed(&raw.nodes, &nodes, &discover);
        let shards = self.shards(
            &raw.routing,
            &raw.shards,
            &routing,
            &nakama,
            &nodes,
            &discover,
        );

        Config {
            server,
            listeners,
            certificates,
            nodes,
            health_check,
            routing,
            firewall,
            rate_limit,
            timeouts,
            log,
            cluster,
            nakama,
            discover,
            shards,
        }
    }

    /// `[[shards]]`, and what shard mode needs: verified session tokens, and shards whose
    /// nodes exist and hold one shard each.
    fn shards(
        &mut self,
        raw_routing: &RawRouting,
        raw: &[RawShard],
        routing: &Routing,
        nakama: &Nakama,
        nodes: &[Node],
        discover: &[Discover],
    ) -> Vec<Shard> {
        if routing.mode == RoutingMode::Shards && nakama.session_keys.is_empty() {
            let at = raw_routing.mode.as_ref().map_or(0..0, |m| m.span());
            self.problem(
                at,
                "routing.mode = \"shards\" reads each player's shard from their verified \
                 session token: set [nakama] session_key (Nakama's session.encryption_key)",
            );
        }
        if routing.mode == RoutingMode::Cluster {
            if let Some(first) = raw.first() {
                self.problem(
                    first.name.span(),
                    "[[shards]] is for routing.mode = \"shards\" (set it in [routing])",
                );
            }
        }
        let known = |name: &str| {
            nodes.iter().any(|n| n.name == name) || discover.iter().any(|d| d.name == name)
        };
        let mut names: HashSet<&str> = HashSet::new();
        let mut holders: HashMap<&str, &str> = HashMap::new();
        let mut shards = Vec::with_capacity(raw.len());
        for s in raw {
            let name = s.name.get_ref();
            if name.is_empty() || name.len() > 64 {
                self.problem(s.name.span(), "shards.name must be 1 to 64 characters");
            } else if name == "none" {
                self.problem(
                    s.name.span(),
                    "shards.name \"none\" is taken: it labels the requests of no shard",
                );
            } else if !names.insert(name) {
                self.problem(s.name.span(), format!("shards.name {name:?} is used twice"));
            }
            let node = s.node.get_ref();
            if !known(node) {
                self.problem(
                    s.node.span(),
                    format!("shards.node {node:?} is neither a [[nodes]] nor a [[discover]] name"),
                );
            } else if let Some(other) = holders.insert(node, name) {
                self.problem(
                    s.node.span(),
                    format!("shards.node {node:?} already holds shard {other:?}: a node holds one shard"),
                );
            }
            if let Some(standby) = &s.standby {
                let standby_name = standby.get_ref();
                if standby_name == node {
                    self.problem(
                        standby.span(),
                        format!("shards.standby {standby_name:?} is the shard's own node"),
                    );
                } else if !known(standby_name) {
                    self.problem(
                        standby.span(),
                        format!(
                            "shards.standby {standby_name:?} is neither a [[nodes]] nor a [[discover]] name"
                        ),
                    );
                }
            }
            shards.push(Shard {
                name: name.clone(),
                node: node.clone(),
                standby: s.standby.as_ref().map(|s| s.get_ref().clone()),
            });
        }
        shards
    }

    /// A port that a node may be reached on by players: not a console or metrics port.
    fn node_port(&mut self, value: &S<i64>, key: &str) -> Option<u16> {
        let v = value.as_ref()?;
        let port = match u16::try_from(*v.get_ref()) {
            Ok(p) if p > 0 => p,
            _ => {
                self.problem(v.span(), format!("{key} must be a port (1 to 65535)"));
                return None;
            }
        };
        if let Some(why) = refused_node_port(port) {
            self.problem(v.span(), format!("{key} {port} is {why}"));
        }
        Some(port)
    }

    fn discover(&mut self, raw: &[RawDiscover], nodes: &[Node]) -> Vec<Discover> {
        let mut names: HashSet<String> = HashSet::new();
        let mut out = Vec::new();
        for d in raw {
            let name = d.name.get_ref().clone();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                self.problem(
                    d.name.span(),
                    format!("discover.name {name:?} must be letters, digits, '-', '_' or '.'"),
                );
            } else if !names.insert(name.clone()) {
                self.problem(
                    d.name.span(),
                    format!("discover.name {name:?} is used twice"),
                );
            } else if nodes
                .iter()
                .any(|n| n.name.starts_with(&format!("{name}-")))
            {
                self.problem(
                    d.name.span(),
                    format!("discover.name {name:?} would name nodes like a [[nodes]] entry does"),
                );
            }
            let port = self.node_port(&d.port, "discover.port");
            let source = match (&d.dns, &d.srv) {
                (Some(host), None) => match port {
                    Some(port) => Some(DnsSource::Addresses {
                        host: host.get_ref().clone(),
                        port,
                    }),
                    None => {
                        if d.port.is_none() {
                            self.problem(
                                host.span(),
                                "discover.dns needs discover.port (the nodes' HTTP port)",
                            );
                        }
                        None
                    }
                },
                (None, Some(srv)) => {
                    if let Some(p) = &d.port {
                        self.problem(
                            p.span(),
                            "discover.port is for dns; an SRV record carries its own port",
                        );
                    }
                    Some(DnsSource::Srv {
                        name: srv.get_ref().clone(),
                    })
                }
                (Some(_), Some(srv)) => {
                    self.problem(
                        srv.span(),
                        "discover.dns and discover.srv are one or the other",
                    );
                    None
                }
                (None, None) => {
                    self.problem(d.name.span(), "discover needs dns (with port) or srv");
                    None
                }
            };
            for (host, key) in [(&d.dns, "discover.dns"), (&d.srv, "discover.srv")] {
                if let Some(h) = host {
                    let text = h.get_ref().trim_end_matches('.');
                    let valid = !text.is_empty()
                        && text.split('.').all(|label| {
                            !label.is_empty()
                                && label.len() <= 63
                                && label
                                    .chars()
                                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                        });
                    if !valid {
                        self.problem(h.span(), format!("{key} {text:?} is not a DNS name"));
                    }
                }
            }
            let grpc_port = self.node_port(&d.grpc_port, "discover.grpc_port");
            let console_port =
                d.console_port
                    .as_ref()
                    .and_then(|v| match u16::try_from(*v.get_ref()) {
                        Ok(p) if p > 0 => Some(p),
                        _ => {
                            self.problem(
                                v.span(),
                                "discover.console_port must be a port (1 to 65535)",
                            );
                            None
                        }
                    });
            if let Some(console_port) = console_port {
                // The entry's own console: never its nodes' HTTP or gRPC port.
                let mut own = Seal::default();
                own.add_console_port(console_port, &format!("discover {name:?}"));
                for (raw, port, key) in [
                    (&d.port, port, "discover.port"),
                    (&d.grpc_port, grpc_port, "discover.grpc_port"),
                ] {
                    let why = port.and_then(|p| own.refuses(SocketAddr::from(([0, 0, 0, 0], p))));
                    if let (Some(raw), Some(why)) = (raw, why) {
                        self.problem(raw.span(), format!("{key} is {why}"));
                    }
                }
            }
            let weight = self.number(&d.weight, "discover.weight", 1, 1, 1000);
            let interval = self.duration(
                &d.interval,
                "discover.interval",
                Duration::from_secs(5),
                true,
            );
            if let Some(v) = &d.interval {
                if !interval.is_zero() && interval < Duration::from_secs(1) {
                    self.problem(
                        v.span(),
                        "discover.interval must be at least 1s: a DNS server is not a health check",
                    );
                }
            }
            let mut resolvers = Vec::new();
            for r in &d.resolvers {
                let text = r.get_ref();
                match text.parse::<SocketAddr>().or_else(|_| {
                    text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53))
                }) {
                    Ok(a) => resolvers.push(a),
                    Err(_) => self.problem(
                        r.span(),
                        format!("discover.resolvers: {text:?} is not an address (10.0.0.2:53 or 10.0.0.2)"),
                    ),
                }
            }
            if let Some(source) = source {
                out.push(Discover {
                    name,
                    source,
                    grpc_port,
                    console_port,
                    weight,
                    interval,
                    resolvers,
                });
            }
        }
        out
    }

    fn nakama(&mut self, raw: RawNakama) -> Nakama {
        let mut keys: Vec<(String, Range<usize>)> = Vec::new();
        match (&raw.session_key, &raw.session_key_file) {
            (Some(_), Some(file)) => self.problem(
                file.span(),
                "nakama.session_key_file and nakama.session_key are one or the other",
            ),
            (Some(key), None) => match key.get_ref() {
                OneOrMany::One(k) => keys.push((k.clone(), key.span())),
                OneOrMany::Many(ks) => keys.extend(ks.iter().map(|k| (k.clone(), key.span()))),
            },
            (None, Some(file)) => match std::fs::read_to_string(file.get_ref()) {
                // One key a line (the new one and the one it replaces, during a rotation).
                Ok(text) => {
                    let before = keys.len();
                    keys.extend(
                        text.lines()
                            .map(str::trim)
                            .filter(|l| !l.is_empty() && !l.starts_with('#'))
                            .map(|k| (k.to_string(), file.span())),
                    );
                    if keys.len() == before {
                        self.problem(file.span(), "nakama.session_key_file holds no key");
                    }
                }
                Err(e) => self.problem(
                    file.span(),
                    format!(
                        "nakama.session_key_file: cannot read {}: {e}",
                        file.get_ref()
                    ),
                ),
            },
            (None, None) => {}
        }
        let mut session_keys = Vec::new();
        for (key, span) in keys {
            if key.is_empty() {
                self.problem(span, "nakama.session_key must not be empty");
            } else {
                session_keys.push(Secret(key));
            }
        }
        Nakama { session_keys }
    }

    fn cluster(&mut self, raw: RawCluster) -> Cluster {
        let url = raw.database.get_ref();
        // Checked without ever echoing the URL: it may hold a password.
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"));
        match rest {
            None => self.problem(
                raw.database.span(),
                "cluster.database must be a postgres:// (or postgresql://) URL",
            ),
            Some(rest) => {
                let authority = rest.split(['/', '?']).next().unwrap_or("");
                let host = authority.rsplit('@').next().unwrap_or("");
                if host.is_empty() {
                    self.problem(raw.database.span(), "cluster.database names no host");
                }
            }
        }
        let path = |v: &S<String>| v.as_ref().map(|p| PathBuf::from(p.get_ref()));
        let name = match &raw.name {
            Some(n) => {
                let valid = !n.get_ref().is_empty()
                    && n.get_ref().len() <= 64
                    && n.get_ref()
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
                if !valid {
                    self.problem(
                        n.span(),
                        "cluster.name must be 1 to 64 letters, digits, '.', '_' or '-'",
                    );
                }
                n.get_ref().clone()
            }
            None => host_name(),
        };
        Cluster {
            database: Secret(url.clone()),
            database_password_file: path(&raw.database_password_file),
            database_ca: path(&raw.database_ca),
            name,
        }
    }

    fn distinct_listeners(&mut self, raw: &RawListeners, l: &Listeners) {
        let mut seen: Vec<SocketAddr> = Vec::new();
        for (raw, addr) in [
            (&raw.https, l.https),
            (&raw.http, l.http),
            (&raw.admin, l.admin),
            (&raw.console, l.console),
        ] {
            if let (Some(raw), Some(addr)) = (raw, addr) {
                if seen.contains(&addr) {
                    self.problem(raw.span(), format!("{addr} is used by two listeners"));
                }
                seen.push(addr);
            }
        }
    }

    fn certificates(&mut self, tls: S<RawTls>, acme: S<RawAcme>) -> CertificateSource {
        match (tls, acme) {
            (Some(_), Some(acme)) => {
                self.problem(
                    acme.span(),
                    "use either [tls] (certificate files) or [acme], not both",
                );
                CertificateSource::SelfSigned
            }
            (Some(tls), None) => {
                let tls = tls.into_inner();
                for (v, key) in [(&tls.cert, "tls.cert"), (&tls.key, "tls.key")] {
                    if v.get_ref().is_empty() {
                        self.problem(v.span(), format!("{key} must name a PEM file"));
                    }
                }
                CertificateSource::Files {
                    cert: PathBuf::from(tls.cert.into_inner()),
                    key: PathBuf::from(tls.key.into_inner()),
                }
            }
            (None, Some(acme)) => CertificateSource::Acme(self.acme(acme.into_inner())),
            (None, None) => CertificateSource::SelfSigned,
        }
    }

    fn acme(&mut self, a: RawAcme) -> Acme {
        if a.domains.get_ref().is_empty() {
            self.problem(
                a.domains.span(),
                "acme.domains must name at least one domain",
            );
        }
        let mut domains = Vec::new();
        for d in a.domains.into_inner() {
            let name = d.get_ref().trim().to_ascii_lowercase();
            let valid = !name.is_empty()
                && name.len() <= 253
                && name.trim_start_matches("*.").split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
            if !valid {
                self.problem(
                    d.span(),
                    format!("acme.domains: {:?} is not a domain name", d.get_ref()),
                );
            } else if domains.contains(&name) {
                self.problem(d.span(), format!("acme.domains: {name} is listed twice"));
            } else {
                domains.push(name);
            }
        }
        let directory = a.directory.get_ref().clone();
        if !directory.starts_with("https://") {
            self.problem(a.directory.span(), "acme.directory must be an https:// URL");
        }
        let challenge = match a
            .challenge
            .as_ref()
            .map(|c| (c.get_ref().as_str(), c.span()))
        {
            None | Some(("tls-alpn-01", _)) => AcmeChallenge::TlsAlpn01,
            Some(("http-01", _)) => AcmeChallenge::Http01,
            Some((other, span)) => {
                self.problem(
                    span,
                    format!("acme.challenge must be \"tls-alpn-01\" or \"http-01\", not {other:?}"),
                );
                AcmeChallenge::TlsAlpn01
            }
        };
        let retry_backoff = self.duration(
            &a.retry_backoff,
            "acme.retry_backoff",
            Duration::from_secs(60),
            true,
        );
        Acme {
            domains,
            directory,
            contact: a.contact.into_iter().map(|c| c.into_inner()).collect(),
            challenge,
            state_dir: PathBuf::from(a.state_dir.into_inner()),
            directory_ca: a.directory_ca.map(|p| PathBuf::from(p.into_inner())),
            retry_backoff,
        }
    }

    /// Every node address and gRPC address players may reach: none is a console ([`Seal`]).
    fn sealed(&mut self, raw: &[RawNode], nodes: &[Node], discover: &[Discover]) {
        let seal = Seal::of(nodes, discover);
        for n in raw {
            let Some(node) = nodes.iter().find(|node| node.name == *n.name.get_ref()) else {
                continue;
            };
            for (raw, addr, key) in [
                (Some(&n.address), Some(node.address), "address"),
                (n.grpc.as_ref(), node.grpc, "grpc"),
            ] {
                if let (Some(raw), Some(addr)) = (raw, addr) {
                    if let Some(why) = seal.refuses(addr) {
                        self.problem(
                            raw.span(),
                            format!("nodes.{key} {addr} is {why}; a console is reached through nodes.console and listeners.console"),
                        );
                    }
                }
            }
        }
    }

    fn nodes(&mut self, raw: &[RawNode]) -> Vec<Node> {
        let mut names = HashSet::new();
        let mut addresses = HashSet::new();
        let mut nodes = Vec::with_capacity(raw.len());
        for n in raw {
            let name = n.name.get_ref().clone();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                self.problem(
                    n.name.span(),
                    format!("node name {name:?} must be letters, digits, '-', '_' or '.'"),
                );
            } else if !names.insert(name.clone()) {
                self.problem(n.name.span(), format!("node name {name:?} is used twice"));
            }
            let address = self.address(&n.address, "nodes.address");
            let grpc = n.grpc.as_ref().and_then(|g| self.address(g, "nodes.grpc"));
            let console = n
                .console
                .as_ref()
                .and_then(|c| self.address(c, "nodes.console"));
            if let Some(addr) = address {
                if !addresses.insert(addr) {
                    self.problem(
                        n.address.span(),
                        format!("nodes.address {addr} belongs to two nodes"),
                    );
                }
            }
            let weight = self.number(&n.weight, "nodes.weight", 1, 1, 1000);
            if let Some(address) = address {
                nodes.push(Node {
                    name,
                    address,
                    grpc,
                    console,
                    weight,
                    drain: n.drain.unwrap_or(false),
                });
            }
        }
        nodes
    }
}

/// `str::floor_char_boundary` is unstable; error positions always fall on boundaries in
/// practice, but a span is never trusted to.
trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, at: usize) -> usize;
}

impl FloorCharBoundary for str {
    fn floor_char_boundary_compat(&self, mut at: usize) -> usize {
        while at > 0 && !self.is_char_boundary(at) {
            at -= 1;
        }
        at
    }
}

/// This machine's host name (Linux), the default `cluster.name`; `edge` when it cannot be read.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "edge".to_string())
}

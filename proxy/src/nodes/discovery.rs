//! Nodes found in DNS: the lookups, and the registry of what each `[[discover]]` entry found
//! ([`Discovered`]), merged with `[[nodes]]` into every snapshot. The loops that look again
//! and sweep are in `tasks/discovery.rs`.
//!
//! ```text
//!   start: tasks::discovery::first_round ── every entry once, bounded ──► then the first health checks
//!
//!   tasks::discovery::Discovery ── one watch per entry ── lookup (hickory: A/AAAA or SRV) ──┐
//!        │ every second: sweep                                                       ▼
//!        ▼                                                  Discovered::apply (entry, answer)
//!   departed nodes whose work is done (or past drain_timeout) removed        │ the set changed
//!                                                                            ▼
//!                              Shared::rebuild_pool ──► a new snapshot; health checks start
//! ```
//!
//! What an operator can count on:
//! - A node is named `<entry>-<address>:<port>`, so its metrics and drains stay with it while
//!   other nodes come and go, and two edges reading the same records name (and route) alike:
//!   the sticky ring is keyed by address.
//! - A new node is checked before it gets work, as a new `[[nodes]]` entry is
//!   ([`crate::nodes::pool`]).
//! - A node gone from the records is drained, not cut: no new work, its WebSockets stay until
//!   they close or `routing.drain_timeout` passes; then it leaves the pool, `/nodes` and the
//!   metrics. Back in the records before that, it is simply listed again.
//! - A lookup that fails or times out keeps the last good set. An answer with no records
//!   empties the set only when the next lookup says so too.
//! - An address on a console or metrics port, or a console the config declares (and its
//!   console gRPC), is never a node ([`Seal`]).
//! - Lookups follow the entry's `interval`, sooner when the records' TTL is shorter (never more
//!   often than once a second); answers are not cached between lookups.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use nakama_edge_config::{Config, Discover, DnsSource, Node as NodeConfig, Seal};

use crate::nodes::pool::{Member, Origin, Pool};

/// How long one DNS query may take before it is asked again (twice), per server.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// The most a whole lookup (an SRV record and its targets) may take.
const LOOKUP_DEADLINE: Duration = Duration::from_secs(5);
/// Never look up more often than this, whatever the TTL.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// What one lookup of an entry found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Records {
    /// These node addresses (sorted, without duplicates), valid for this long.
    Found {
        /// The nodes' HTTP addresses.
        addresses: Vec<SocketAddr>,
        /// The records' shortest TTL.
        valid_for: Duration,
        /// Records left out, and why (an SRV target on a console port, say).
        refused: Vec<String>,
    },
    /// The name has no such records (NXDOMAIN, or no data).
    Empty,
}

/// Why a lookup gave no answer; the last good set keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The resolver could not be set up (no usable `/etc/resolv.conf`, say).
    #[error("no resolver: {0}")]
    Resolver(NetError),
    /// The DNS server failed, refused, or answered something unusable.
    #[error("{0}")]
    Dns(NetError),
    /// No answer within the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl LookupError {
    /// The `result` label of `nakama_edge_discovery_lookups_total`.
    pub fn label(&self) -> &'static str {
        match self {
            LookupError::Timeout(_) => "timeout",
            LookupError::Resolver(_) | LookupError::Dns(_) => "failure",
        }
    }
}

/// A resolver for `entry`: its `resolvers`, or the system's; no cache, so that every lookup
/// asks the server.
pub fn resolver(entry: &Discover) -> Result<TokioResolver, LookupError> {
    let mut builder = if entry.resolvers.is_empty() {
        TokioResolver::builder_tokio().map_err(LookupError::Resolver)?
    } else {
        let servers = entry
            .resolvers
            .iter()
            .map(|server| {
                let mut udp = ConnectionConfig::udp();
                udp.port = server.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = server.port();
                NameServerConfig::new(server.ip(), true, vec![udp, tcp])
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, Vec::new(), servers),
            TokioRuntimeProvider::default(),
        )
    };
    let options = builder.options_mut();
    options.cache_size = 0;
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    options.timeout = QUERY_TIMEOUT;
    options.attempts = 2;
    builder.build().map_err(LookupError::Resolver)
}

/// Look `entry` up once; what `seal` refuses is left out.
pub async fn lookup(
    resolver: &TokioResolver,
    entry: &Discover,
    seal: &Seal,
) -> Result<Records, LookupError> {
    tokio::time::timeout(LOOKUP_DEADLINE, lookup_inner(resolver, entry, seal))
        .await
        .map_err(|_| LookupError::Timeout(LOOKUP_DEADLINE))?
}

async fn lookup_inner(
    resolver: &TokioResolver,
    entry: &Discover,
    seal: &Seal,
) -> Result<Records, LookupError> {
    let now = Instant::now();
    let mut addresses = BTreeSet::new();
    let mut refused = Vec::new();
    let valid_until = match &entry.source {
        DnsSource::Addresses { host, port } => {
            let ips = match resolver.lookup_ip(host.as_str()).await {
                Ok(ips) => ips,
                Err(e) if e.is_no_records_found() => return Ok(Records::Empty),
                Err(e) => return Err(LookupError::Dns(e)),
            };
            addresses.extend(ips.iter().map(|ip| SocketAddr::new(ip, *port)));
            ips.valid_until()
        }
        DnsSource::Srv { name } => {
            let srv = match resolver.srv_lookup(name.as_str()).await {
                Ok(srv) => srv,
                Err(e) if e.is_no_records_found() => return Ok(Records::Empty),
                Err(e) => return Err(LookupError::Dns(e)),
            };
            let mut valid_until = srv.valid_until();
            for record in srv.answers() {
                let RData::SRV(target) = &record.data else {
                    continue;
                };
                // A port refused wherever it is (Nakama's console ports): said by name.
                let anywhere = SocketAddr::from(([0, 0, 0, 0], target.port));
                if let Some(why) = seal.refuses(anywhere) {
                    refused.push(format!("{}:{} is {why}", target.target, target.port));
                    continue;
                }
                // The server's additional records usually carry the targets' addresses.
                let glued: Vec<_> = srv
                    .additionals()
                    .iter()
                    .filter(|r| r.name == target.target)
                    .filter_map(|r| match &r.data {
                        RData::A(a) => Some(std::net::IpAddr::V4(a.0)),
                        RData::AAAA(a) => Some(std::net::IpAddr::V6(a.0)),
                        _ => None,
                    })
                    .collect();
                if !glued.is_empty() {
                    addresses.extend(glued.into_iter().map(|ip| SocketAddr::new(ip, target.port)));
                    continue;
                }
                match resolver.lookup_ip(target.target.clone()).await {
                    Ok(ips) => {
                        valid_until = valid_until.min(ips.valid_until());
                        addresses.extend(ips.iter().map(|ip| SocketAddr::new(ip, target.port)));
                    }
                    // A target without an address is no node; the others still are.
                    Err(e) if e.is_no_records_found() => {
                        refused.push(format!("{} has no address", target.target));
                    }
                    Err(e) => return Err(LookupError::Dns(e)),
                }
            }
            valid_until
        }
    };
    // A declared console's address (or its console gRPC's) is never a node, nor is a node
    // whose gRPC would be one.
    addresses.retain(|&address| {
        let node = node_config(entry, address);
        let why = seal
            .refuses(address)
            .or_else(|| node.grpc.and_then(|grpc| seal.refuses(grpc)));
        if let Some(why) = &why {
            refused.push(format!("{address} is {why}"));
        }
        why.is_none()
    });
    if addresses.is_empty() && refused.is_empty() {
        return Ok(Records::Empty);
    }
    Ok(Records::Found {
        addresses: addresses.into_iter().collect(),
        valid_for: valid_until.saturating_duration_since(now),
        refused,
    })
}

/// When to look again after an answer valid for `valid_for`.
pub(crate) fn next_lookup(entry: &Discover, valid_for: Duration) -> Duration {
    valid_for.clamp(MIN_INTERVAL, entry.interval.max(MIN_INTERVAL))
}

/// One discovered node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Found {
    config: NodeConfig,
    departed: bool,
}

/// The nodes every `[[discover]]` entry has found, by entry and node name (so in the same
/// order on every edge).
#[derive(Debug, Default)]
pub struct Discovered {
    entries: Mutex<BTreeMap<String, BTreeMap<String, Found>>>,
}

/// How a set of nodes changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// Nodes listed now that were not before (new, or back before they were removed).
    pub joined: Vec<String>,
    /// Nodes gone from the records: draining.
    pub departed: Vec<String>,
    /// Nodes whose settings changed (the entry's weight or ports).
    pub updated: Vec<String>,
}

impl Change {
    /// Whether anything changed.
    pub fn is_empty(&self) -> bool {
        self.joined.is_empty() && self.departed.is_empty() && self.updated.is_empty()
    }
}

/// The node `entry` makes of `address`.
fn node_config(entry: &Discover, address: SocketAddr) -> NodeConfig {
    NodeConfig {
        name: format!("{}-{address}", entry.name),
        address,
        grpc: entry.grpc_port.map(|p| SocketAddr::new(address.ip(), p)),
        console: entry.console_port.map(|p| SocketAddr::new(address.ip(), p)),
        weight: entry.weight,
        drain: false,
    }
}

impl Discovered {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, BTreeMap<String, Found>>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Make `addresses` the nodes of `entry`: nodes not among them depart (drain), the others
    /// are listed.
    pub fn apply(&self, entry: &Discover, addresses: &[SocketAddr]) -> Change {
        let mut entries = self.lock();
        let nodes = entries.entry(entry.name.clone()).or_default();
        let mut change = Change::default();
        let listed: BTreeMap<String, NodeConfig> = addresses
            .iter()
            .map(|&a| node_config(entry, a))
            .map(|c| (c.name.clone(), c))
            .collect();
        for (name, found) in nodes.iter_mut() {
            if !found.departed && !listed.contains_key(name) {
                found.departed = true;
                change.departed.push(name.clone());
            }
        }
        for (name, config) in listed {
            match nodes.get_mut(&name) {
                Some(found) => {
                    if found.departed {
                        change.joined.push(name.clone());
                    } else if found.config != config {
                        change.updated.push(name.clone());
                    }
                    found.departed = false;
                    found.config = config;
                }
                None => {
                    change.joined.push(name.clone());
                    nodes.insert(
                        name,
                        Found {
                            config,
                            departed: false,
                        },
                    );
                }
            }
        }
        change
    }

    /// Remove the departed nodes whose work through this edge is done, or whose
    /// `drain_timeout` has passed (their WebSockets are being closed). Returns their names.
    pub fn sweep(&self, pool: &Pool, drain_timeout: Duration) -> Vec<String> {
        let mut removed = Vec::new();
        for nodes in self.lock().values_mut() {
            nodes.retain(|name, found| {
                let done = found.departed
                    && pool.by_name(name).is_none_or(|n| {
                        n.runtime.is_idle() || n.runtime.drain_expired(drain_timeout)
                    });
                if done {
                    removed.push(name.clone());
                }
                !done
            });
        }
        removed
    }

    /// Forget the nodes of entries `config` no longer has, as a removed `[[nodes]]` entry is
    /// forgotten. Returns whether any were.
    pub fn retain_entries(&self, config: &Config) -> bool {
        let mut entries = self.lock();
        let before = entries.len();
        entries.retain(|name, _| config.discover.iter().any(|d| d.name == *name));
        entries.len() != before
    }

    /// The pool's members: `config`'s `[[nodes]]`, then the discovered nodes of its entries
    /// in config order. An address already taken (by a `[[nodes]]` entry or an earlier
    /// entry) is not taken again, nor one `config` seals (a console declared since the
    /// lookup that found it).
    pub fn members(&self, config: &Config) -> Vec<Member> {
        let mut members = Member::configured(config);
        let seal = config.seal();
        let entries = self.lock();
        let mut taken: BTreeSet<SocketAddr> = members.iter().map(|m| m.config.address).collect();
        for discover in &config.discover {
            let Some(nodes) = entries.get(&discover.name) else {
                continue;
            };
            let entry: Arc<str> = Arc::from(discover.name.as_str());
            for found in nodes.values() {
                let sealed = [Some(found.config.address), found.config.grpc]
                    .into_iter()
                    .flatten()
                    .any(|a| seal.refuses(a).is_some());
                if sealed || !taken.insert(found.config.address) {
                    continue;
                }
                members.push(Member {
                    config: found.config.clone(),
                    origin: if found.departed {
                        Origin::Departed(entry.clone())
                    } else {
                        Origin::Discovered(entry.clone())
                    },
                });
            }
        }
        members
    }
}

/// What `nakama-edge check --resolve` prints for `config`: each entry's answer now, one line
/// per node or problem. Returns the lines and whether every lookup succeeded.
pub async fn describe(config: &Config) -> (Vec<String>, bool) {
    let mut lines = Vec::new();
    let mut all_ok = true;
    let seal = config.seal();
    for entry in &config.discover {
        let answer = match resolver(entry) {
            Ok(r) => lookup(&r, entry, &seal).await,
            Err(e) => Err(e),
        };
        let servers = if entry.resolvers.is_empty() {
            "the system's resolvers".to_string()
        } else {
            entry
                .resolvers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let head = format!(
            "[[discover]] {:?}: {} via {servers}",
            entry.name,
            entry.source.name()
        );
        match answer {
            Ok(Records::Found {
                addresses,
                valid_for,
                refused,
            }) => {
                lines.push(format!(
                    "{head}: {} node(s), next lookup in {:?}",
                    addresses.len(),
                    next_lookup(entry, valid_for)
                ));
                for a in addresses {
                    let node = node_config(entry, a);
                    let grpc = node
                        .grpc
                        .map_or_else(String::new, |g| format!(", grpc {g}"));
                    lines.push(format!("  {} ({}{grpc})", node.name, node.address));
                }
                for r in refused {
                    lines.push(format!("  left out: {r}"));
                }
            }
            Ok(Records::Empty) => lines.push(format!("{head}: no records")),
            Err(e) => {
                all_ok = false;
                lines.push(format!("{head}: lookup failed: {e}"));
            }
        }
    }
    (lines, all_ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nodes::drains::Drains;
    use crate::nodes::pool::{NodeState, Registry};

    fn config() -> Config {
        Config::parse(
            "[[nodes]]\nname = \"static\"\naddress = \"127.0.0.1:7350\"\n\
             [[discover]]\nname = \"k8s\"\ndns = \"nakama.test\"\nport = 7350\ngrpc_port = 7349\n",
            "t",
        )
        .unwrap()
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn nodes_are_named_by_entry_and_address_and_depart_rather_than_vanish() {
        let config = config();
        let entry = &config.discover[0];
        let d = Discovered::default();
        let change = d.apply(entry, &addrs(&["127.0.0.12:7350", "127.0.0.11:7350"]));
        assert_eq!(
            change.joined,
            vec!["k8s-127.0.0.11:7350", "k8s-127.0.0.12:7350"]
        );
        let members = d.members(&config);
        let names: Vec<&str> = members.iter().map(|m| m.config.name.as_str()).collect();
        assert_eq!(
            names,
            ["static", "k8s-127.0.0.11:7350", "k8s-127.0.0.12:7350"]
        );
        assert_eq!(
            members[1].config.grpc,
            Some("127.0.0.11:7349".parse().unwrap())
        );
        assert_eq!(members[1].origin, Origin::Discovered("k8s".into()));

        // The same answer again changes nothing.
        assert!(d
            .apply(entry, &addrs(&["127.0.0.11:7350", "127.0.0.12:7350"]))
            .is_empty());

        // .12 leaves the records: it departs, and stays a member until it is swept.
        let change = d.apply(entry, &addrs(&["127.0.0.11:7350"]));
        assert_eq!(change.departed, vec!["k8s-127.0.0.12:7350"]);
        let members = d.members(&config);
        assert_eq!(members[2].origin, Origin::Departed("k8s".into()));

        // Back before it was swept: listed again.
        let change = d.apply(entry, &addrs(&["127.0.0.11:7350", "127.0.0.12:7350"]));
        assert_eq!(change.joined, vec!["k8s-127.0.0.12:7350"]);
    }

    #[test]
    fn a_departed_node_leaves_once_idle_and_is_draining_until_then() {
        let config = config();
        let entry = &config.discover[0];
        let d = Discovered::default();
        let registry = Registry::default();
        let drains = Drains::in_memory();
        d.apply(entry, &addrs(&["127.0.0.11:7350", "127.0.0.12:7350"]));
        let pool = Pool::build(&d.members(&config), &registry, &drains);
        for n in &pool.nodes {
            n.runtime.record_check(true, 1, 1);
        }
        let busy = pool.by_name("k8s-127.0.0.12:7350").unwrap().runtime.clone();
        let websocket = busy.open_websocket();

        d.apply(entry, &addrs(&["127.0.0.11:7350"]));
        let pool = Pool::build(&d.members(&config), &registry, &drains);
        let node = pool.by_name("k8s-127.0.0.12:7350").unwrap();
        assert!(
            Arc::ptr_eq(&node.runtime, &busy),
            "the same node, its counts kept"
        );
        assert_eq!(node.runtime.state(), NodeState::Draining);
        assert!(node.runtime.drained_by().dns);
        assert!(
            d.sweep(&pool, Duration::from_secs(300)).is_empty(),
            "a WebSocket is still open"
        );
        assert_eq!(
            d.sweep(&pool, Duration::ZERO),
            vec!["k8s-127.0.0.12:7350"],
            "drain_timeout passed"
        );
        assert!(
            busy.is_draining(),
            "the open WebSocket still sees its node draining, so it is closed"
        );
        drop(websocket);
        let pool = Pool::build(&d.members(&config), &registry, &drains);
        assert!(pool.by_name("k8s-127.0.0.12:7350").is_none());
        assert_eq!(pool.nodes.len(), 2);
    }

    #[test]
    fn an_address_taken_by_a_static_node_or_an_earlier_entry_is_not_taken_again() {
        let config = Config::parse(
            "[[nodes]]\nname = \"static\"\naddress = \"127.0.0.11:7350\"\n\
             [[discover]]\nname = \"a\"\ndns = \"a.test\"\nport = 7350\n\
             [[discover]]\nname = \"b\"\ndns = \"b.test\"\nport = 7350\n",
            "t",
        )
        .unwrap();
        let d = Discovered::default();
        d.apply(
            &config.discover[0],
            &addrs(&["127.0.0.11:7350", "127.0.0.12:7350"]),
        );
        d.apply(
            &config.discover[1],
            &addrs(&["127.0.0.12:7350", "127.0.0.13:7350"]),
        );
        let names: Vec<String> = d
            .members(&config)
            .into_iter()
            .map(|m| m.config.name)
            .collect();
        assert_eq!(names, ["static", "a-127.0.0.12:7350", "b-127.0.0.13:7350"]);
    }

    #[test]
    fn a_discovered_address_that_is_a_declared_console_is_never_a_node() {
        // 127.0.0.11's console is declared at :7400 (its console gRPC at :7397): a record
        // naming either is no node, whatever the entry's own ports.
        let config = Config::parse(
            "[[nodes]]\nname = \"static\"\naddress = \"127.0.0.11:7350\"\nconsole = \"127.0.0.11:7400\"\n\
             [[discover]]\nname = \"a\"\nsrv = \"_api._tcp.a.test\"\n",
            "t",
        )
        .unwrap();
        let d = Discovered::default();
        d.apply(
            &config.discover[0],
            &addrs(&["127.0.0.11:7400", "127.0.0.11:7397", "127.0.0.12:7400"]),
        );
        let names: Vec<String> = d
            .members(&config)
            .into_iter()
            .map(|m| m.config.name)
            .collect();
        assert_eq!(names, ["static", "a-127.0.0.12:7400"]);
    }

    #[test]
    fn entries_removed_from_the_config_are_forgotten() {
        let config = config();
        let d = Discovered::default();
        d.apply(&config.discover[0], &addrs(&["127.0.0.11:7350"]));
        assert!(!d.retain_entries(&config));
        let without = Config::parse(
            "[[nodes]]\nname = \"static\"\naddress = \"127.0.0.1:7350\"\n",
            "t",
        )
        .unwrap();
        assert!(d.retain_entries(&without));
        assert_eq!(d.members(&config).len(), 1);
    }

    #[test]
    fn a_joining_node_takes_only_its_share_of_players() {
        use crate::nodes::pool::Tried;
        let config = config();
        let entry = &config.discover[0];
        let d = Discovered::default();
        let registry = Registry::default();
        let drains = Drains::in_memory();
        let pool_of = |d: &Discovered| {
            let pool = Pool::build(&d.members(&config), &registry, &drains);
            for n in &pool.nodes {
                n.runtime.record_check(true, 1, 1);
            }
            pool
        };
        let owners = |pool: &Pool| -> Vec<String> {
            (0..4000)
                .map(|i| {
                    let i = pool
                        .pick_sticky(format!("user-{i}").as_bytes(), Tried::default())
                        .unwrap();
                    pool.nodes[i].config.name.clone()
                })
                .collect()
        };
        d.apply(
            entry,
            &addrs(&["127.0.0.11:7350", "127.0.0.12:7350", "127.0.0.13:7350"]),
        );
        let before = owners(&pool_of(&d));
        d.apply(
            entry,
            &addrs(&[
                "127.0.0.11:7350",
                "127.0.0.12:7350",
                "127.0.0.13:7350",
                "127.0.0.14:7350",
            ]),
        );
        let after = owners(&pool_of(&d));
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if b != a {
                assert_eq!(a, "k8s-127.0.0.14:7350", "a player moved between old nodes");
                moved += 1;
            }
        }
        // Five nodes now (the static one too): the new one owns about a fifth.
        let share = moved as f64 / before.len() as f64;
        assert!((0.1..0.3).contains(&share), "moved {share}");
    }

    #[test]
    fn the_next_lookup_follows_a_shorter_ttl_but_never_hammers() {
        let entry = &config().discover[0];
        assert_eq!(
            next_lookup(entry, Duration::from_secs(3600)),
            Duration::from_secs(5)
        );
        assert_eq!(
            next_lookup(entry, Duration::from_secs(2)),
            Duration::from_secs(2)
        );
        assert_eq!(next_lookup(entry, Duration::ZERO), MIN_INTERVAL);
    }
}

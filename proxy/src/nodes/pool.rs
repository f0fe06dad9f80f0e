//! The node pool: which Nakama nodes exist, what state each is in, and which one a request
//! goes to.
//!
//! ```text
//!   Config.nodes ─┐
//!   discovery ────┴► members ──► Pool (one per snapshot) ──► pick_round_robin / pick_sticky / pick_grpc
//!                     │ nodes[i].runtime
//!                     ▼
//!   Registry ──► NodeRuntime (per node name; survives reloads): health, drain, in-flight, WebSockets
//!                     ▲
//!   health_check ─────┘ (active checks)      proxy ── mark_refused (passive check)
//! ```
//!
//! A node is *routable* when it is healthy and not draining. A new node, or one whose address
//! changed, starts [`Health::Unknown`] and gets no traffic until it passes a check; its first
//! check decides at once (`healthy_threshold` and `unhealthy_threshold` are for nodes that
//! change state later, as in Envoy and HAProxy). A process checks every node once before it
//! serves (`health_check::first_round`).

use std::collections::HashMap;

use crate::nodes::drains::Drains;
use std::net::SocketAddr;
use std::sync::atomic::{
    AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nakama_edge_config::{Config, Node as NodeConfig};
use pingora_ketama::{Bucket, Continuum, DEFAULT_POINT_MULTIPLE};
use serde::Serialize;

/// What the health checks (active and passive) say about a node. Shown as `health` in
/// `GET /nodes`, so that an operator can watch a drained node come back before undraining it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Health {
    /// Not checked yet: no traffic until a check passes.
    Unknown = 0,
    /// Passed `healthy_threshold` checks in a row.
    Healthy = 1,
    /// Failed `unhealthy_threshold` checks in a row, or refused a connection.
    Unhealthy = 2,
}

/// The state of a node as an operator sees it (`GET /nodes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Routable.
    Healthy,
    /// Out of rotation until it passes checks again.
    Unhealthy,
    /// Drained by config, the admin API, or gone from DNS: no new work.
    Draining,
    /// Not checked yet.
    Unknown,
}

/// The live state of one node, kept across config reloads for as long as the node keeps its
/// name and address.
#[derive(Debug)]
pub struct NodeRuntime {
    /// The node's name.
    pub name: String,
    /// Its HTTP address; a node whose address changes gets a new runtime.
    pub address: SocketAddr,
    health: AtomicU8,
    ok_streak: AtomicU32,
    fail_streak: AtomicU32,
    config_drain: AtomicBool,
    runtime_drain: AtomicBool,
    departed: AtomicBool,
    /// Milliseconds since [`epoch`] when draining began, 0 when not draining.
    draining_since: AtomicU64,
    http_in_flight: AtomicI64,
    websockets: AtomicI64,
}

/// The process's monotonic time origin, for timestamps kept in atomics.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds on the process's monotonic clock (never 0).
pub(crate) fn now_millis() -> u64 {
    // +1 so that 0 can mean "never".
    epoch().elapsed().as_millis() as u64 + 1
}

impl NodeRuntime {
    fn new(member: &Member, runtime_drain: bool) -> Self {
        let config = &member.config;
        let rt = NodeRuntime {
            name: config.name.clone(),
            address: config.address,
            health: AtomicU8::new(Health::Unknown as u8),
            ok_streak: AtomicU32::new(0),
            fail_streak: AtomicU32::new(0),
            config_drain: AtomicBool::new(false),
            runtime_drain: AtomicBool::new(runtime_drain),
            departed: AtomicBool::new(false),
            draining_since: AtomicU64::new(0),
            http_in_flight: AtomicI64::new(0),
            websockets: AtomicI64::new(0),
        };
        rt.set_config_drain(config.drain);
        rt.set_departed(member.origin.is_departed());
        rt
    }

    /// Current health.
    pub fn health(&self) -> Health {
        match self.health.load(Ordering::Relaxed) {
            1 => Health::Healthy,
            2 => Health::Unhealthy,
            _ => Health::Unknown,
        }
    }

    /// Whether the node is drained by config, the admin API, or its absence from DNS.
    pub fn is_draining(&self) -> bool {
        self.config_drain.load(Ordering::Relaxed)
            || self.runtime_drain.load(Ordering::Relaxed)
            || self.departed.load(Ordering::Relaxed)
    }

    /// Who drains the node: any one is enough.
    pub fn drained_by(&self) -> DrainedBy {
        DrainedBy {
            config: self.config_drain.load(Ordering::Relaxed),
            runtime: self.runtime_drain.load(Ordering::Relaxed),
            dns: self.departed.load(Ordering::Relaxed),
        }
    }

    /// Whether no request or WebSocket to the node is left through this edge.
    pub fn is_idle(&self) -> bool {
        self.http_in_flight() <= 0 && self.websockets() <= 0
    }

    /// Healthy and not draining: may get new requests and WebSockets.
    pub fn is_routable(&self) -> bool {
        !self.is_draining() && self.health() == Health::Healthy
    }

    /// The state shown to operators.
    pub fn state(&self) -> NodeState {
        if self.is_draining() {
            NodeState::Draining
        } else {
            match self.health() {
                Health::Healthy => NodeState::Healthy,
                Health::Unhealthy => NodeState::Unhealthy,
                Health::Unknown => NodeState::Unknown,
            }
        }
    }

    /// Proxied HTTP requests to this node now in progress.
    pub fn http_in_flight(&self) -> i64 {
        self.http_in_flight.load(Ordering::Relaxed)
    }

    /// WebSockets to this node now open.
    pub fn websockets(&self) -> i64 {
        self.websockets.load(Ordering::Relaxed)
    }

    /// Whether WebSockets still open on this node have outstayed `drain_timeout`.
    pub fn drain_expired(&self, drain_timeout: Duration) -> bool {
        let since = self.draining_since.load(Ordering::Relaxed);
        since != 0
            && self.is_draining()
            && now_millis().saturating_sub(since) >= drain_timeout.as_millis() as u64
    }

    /// Record the outcome of one active health check. A node's first check decides its health
    /// at once; after that, `healthy_threshold` or `unhealthy_threshold` checks in a row
    /// change it.
    pub fn record_check(
        &self,
        ok: bool,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<Health> {
        let (streak, other, threshold, target) = if ok {
            (
                &self.ok_streak,
                &self.fail_streak,
                healthy_threshold,
                Health::Healthy,
            )
        } else {
            (
                &self.fail_streak,
                &self.ok_streak,
                unhealthy_threshold,
                Health::Unhealthy,
            )
        };
        other.store(0, Ordering::Relaxed);
        let threshold = if self.health() == Health::Unknown {
            1
        } else {
            threshold
        };
        let n = streak.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        (n >= threshold && self.health() != target).then(|| {
            self.health.store(target as u8, Ordering::Relaxed);
            target
        })
    }

    /// Passive check: the node refused a connection, so it is out now, not after
    /// `unhealthy_threshold` more checks. Returns whether this changed its health.
    pub fn mark_refused(&self) -> bool {
        self.ok_streak.store(0, Ordering::Relaxed);
        self.health.swap(Health::Unhealthy as u8, Ordering::Relaxed) != Health::Unhealthy as u8
    }

    fn set_config_drain(&self, drain: bool) {
        self.config_drain.store(drain, Ordering::Relaxed);
        self.update_draining_since();
    }

    fn set_departed(&self, departed: bool) {
        self.departed.store(departed, Ordering::Relaxed);
        self.update_draining_since();
    }

    /// Drain (or undrain) at runtime (the admin API, see [`crate::nodes::drains`]).
    pub fn set_runtime_drain(&self, drain: bool) {
        self.runtime_drain.store(drain, Ordering::Relaxed);
        self.update_draining_since();
    }

    fn update_draining_since(&self) {
        if self.is_draining() {
            let _ = self.draining_since.compare_exchange(
                0,
                now_millis(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        } else {
            self.draining_since.store(0, Ordering::Relaxed);
        }
    }

    /// Count a proxied HTTP request until the guard drops.
    pub fn start_request(self: &Arc<Self>) -> Counted {
        Counted::new(self.clone(), Which::Http)
    }

    /// Count an open WebSocket until the guard drops.
    pub fn open_websocket(self: &Arc<Self>) -> Counted {
        Counted::new(self.clone(), Which::WebSocket)
    }
}

#[derive(Debug, Clone, Copy)]
enum Which {
    Http,
    WebSocket,
}

/// Holds one unit of a node's in-flight or WebSocket count; dropping it gives it back.
#[derive(Debug)]
pub struct Counted {
    node: Arc<NodeRuntime>,
    which: Which,
}

impl Counted {
    fn new(node: Arc<NodeRuntime>, which: Which) -> Self {
        node.counter(which).fetch_add(1, Ordering::Relaxed);
        Counted { node, which }
    }
}

impl NodeRuntime {
    fn counter(&self, which: Which) -> &AtomicI64 {
        match which {
            Which::Http => &self.http_in_flight,
            Which::WebSocket => &self.websockets,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.node
            .counter(self.which)
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Who drains a node, shown as `drained_by` in `GET /nodes`: any of `"config"`, `"runtime"`
/// and `"dns"`, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DrainedBy {
    /// `drain = true` in the config file.
    pub config: bool,
    /// The admin API or the CLI.
    pub runtime: bool,
    /// A discovered node gone from its DNS records.
    pub dns: bool,
}

impl Serialize for DrainedBy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(None)?;
        if self.config {
            seq.serialize_element("config")?;
        }
        if self.runtime {
            seq.serialize_element("runtime")?;
        }
        if self.dns {
            seq.serialize_element("dns")?;
        }
        seq.end()
    }
}

/// Where a node of the pool comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A `[[nodes]]` entry.
    Config,
    /// Found by the `[[discover]]` entry of this name, and in its records.
    Discovered(Arc<str>),
    /// Found by that entry and gone from its records since: draining until its work is done
    /// or `routing.drain_timeout` passes, then removed.
    Departed(Arc<str>),
}

impl Origin {
    /// The `[[discover]]` entry that found the node, if one did.
    pub fn discovered_by(&self) -> Option<&str> {
        match self {
            Origin::Config => None,
            Origin::Discovered(entry) | Origin::Departed(entry) => Some(entry),
        }
    }

    fn is_departed(&self) -> bool {
        matches!(self, Origin::Departed(_))
    }
}

/// A node a pool is built from: its settings and where they come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Name, addresses, weight and config drain.
    pub config: NodeConfig,
    /// A `[[nodes]]` entry, or found in DNS.
    pub origin: Origin,
}

impl Member {
    /// The members of the config's `[[nodes]]`.
    pub fn configured(config: &Config) -> Vec<Member> {
        config
            .nodes
            .iter()
            .map(|n| Member {
                config: n.clone(),
                origin: Origin::Config,
            })
            .collect()
    }
}

/// Every node runtime by name, so that a reload finds the state of nodes it keeps.
#[derive(Debug, Default)]
pub struct Registry {
    by_name: Mutex<HashMap<String, Arc<NodeRuntime>>>,
}

impl Registry {
    /// The runtimes for `members`: existing ones where name and address are unchanged, new
    /// ones (drained if `drains` says so) otherwise. Runtimes of nodes no longer members are
    /// forgotten.
    pub fn runtimes_for(&self, members: &[Member], drains: &Drains) -> Vec<Arc<NodeRuntime>> {
        let mut by_name = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        let runtimes: Vec<Arc<NodeRuntime>> = members
            .iter()
            .map(|m| match by_name.get(&m.config.name) {
                Some(rt) if rt.address == m.config.address => {
                    rt.set_config_drain(m.config.drain);
                    rt.set_departed(m.origin.is_departed());
                    rt.clone()
                }
                _ => Arc::new(NodeRuntime::new(m, drains.is_drained(&m.config.name))),
            })
            .collect();
        *by_name = runtimes
            .iter()
            .map(|rt| (rt.name.clone(), rt.clone()))
            .collect();
        runtimes
    }
}

/// One node as the current snapshot sees it.
#[derive(Debug)]
pub struct Node {
    /// Its configuration.
    pub config: NodeConfig,
    /// A `[[nodes]]` entry, or found in DNS.
    pub origin: Origin,
    /// Its live state.
    pub runtime: Arc<NodeRuntime>,
}

/// Nakama closes idle keep-alive connections after 60 s; the edge lets go of them first, so
/// that it never sends a request down a connection the node is closing.
pub const UPSTREAM_IDLE: Duration = Duration::from_secs(50);

/// The nodes of one config snapshot, with the routing tables built from them.
pub struct Pool {
    /// The nodes, in config order.
    pub nodes: Vec<Node>,
    ring: Continuum,
    ring_len: usize,
    round_robin: Rotation,
    grpc_round_robin: Rotation,
}

/// A weighted round-robin: node indexes in their smooth weighted order, and where the next
/// pick starts. Each route (API, gRPC) has its own, so that one route's picks never set the
/// other's pace.
#[derive(Debug, Default)]
struct Rotation {
    order: Vec<u16>,
    next: AtomicUsize,
}

impl Rotation {
    /// The next node in the order that `can_take` accepts. Every place passed over is used up:
    /// a node out of rotation (drained, unhealthy, down) leaves its share to all the others in
    /// their weights, rather than to the node after it in the order.
    fn pick(&self, can_take: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.order.len();
        (0..len)
            .map(|_| self.order[self.next.fetch_add(1, Ordering::Relaxed) % len] as usize)
            .find(|&i| can_take(i))
    }
}

/// A set of node indexes already tried for one request.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tried(u128);

impl Tried {
    /// Whether node `i` was tried.
    pub fn contains(self, i: usize) -> bool {
        i < 128 && self.0 & (1 << i) != 0
    }
    /// Whether no node was tried yet.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// Record node `i` as tried.
    pub fn insert(&mut self, i: usize) {
        if i < 128 {
            self.0 |= 1 << i;
        }
    }
}

impl Pool {
    /// Build the pool of `members`, reusing the runtimes in `registry`.
    pub fn build(members: &[Member], registry: &Registry, drains: &Drains) -> Pool {
        let runtimes = registry.runtimes_for(members, drains);
        let nodes: Vec<Node> = members
            .iter()
            .zip(runtimes)
            .map(|(m, runtime)| Node {
                config: m.config.clone(),
                origin: m.origin.clone(),
                runtime,
            })
            .collect();
        let buckets: Vec<Bucket> = nodes
            .iter()
            .map(|n| Bucket::new(n.config.address, n.config.weight))
            .collect();
        let ring = Continuum::new(&buckets);
        let ring_len = nodes
            .iter()
            .map(|n| n.config.weight as usize)
            .sum::<usize>()
            * DEFAULT_POINT_MULTIPLE as usize;
        let round_robin = smooth_weighted_order(nodes.iter().map(|n| n.config.weight).collect());
        let having = |has: fn(&Node) -> bool| Rotation {
            order: round_robin
                .iter()
                .copied()
                .filter(|&i| has(&nodes[i as usize]))
                .collect(),
            next: AtomicUsize::new(0),
        };
        let grpc_round_robin = having(|n| n.config.grpc.is_some());
        let round_robin = Rotation {
            order: round_robin,
            next: AtomicUsize::new(0),
        };
        Pool {
            nodes,
            ring,
            ring_len,
            round_robin,
            grpc_round_robin,
        }
    }

    /// The node named `name`.
    pub fn by_name(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.config.name == name)
    }

    /// Make every node's runtime drain what `drains` says.
    pub fn apply_drains(&self, drains: &Drains) {
        for node in &self.nodes {
            node.runtime
                .set_runtime_drain(drains.is_drained(&node.config.name));
        }
    }

    /// Whether any node can take new work.
    pub fn any_routable(&self) -> bool {
        self.nodes.iter().any(|n| n.runtime.is_routable())
    }

    /// Weighted round-robin over routable nodes not in `tried`.
    pub fn pick_round_robin(&self, tried: Tried) -> Option<usize> {
        self.pick_from(&self.round_robin, tried)
    }

    /// Weighted round-robin over routable nodes that serve gRPC.
    pub fn pick_grpc(&self, tried: Tried) -> Option<usize> {
        self.pick_from(&self.grpc_round_robin, tried)
    }

    fn pick_from(&self, rotation: &Rotation, tried: Tried) -> Option<usize> {
        rotation.pick(|i| !tried.contains(i) && self.nodes[i].runtime.is_routable())
    }

    /// The console node for an operator: `wanted` (the name of a node the operator picked)
    /// when it has a console and can take work; else the node their `key` (address) hashes to
    /// among the nodes with a console, as [`Pool::pick_sticky`] does, so that one operator
    /// keeps seeing one node's console while the nodes are independent.
    pub fn pick_console(&self, key: &[u8], wanted: Option<&str>, tried: Tried) -> Option<usize> {
        let can_take = |i: usize| {
            let node = &self.nodes[i];
            !tried.contains(i) && node.config.console.is_some() && node.runtime.is_routable()
        };
        wanted
            .and_then(|name| self.nodes.iter().position(|n| n.config.name == name))
            .filter(|&i| can_take(i))
            .or_else(|| self.along_ring(key, can_take))
    }

    /// Consistent hashing: the node that owns `key` on the ring, or, when it cannot take work,
    /// the next routable node along the ring. Keys of routable nodes never move when another
    /// node leaves or returns.
    pub fn pick_sticky(&self, key: &[u8], tried: Tried) -> Option<usize> {
        self.along_ring(key, |i| {
            !tried.contains(i) && self.nodes[i].runtime.is_routable()
        })
    }

    /// The first node along the ring from `key` that `can_take`. The walk is bounded by the
    /// ring's size (160 points per unit of weight, nginx's figure), which visits every node.
    fn along_ring(&self, key: &[u8], can_take: impl Fn(usize) -> bool) -> Option<usize> {
        self.ring
            .node_iter(key)
            .take(self.ring_len)
            .filter_map(|addr| self.nodes.iter().position(|n| n.config.address == *addr))
            .find(|&i| can_take(i))
    }
}

/// Nginx's smooth weighted round-robin, unrolled at config time: weights 5,1,1 give
/// a a b a c a a rather than a a a a a b c.
fn smooth_weighted_order(weights: Vec<u32>) -> Vec<u16> {
    let total: i64 = weights.iter().map(|&w| w as i64).sum();
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            current[i] += w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        order.push(best as u16);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(nodes: &[(&str, u16, u32)]) -> Config {
        let mut text = String::new();
        for (name, port, weight) in nodes {
            text.push_str(&format!(
                "[[nodes]]\nname = \"{name}\"\naddress = \"127.0.0.1:{port}\"\ngrpc = \"127.0.0.1:{}\"\nweight = {weight}\n",
                port + 1000
            ));
        }
        Config::parse(&text, "test").unwrap()
    }

    fn build(config: &Config, registry: &Registry, drains: &Drains) -> Pool {
        Pool::build(&Member::configured(config), registry, drains)
    }

    fn all_healthy(pool: &Pool) {
        for n in &pool.nodes {
            n.runtime.record_check(true, 1, 1);
        }
    }

    #[test]
    fn smooth_weights() {
        assert_eq!(
            smooth_weighted_order(vec![5, 1, 1]),
            vec![0, 0, 1, 0, 2, 0, 0]
        );
        assert_eq!(smooth_weighted_order(vec![1, 1]), vec![0, 1]);
    }

    #[test]
    fn new_nodes_get_no_traffic_until_their_first_check_which_decides_at_once() {
        let pool = build(
            &config(&[("a", 1, 1), ("b", 2, 1)]),
            &Registry::default(),
            &Drains::in_memory(),
        );
        assert_eq!(pool.pick_round_robin(Tried::default()), None);
        assert_eq!(pool.nodes[0].runtime.state(), NodeState::Unknown);
        // healthy_threshold 2 is for nodes coming back, not for the first check.
        assert_eq!(
            pool.nodes[0].runtime.record_check(true, 2, 3),
            Some(Health::Healthy)
        );
        assert_eq!(pool.pick_round_robin(Tried::default()), Some(0));
        assert_eq!(
            pool.nodes[1].runtime.record_check(false, 2, 3),
            Some(Health::Unhealthy)
        );
        // Back from unhealthy: healthy_threshold checks in a row.
        assert_eq!(pool.nodes[1].runtime.record_check(true, 2, 3), None);
        assert_eq!(
            pool.nodes[1].runtime.record_check(true, 2, 3),
            Some(Health::Healthy)
        );
    }

    #[test]
    fn runtime_drains_seed_new_runtimes_and_combine_with_the_config() {
        let drains = Drains::in_memory();
        drains.set("a", true).unwrap();
        let mut c = config(&[("a", 1, 1), ("b", 2, 1)]);
        c.nodes[1].drain = true;
        let pool = build(&c, &Registry::default(), &drains);
        all_healthy(&pool);
        let by = |i: usize| pool.nodes[i].runtime.drained_by();
        assert_eq!(
            by(0),
            DrainedBy {
                runtime: true,
                ..Default::default()
            }
        );
        assert_eq!(
            by(1),
            DrainedBy {
                config: true,
                ..Default::default()
            }
        );
        assert_eq!(serde_json::to_string(&by(1)).unwrap(), r#"["config"]"#);
        assert!(!pool.any_routable());
        // Undrain lifts only the runtime drain.
        drains.set("a", false).unwrap();
        drains.set("b", false).unwrap();
        pool.apply_drains(&drains);
        assert_eq!(pool.nodes[0].runtime.state(), NodeState::Healthy);
        assert_eq!(pool.nodes[1].runtime.state(), NodeState::Draining);
    }

    #[test]
    fn thresholds_and_refusal() {
        let pool = build(
            &config(&[("a", 1, 1)]),
            &Registry::default(),
            &Drains::in_memory(),
        );
        let rt = &pool.nodes[0].runtime;
        rt.record_check(true, 1, 3);
        assert_eq!(rt.record_check(false, 1, 3), None);
        assert_eq!(rt.record_check(false, 1, 3), None);
        assert_eq!(
            rt.record_check(true, 1, 3),
            None,
            "a success resets the failure streak"
        );
        assert_eq!(rt.health(), Health::Healthy);
        assert!(rt.mark_refused());
        assert_eq!(rt.state(), NodeState::Unhealthy);
        assert!(!rt.mark_refused());
    }

    #[test]
    fn round_robin_skips_unroutable_and_tried() {
        let pool = build(
            &config(&[("a", 1, 1), ("b", 2, 1), ("c", 3, 1)]),
            &Registry::default(),
            &Drains::in_memory(),
        );
        all_healthy(&pool);
        pool.nodes[1].runtime.set_runtime_drain(true);
        let picks: Vec<_> = (0..6)
            .map(|_| pool.pick_round_robin(Tried::default()).unwrap())
            .collect();
        assert!(!picks.contains(&1));
        assert!(picks.contains(&0) && picks.contains(&2));
        let mut tried = Tried::default();
        tried.insert(0);
        tried.insert(2);
        assert_eq!(pool.pick_round_robin(tried), None);
    }

    fn spread(pool: &Pool, picks: usize, pick: impl Fn(&Pool) -> Option<usize>) -> Vec<usize> {
        let mut count = vec![0; pool.nodes.len()];
        for _ in 0..picks {
            count[pick(pool).unwrap()] += 1;
        }
        count
    }

    #[test]
    fn a_node_out_of_rotation_leaves_its_share_to_all_the_others_in_their_weights() {
        let pool = build(
            &config(&[("a", 1, 1), ("b", 2, 1), ("c", 3, 1)]),
            &Registry::default(),
            &Drains::in_memory(),
        );
        all_healthy(&pool);
        let rr = |p: &Pool| p.pick_round_robin(Tried::default());
        let grpc = |p: &Pool| p.pick_grpc(Tried::default());
        assert_eq!(spread(&pool, 30, rr), vec![10, 10, 10]);
        pool.nodes[0].runtime.set_runtime_drain(true);
        assert_eq!(spread(&pool, 30, rr), vec![0, 15, 15]);
        assert_eq!(spread(&pool, 30, grpc), vec![0, 15, 15]);
        pool.nodes[0].runtime.set_runtime_drain(false);
        pool.nodes[1].runtime.mark_refused();
        assert_eq!(spread(&pool, 30, rr), vec![15, 0, 15]);

        let weighted = build(
            &config(&[("a", 1, 4), ("b", 2, 2), ("c", 3, 1)]),
            &Registry::default(),
            &Drains::in_memory(),
        );
        all_healthy(&weighted);
        assert_eq!(spread(&weighted, 70, rr), vec![40, 20, 10]);
        weighted.nodes[0].runtime.mark_refused();
        assert_eq!(spread(&weighted, 30, rr), vec![0, 20, 10]);
    }

    #[test]
    fn an_operator_keeps_one_console_unless_they_pick_one() {
        let mut text = String::new();
        for (name, port) in [("a", 1), ("b", 2), ("c", 3)] {
            text.push_str(&format!(
                "[[nodes]]\nname = \"{name}\"\naddress = \"127.0.0.1:{port}\"\nconsole = \"127.0.0.1:{}\"\n",
                port + 7400
            ));
        }
        text.push_str("[[nodes]]\nname = \"no-console\"\naddress = \"127.0.0.1:9\"\n");
        let pool = build(
            &Config::parse(&text, "t").unwrap(),
            &Registry::default(),
            &Drains::in_memory(),
        );
        all_healthy(&pool);
        let none = Tried::default();
        let mut seen = std::collections::BTreeSet::new();
        for operator in 0u8..40 {
            let key = [10, 0, 0, operator];
            let first = pool.pick_console(&key, None, none).unwrap();
            assert!((0..5).all(|_| pool.pick_console(&key, None, none) == Some(first)));
            assert_ne!(first, 3, "a node without a console");
            seen.insert(first);
        }
        assert_eq!(seen.len(), 3, "operators spread over the consoles");
        // A pick wins while its node can take work; otherwise the operator's own node.
        let key = [10, 0, 0, 1];
        let own = pool.pick_console(&key, None, none).unwrap();
        let other = (own + 1) % 3;
        let name = pool.nodes[other].config.name.clone();
        assert_eq!(pool.pick_console(&key, Some(&name), none), Some(other));
        pool.nodes[other].runtime.set_runtime_drain(true);
        assert_eq!(pool.pick_console(&key, Some(&name), none), Some(own));
        assert_eq!(pool.pick_console(&key, Some("no-console"), none), Some(own));
        assert_eq!(pool.pick_console(&key, Some("unknown"), none), Some(own));
    }

    #[test]
    fn one_routes_picks_do_not_set_anothers_pace() {
        let pool = build(
            &config(&[("a", 1, 1), ("b", 2, 1)]),
            &Registry::default(),
            &Drains::in_memory(),
        );
        all_healthy(&pool);
        // API calls and gRPC calls in turn: each still alternates over both nodes.
        let mut grpc = vec![0; 2];
        for _ in 0..10 {
            pool.pick_round_robin(Tried::default()).unwrap();
            grpc[pool.pick_grpc(Tried::default()).unwrap()] += 1;
        }
        assert_eq!(grpc, vec![5, 5]);
    }

    #[test]
    fn runtime_survives_reload_unless_address_changes() {
        let registry = Registry::default();
        let first = build(
            &config(&[("a", 1, 1), ("b", 2, 1)]),
            &registry,
            &Drains::in_memory(),
        );
        first.nodes[0].runtime.set_runtime_drain(true);
        let second = build(
            &config(&[("a", 1, 1), ("b", 5, 1)]),
            &registry,
            &Drains::in_memory(),
        );
        assert!(Arc::ptr_eq(
            &first.nodes[0].runtime,
            &second.nodes[0].runtime
        ));
        assert_eq!(second.nodes[0].runtime.state(), NodeState::Draining);
        assert!(!Arc::ptr_eq(
            &first.nodes[1].runtime,
            &second.nodes[1].runtime
        ));
    }

    #[test]
    fn only_the_keys_of_a_leaving_node_move() {
        let pool = build(
            &config(&[("a", 1, 1), ("b", 2, 1), ("c", 3, 1), ("d", 4, 1)]),
            &Registry::default(),
            &Drains::in_memory(),
        );
        all_healthy(&pool);
        let keys: Vec<String> = (0..4000).map(|i| format!("user-{i}")).collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|k| pool.pick_sticky(k.as_bytes(), Tried::default()).unwrap())
            .collect();
        pool.nodes[2].runtime.mark_refused();
        let after: Vec<usize> = keys
            .iter()
            .map(|k| pool.pick_sticky(k.as_bytes(), Tried::default()).unwrap())
            .collect();
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if b != a {
                assert_eq!(*b, 2, "a key of a node that stayed moved");
                moved += 1;
            }
        }
        let share = moved as f64 / keys.len() as f64;
        assert!((0.15..0.35).contains(&share), "moved {share}");
    }

    #[test]
    fn counters_follow_guards() {
        let pool = build(
            &config(&[("a", 1, 1)]),
            &Registry::default(),
            &Drains::in_memory(),
        );
        let rt = &pool.nodes[0].runtime;
        let g1 = rt.start_request();
        let w = rt.open_websocket();
        assert_eq!((rt.http_in_flight(), rt.websockets()), (1, 1));
        drop(g1);
        drop(w);
        assert_eq!((rt.http_in_flight(), rt.websockets()), (0, 0));
    }

    #[test]
    fn drain_expiry() {
        let pool = build(
            &config(&[("a", 1, 1)]),
            &Registry::default(),
            &Drains::in_memory(),
        );
        let rt = &pool.nodes[0].runtime;
        assert!(!rt.drain_expired(Duration::ZERO));
        rt.set_runtime_drain(true);
        assert!(rt.drain_expired(Duration::ZERO));
        assert!(!rt.drain_expired(Duration::from_secs(3600)));
        rt.set_runtime_drain(false);
        assert!(!rt.drain_expired(Duration::ZERO));
    }
}

//! Shards for open-source Nakama (`routing.mode = "shards"`): every request of a player, API
//! calls and WebSockets alike, to the node of the player's shard, because an open-source node
//! keeps matches, parties, chat and the matchmaker in its own memory.
//!
//! ```text
//!   verified token ── vrs[routing.shard_var] names a shard? ──yes──► that shard
//!        │                         │ no (or unknown)
//!        │                         └──► rendezvous hash of the user id over the shards that
//!        │                              can take work: the same on every edge
//!        └ none (logins, http_key calls) ──► round-robin over every routable node
//!
//!   a shard's new work ──► its node, if routable ──► else its standby ──► else 503, with
//!                          the reason (never another shard's node)
//! ```
//!
//! A shard's `node` (and `standby`) names a `[[nodes]]` entry, or a `[[discover]]` entry: the
//! node that entry finds (a DNS name per shard that follows its node's address, such as a
//! Kubernetes StatefulSet pod's); when it finds several, the first routable in pool order.
//! Without `[[shards]]`, every node is a shard of its own, named after it (discovered nodes
//! included), and players are spread over them by the hash.

use std::collections::HashMap;
use std::sync::Arc;

use nakama_edge_config::Config;

use crate::nodes::pool::{Origin, Pool, Tried};
use crate::ops::metrics::ShardSeries;

/// The `shard` label of requests that belong to no shard (config refuses it as a name).
pub const NONE: &str = "none";

/// The shards of one config snapshot, resolved against its pool.
pub struct Shards {
    shards: Vec<Shard>,
    by_name: HashMap<Arc<str>, usize>,
    /// Requests that go round-robin, for want of a verified token (label `none`).
    pub unsharded: ShardSeries,
}

/// One shard.
pub struct Shard {
    /// Its name: what players name in their session var, and the `shard` metric label.
    pub name: Arc<str>,
    /// Pool indexes of the node that holds it (several only for a `[[discover]]` entry that
    /// finds several).
    node: Vec<usize>,
    /// Likewise for its standby; empty without one.
    standby: Vec<usize>,
    /// The name hashed, for the rendezvous hash.
    seed: u64,
    /// Its requests and WebSockets.
    pub series: ShardSeries,
}

/// Who takes a shard's new work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taker {
    /// The shard's own node.
    Node(usize),
    /// Its standby, while the node cannot.
    Standby(usize),
}

impl Taker {
    /// The pool index of the node.
    pub fn index(self) -> usize {
        match self {
            Taker::Node(i) | Taker::Standby(i) => i,
        }
    }
}

impl Shards {
    /// The shards of `config` over `pool`'s nodes; `series` gives each shard its metrics.
    pub fn build(config: &Config, pool: &Pool, series: impl Fn(&str) -> ShardSeries) -> Shards {
        let holders = |name: &str| -> Vec<usize> {
            pool.nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| match &n.origin {
                    Origin::Config => n.config.name == name,
                    Origin::Discovered(entry) => &**entry == name,
                    Origin::Departed(_) => false,
                })
                .map(|(i, _)| i)
                .collect()
        };
        let shards: Vec<Shard> = if config.shards.is_empty() {
            pool.nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| !matches!(n.origin, Origin::Departed(_)))
                .map(|(i, n)| Shard::new(&n.config.name, vec![i], Vec::new(), &series))
                .collect()
        } else {
            config
                .shards
                .iter()
                .map(|s| {
                    let standby = s.standby.as_deref().map_or_else(Vec::new, holders);
                    Shard::new(&s.name, holders(&s.node), standby, &series)
                })
                .collect()
        };
        let by_name = shards
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        Shards {
            shards,
            by_name,
            unsharded: series(NONE),
        }
    }

    /// Every shard, in config order (pool order without `[[shards]]`).
    pub fn iter(&self) -> impl Iterator<Item = &Shard> {
        self.shards.iter()
    }

    /// Shard `i`.
    pub fn get(&self, i: usize) -> Option<&Shard> {
        self.shards.get(i)
    }

    /// The shard a player's session var names, if it names one.
    pub fn named(&self, value: &[u8]) -> Option<usize> {
        let name = std::str::from_utf8(value).ok()?;
        self.by_name.get(name).copied()
    }

    /// The shard of a player whose var names none (`user`: the user id as a key): the shard
    /// that scores highest for the user among those that can take work, passing over the
    /// nodes in `tried` (rendezvous hashing: a player moves only while their shard cannot
    /// take work, and back when it can); `None` when none can.
    pub fn hashed(&self, user: u128, pool: &Pool, tried: Tried) -> Option<usize> {
        let user = mix(user as u64 ^ mix((user >> 64) as u64));
        self.shards
            .iter()
            .enumerate()
            .filter(|(_, s)| s.taker(pool, tried).is_some())
            .max_by_key(|(_, s)| mix(s.seed ^ user))
            .map(|(i, _)| i)
    }

    /// The shards whose node is node `i` of the pool, and those it stands by for.
    pub fn of_node(&self, i: usize) -> (Option<&str>, Vec<&str>) {
        let holds = self
            .shards
            .iter()
            .find(|s| s.node.contains(&i))
            .map(|s| &*s.name);
        let stands_by = self
            .shards
            .iter()
            .filter(|s| s.standby.contains(&i))
            .map(|s| &*s.name)
            .collect();
        (holds, stands_by)
    }
}

impl Shard {
    fn new(
        name: &str,
        node: Vec<usize>,
        standby: Vec<usize>,
        series: &impl Fn(&str) -> ShardSeries,
    ) -> Shard {
        Shard {
            name: name.into(),
            node,
            standby,
            seed: fnv(name.as_bytes()),
            series: series(name),
        }
    }

    /// Who takes the shard's new work now, passing over the nodes in `tried`: its node while
    /// routable, else its standby, else nobody.
    pub fn taker(&self, pool: &Pool, tried: Tried) -> Option<Taker> {
        let can_take = |&&i: &&usize| {
            !tried.contains(i) && pool.nodes.get(i).is_some_and(|n| n.runtime.is_routable())
        };
        if let Some(&i) = self.node.iter().find(can_take) {
            return Some(Taker::Node(i));
        }
        self.standby
            .iter()
            .find(can_take)
            .map(|&i| Taker::Standby(i))
    }

    /// Why nobody takes the shard's new work, for the player's 503 and the log.
    pub fn why_unavailable(&self, pool: &Pool) -> String {
        let state =
            |nodes: &[usize], what: &str| match nodes.first().and_then(|&i| pool.nodes.get(i)) {
                None => format!("no {what} of it is found"),
                Some(n) if n.runtime.is_draining() => {
                    format!("its {what} {} is drained", n.config.name)
                }
                Some(n) => format!("its {what} {} is down", n.config.name),
            };
        let standby = if self.standby.is_empty() {
            "it has no standby".to_string()
        } else {
            state(&self.standby, "standby")
        };
        format!(
            "shard {:?} cannot take new work: {}, and {standby}",
            self.name,
            state(&self.node, "node")
        )
    }
}

/// FNV-1a over `bytes`: a shard name's seed, the same on every edge and every build.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// SplitMix64's finalizer: spreads every input bit over the output.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nodes::drains::Drains;
    use crate::nodes::pool::{Member, Registry};
    use crate::ops::metrics::Metrics;

    const KEY: &str = "[nakama]\nsession_key = \"k\"\n";

    /// A shard-mode config over nodes `names` (ports from 7350) with `shards` sections.
    fn config(names: &[&str], shards: &str) -> Config {
        let mut text = format!("[routing]\nmode = \"shards\"\n{KEY}{shards}\n");
        for (i, name) in names.iter().enumerate() {
            text.push_str(&format!(
                "[[nodes]]\nname = \"{name}\"\naddress = \"127.0.0.1:{}\"\n",
                17350 + i * 10
            ));
        }
        Config::parse(&text, "test").unwrap()
    }

    fn shards_of(config: &Config, members: &[Member]) -> (Pool, Shards) {
        let pool = Pool::build(members, &Registry::default(), &Drains::in_memory());
        for n in &pool.nodes {
            n.runtime.record_check(true, 1, 1);
        }
        let metrics = Metrics::new().unwrap();
        let shards = Shards::build(config, &pool, |name| metrics.shard_series(name));
        (pool, shards)
    }

    fn node_name(pool: &Pool, taker: Option<Taker>) -> Option<(&str, bool)> {
        taker.map(|t| {
            let standby = matches!(t, Taker::Standby(_));
            (pool.nodes[t.index()].config.name.as_str(), standby)
        })
    }

    #[test]
    fn a_shard_goes_to_its_node_then_its_standby_then_nobody() {
        let config = config(
            &["a", "b", "c"],
            "[[shards]]\nname = \"s1\"\nnode = \"a\"\nstandby = \"b\"\n\
             [[shards]]\nname = \"s2\"\nnode = \"c\"\n",
        );
        let (pool, shards) = shards_of(&config, &Member::configured(&config));
        let s1 = shards.named(b"s1").unwrap();
        let s2 = shards.named(b"s2").unwrap();
        assert_eq!(shards.named(b"s3"), None);
        let taker = |i: usize, tried| node_name(&pool, shards.get(i).unwrap().taker(&pool, tried));
        assert_eq!(taker(s1, Tried::default()), Some(("a", false)));
        assert_eq!(taker(s2, Tried::default()), Some(("c", false)));
        // A node that refused the connection: the standby, never another shard's node.
        let mut tried = Tried::default();
        tried.insert(0);
        assert_eq!(taker(s1, tried), Some(("b", true)));
        pool.nodes[2].runtime.set_runtime_drain(true);
        assert_eq!(taker(s2, Tried::default()), None);
        let why = shards.get(s2).unwrap().why_unavailable(&pool);
        assert_eq!(
            why,
            "shard \"s2\" cannot take new work: its node c is drained, and it has no standby"
        );
        pool.nodes[0].runtime.set_runtime_drain(true);
        assert_eq!(taker(s1, Tried::default()), Some(("b", true)));
        assert_eq!(shards.of_node(1), (None, vec!["s1"]));
        assert_eq!(shards.of_node(0), (Some("s1"), vec![]));
    }

    #[test]
    fn players_without_a_shard_hash_alike_on_every_edge_and_move_only_off_a_shard_that_cannot_take_work(
    ) {
        // Without [[shards]] every node is a shard; two edges list the nodes in other orders.
        let names = ["n1", "n2", "n3", "n4", "n5"];
        let forward = config(&names, "");
        let mut reversed_names = names;
        reversed_names.reverse();
        let backward = config(&reversed_names, "");
        let (pool_a, a) = shards_of(&forward, &Member::configured(&forward));
        let (pool_b, b) = shards_of(&backward, &Member::configured(&backward));
        let of = |shards: &Shards, pool: &Pool, user: u128| -> String {
            let shard = shards.hashed(user, pool, Tried::default()).unwrap();
            shards.get(shard).unwrap().name.to_string()
        };
        let users: Vec<u128> = (0..2000u128)
            .map(|u| u.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        let before: Vec<String> = users.iter().map(|&u| of(&a, &pool_a, u)).collect();
        for (&u, shard) in users.iter().zip(&before) {
            assert_eq!(&of(&b, &pool_b, u), shard, "edges disagree on user {u}");
        }
        // Spread over all five, roughly evenly.
        for name in names {
            let n = before.iter().filter(|s| *s == name).count();
            assert!((250..550).contains(&n), "{name}: {n} of 2000");
        }
        // n3 goes down: its players move, nobody else does; back up, they return.
        let n3 = pool_a
            .nodes
            .iter()
            .position(|n| n.config.name == "n3")
            .unwrap();
        pool_a.nodes[n3].runtime.record_check(false, 1, 1);
        for (&u, shard) in users.iter().zip(&before) {
            let now = of(&a, &pool_a, u);
            if shard == "n3" {
                assert_ne!(now, "n3");
            } else {
                assert_eq!(&now, shard);
            }
        }
        pool_a.nodes[n3].runtime.record_check(true, 1, 1);
        let after: Vec<String> = users.iter().map(|&u| of(&a, &pool_a, u)).collect();
        assert_eq!(after, before);
    }

    #[test]
    fn a_discover_entry_stands_for_the_node_it_finds() {
        let config = Config::parse(
            &format!(
                "[routing]\nmode = \"shards\"\n{KEY}\
                 [[discover]]\nname = \"eu\"\ndns = \"localhost\"\nport = 7350\n\
                 [[shards]]\nname = \"eu-ranked\"\nnode = \"eu\"\nstandby = \"spare\"\n\
                 [[nodes]]\nname = \"spare\"\naddress = \"127.0.0.1:17450\"\n"
            ),
            "test",
        )
        .unwrap();
        let mut members = Member::configured(&config);
        let mut found = members[0].clone();
        found.config.name = "eu-127.0.0.9:7350".into();
        found.config.address = "127.0.0.9:7350".parse().unwrap();
        found.origin = Origin::Discovered("eu".into());
        members.push(found);
        let (pool, shards) = shards_of(&config, &members);
        let s = shards.get(shards.named(b"eu-ranked").unwrap()).unwrap();
        assert_eq!(
            node_name(&pool, s.taker(&pool, Tried::default())),
            Some(("eu-127.0.0.9:7350", false))
        );
        // Found by nobody (yet): the standby.
        let (pool, shards) = shards_of(&config, &Member::configured(&config));
        let s = shards.get(0).unwrap();
        assert_eq!(
            node_name(&pool, s.taker(&pool, Tried::default())),
            Some(("spare", true))
        );
    }
}

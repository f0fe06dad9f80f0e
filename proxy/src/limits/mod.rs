//! Per-client limits (governor): requests per second with a burst, a stricter budget for
//! authentication, new connections per second, concurrent connections; failed logins per
//! account; messages per second per WebSocket.
//!
//! ```text
//!   a request with a verified session token ──► users: requests_per_second/burst per user
//!   any other request (auth, http_key, none) ──► requests (+ auth): the same budget per IP
//!   a connection ──► new_connections (rate) and open (count), per IP
//!   a login ──► logins: failures per account identifier (401 from the node)
//!   a WebSocket's client frames ──► MessageBudget, per socket
//! ```
//!
//! Players behind one address (CGNAT, a venue) each have their own budget once their
//! session token is verified (`[nakama] session_key`); the per-IP budgets are a coarse
//! backstop, sized so that hundreds of players behind one address get through (README).
//! IPs are keyed by address, IPv6 by its /64 (one subscriber's allocation). Memory stays
//! bounded however many clients arrive: a key whose budget has refilled is indistinguishable
//! from a new one and is dropped by [`Limits::purge`], which runs every second and at once
//! when a store grows past [`PURGE_ABOVE`] keys; a login window is dropped once over.
//! Concurrent-connection counts exist only while connections do.
//!
//! | module | concern |
//! | --- | --- |
//! | this one | the per-client budgets |
//! | [`logins`] | failed logins per account identifier (brute force) |
//! | [`token`] | the user id in a Nakama session token, verified |
//! | [`token_alarm`] | the WARN when most session tokens fail (a wrong `[nakama] session_key`) |

pub mod logins;
pub mod token;
pub mod token_alarm;

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use nakama_edge_config::RateLimit;

use crate::listen::firewall::canonical;

/// A client as the limits see it: an IPv4 address, or an IPv6 /64.
pub type ClientKey = u128;

/// The key of `ip`: an IPv6 address's /64 prefix (below 2^64), or 2^64 plus an IPv4 address,
/// so that the two never meet.
pub fn client_key(ip: IpAddr) -> ClientKey {
    match canonical(ip) {
        IpAddr::V4(v4) => (1u128 << 64) | u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6) >> 64,
    }
}

/// A store this large is purged at once rather than at the next tick.
pub const PURGE_ABOVE: usize = 100_000;

/// Paths with the stricter authentication budget.
pub fn is_auth_path(path: &str) -> bool {
    path.starts_with("/v2/account/authenticate/") || path == "/v2/account/session/refresh"
}

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

/// Checks between two looks at a limiter's size, per worker thread.
const SIZE_CHECK_EVERY: u32 = 1024;

/// Whether this check should look at the limiter's size.
fn size_check_due() -> bool {
    thread_local! {
        static CHECKS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }
    CHECKS.with(|n| {
        let next = n.get().wrapping_add(1);
        n.set(next);
        next % SIZE_CHECK_EVERY == 0
    })
}

/// The rate limiters of one `[rate_limit]` configuration.
pub struct Limits {
    config: RateLimit,
    requests: DefaultKeyedRateLimiter<ClientKey>,
    users: DefaultKeyedRateLimiter<u128>,
    /// Failed logins per account identifier.
    pub logins: crate::limits::logins::LoginFailures,
    auth: DefaultKeyedRateLimiter<ClientKey>,
    new_connections: DefaultKeyedRateLimiter<ClientKey>,
    /// Shared by every configuration: connections outlive reloads.
    open: Arc<OpenConnections>,
}

/// Why a client was held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// Over a rate: try again after this long.
    Rate(Duration),
    /// Too many open connections from this client.
    Connections,
}

impl Limits {
    /// Limiters for `config`, counting open connections in `open`.
    pub fn new(config: &RateLimit, open: Arc<OpenConnections>) -> Limits {
        let per_second =
            |rate: u32, burst: u32| Quota::per_second(nonzero(rate)).allow_burst(nonzero(burst));
        Limits {
            config: config.clone(),
            requests: RateLimiter::dashmap(per_second(config.requests_per_second, config.burst)),
            users: RateLimiter::dashmap(per_second(config.requests_per_second, config.burst)),
            logins: crate::limits::logins::LoginFailures::new(config.login_failures_per_minute),
            auth: RateLimiter::dashmap(Quota::per_minute(nonzero(config.auth_requests_per_minute))),
            new_connections: RateLimiter::dashmap(per_second(
                config.new_connections_per_second,
                config.new_connections_per_second,
            )),
            open,
        }
    }

    /// The configuration these limiters enforce.
    pub fn config(&self) -> &RateLimit {
        &self.config
    }

    fn check<K: std::hash::Hash + Eq + Clone>(
        limiter: &DefaultKeyedRateLimiter<K>,
        key: K,
    ) -> Result<(), Limited> {
        // A map's size costs a lock of each of its shards: looked at now and then (the purge
        // task keeps the maps small between floods).
        if size_check_due() && limiter.len() > PURGE_ABOVE {
            limiter.retain_recent();
        }
        // The limiter's own clock: making a clock calibrates one (a microsecond, per refusal).
        limiter
            .check_key(&key)
            .map_err(|not_until| Limited::Rate(not_until.wait_time_from(limiter.clock().now())))
    }

    /// One request from `key`; authentication requests also spend the stricter budget.
    pub fn check_request(&self, key: ClientKey, auth: bool) -> Result<(), Limited> {
        Self::check(&self.requests, key)?;
        if auth {
            Self::check(&self.auth, key)?;
        }
        Ok(())
    }

    /// One request of the user with limiter key `user` (a verified session token's user id).
    pub fn check_user(&self, user: u128) -> Result<(), Limited> {
        Self::check(&self.users, user)
    }

    /// A new connection from `key`: within the rate, and a slot among its open connections.
    pub fn admit_connection(&self, key: ClientKey) -> Result<ConnectionSlot, Limited> {
        Self::check(&self.new_connections, key)?;
        self.open
            .acquire(key, self.config.connections_per_ip)
            .ok_or(Limited::Connections)
    }

    /// Forget keys whose budgets have refilled.
    pub fn purge(&self) {
        for limiter in [&self.requests, &self.auth, &self.new_connections] {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        self.users.retain_recent();
        self.users.shrink_to_fit();
        self.logins.purge();
    }

    /// Keys held across the limiters (for tests and metrics).
    pub fn tracked_keys(&self) -> usize {
        self.requests.len() + self.auth.len() + self.new_connections.len() + self.users.len()
    }
}

/// Open connections per client.
#[derive(Debug, Default)]
pub struct OpenConnections {
    counts: Mutex<HashMap<ClientKey, u32>>,
}

impl OpenConnections {
    fn acquire(self: &Arc<Self>, key: ClientKey, max: u32) -> Option<ConnectionSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(key).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(ConnectionSlot {
            open: self.clone(),
            key,
        })
    }

    /// Clients with open connections.
    pub fn clients(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// One open connection of one client; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnectionSlot {
    open: Arc<OpenConnections>,
    key: ClientKey,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = self.open.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// One WebSocket's budget of client messages: `rate` a second, `burst` at once (a token
/// bucket, checked as frames start).
#[derive(Debug, Clone)]
pub struct MessageBudget {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: std::time::Instant,
}

impl MessageBudget {
    /// A full budget.
    pub fn new(rate: u32, burst: u32) -> MessageBudget {
        MessageBudget {
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: std::time::Instant::now(),
        }
    }

    /// Spend `messages` at `now`; `false`: over the budget.
    pub fn spend(&mut self, messages: u32, now: std::time::Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst) - f64::from(messages);
        self.tokens >= 0.0
    }
}

/// The seconds of a `Retry-After` header for `wait`: rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.is_zero()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(rps: u32, burst: u32, auth_per_min: u32, conns: u32, new_per_sec: u32) -> RateLimit {
        RateLimit {
            requests_per_second: rps,
            burst,
            auth_requests_per_minute: auth_per_min,
            connections_per_ip: conns,
            new_connections_per_second: new_per_sec,
            login_failures_per_minute: 10,
            websocket_messages_per_second: 100,
            websocket_message_burst: 200,
        }
    }

    #[test]
    fn users_have_budgets_of_their_own() {
        let limits = Limits::new(&config(1, 3, 100, 10, 100), Arc::default());
        for _ in 0..3 {
            assert_eq!(limits.check_user(1), Ok(()));
        }
        assert!(matches!(limits.check_user(1), Err(Limited::Rate(_))));
        assert_eq!(
            limits.check_user(2),
            Ok(()),
            "another user behind the same address"
        );
        assert_eq!(
            limits.check_request(client_key(ip("10.0.0.1")), false),
            Ok(()),
            "the address's budget is apart"
        );
    }

    #[test]
    fn a_message_budget_allows_its_rate_and_burst() {
        let start = std::time::Instant::now();
        let mut b = MessageBudget::new(60, 120);
        // 60 a second for 10 s, one every 1/60 s: never over.
        for i in 1..=600u32 {
            assert!(b.spend(1, start + Duration::from_secs_f64(f64::from(i) / 60.0)));
        }
        // A flood: the burst, then refused.
        let mut flood = MessageBudget::new(60, 120);
        let over = (0..500).filter(|_| !flood.spend(1, start)).count();
        assert_eq!(over, 500 - 120);
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn keys() {
        assert_eq!(
            client_key(ip("2001:db8:1:2::1")),
            client_key(ip("2001:db8:1:2:ffff::9")),
            "one /64"
        );
        assert_ne!(
            client_key(ip("2001:db8:1:2::1")),
            client_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            client_key(ip("::ffff:10.0.0.1")),
            client_key(ip("10.0.0.1"))
        );
        assert_ne!(client_key(ip("10.0.0.1")), client_key(ip("10.0.0.2")));
        assert_ne!(client_key(ip("0.0.0.1")), client_key(ip("::1")));
    }

    #[test]
    fn burst_then_limited_per_client() {
        let limits = Limits::new(&config(1, 5, 2, 10, 100), Arc::default());
        let (a, b) = (client_key(ip("10.0.0.1")), client_key(ip("10.0.0.2")));
        for _ in 0..5 {
            assert_eq!(limits.check_request(a, false), Ok(()));
        }
        let Err(Limited::Rate(wait)) = limits.check_request(a, false) else {
            panic!()
        };
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert_eq!(
            limits.check_request(b, false),
            Ok(()),
            "other clients are unaffected"
        );
        // Authentication: 2 per minute.
        assert_eq!(limits.check_request(b, true), Ok(()));
        assert_eq!(limits.check_request(b, true), Ok(()));
        let Err(Limited::Rate(wait)) = limits.check_request(b, true) else {
            panic!()
        };
        assert!(wait > Duration::from_secs(20), "{wait:?}");
    }

    #[test]
    fn concurrent_connections_are_slots() {
        let limits = Limits::new(&config(100, 100, 100, 2, 100), Arc::default());
        let a = client_key(ip("10.0.0.1"));
        let s1 = limits.admit_connection(a).unwrap();
        let _s2 = limits.admit_connection(a).unwrap();
        assert_eq!(
            limits.admit_connection(a).unwrap_err(),
            Limited::Connections
        );
        drop(s1);
        assert!(limits.admit_connection(a).is_ok());
    }

    #[test]
    fn new_connection_rate() {
        let limits = Limits::new(&config(100, 100, 100, 1000, 3), Arc::default());
        let a = client_key(ip("10.0.0.1"));
        let slots: Vec<_> = (0..3)
            .map(|_| limits.admit_connection(a).unwrap())
            .collect();
        assert!(matches!(limits.admit_connection(a), Err(Limited::Rate(_))));
        drop(slots);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(30)), 30);
    }

    /// A million distinct clients, one request each, with the periodic purge running as it
    /// does in the edge: the store never holds more than what the last purge interval added,
    /// and empties once the budgets have refilled.
    #[test]
    fn a_million_distinct_clients_users_and_login_identifiers_stay_bounded() {
        let limits = Limits::new(&config(50, 100, 30, 200, 50), Arc::default());
        let mut most = 0;
        for i in 0u32..1_000_000 {
            let key = client_key(IpAddr::V4(i.wrapping_mul(2_654_435_761).into()));
            assert_eq!(limits.check_request(key, false), Ok(()));
            assert_eq!(limits.check_user(u128::from(i) << 64), Ok(()));
            limits
                .logins
                .failed(u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            if i % 50_000 == 0 {
                limits.purge();
            }
            most = most.max(limits.tracked_keys());
        }
        // Addresses and users: each store at most what a purge interval added; login windows
        // (a minute each) at most their cap.
        assert!(most <= 2 * (PURGE_ABOVE + 1), "at most {most} keys held");
        assert!(limits.logins.tracked() <= crate::limits::logins::MAX_WINDOWS);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while limits.tracked_keys() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{} keys left",
                limits.tracked_keys()
            );
            std::thread::yield_now();
            limits.purge();
        }
    }
}

//! Login brute force: failed logins counted per account, so that one account's attacker is
//! stopped while other players behind the same address log in.
//!
//! ```text
//!   POST /v2/account/authenticate/{device,custom,email,...} ── body (read first) ──►
//!        identifier: kind + `id` | `email` | `username`, hashed with a per-process key
//!        ├─ its window holds login_failures_per_minute failures: 429, Retry-After = the rest
//!        └─ else proxied; the node answers 401 ──► one more failure in its window
//! ```
//!
//! A window starts at an identifier's first failure and lasts a minute. Identifiers are kept
//! only as 64-bit keyed hashes, never logged. At most [`MAX_WINDOWS`] windows are kept: past
//! that, new identifiers are not tracked until old windows end (the per-address
//! `auth_requests_per_minute` still applies), rather than evicting the window an attacker
//! would like gone.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// How long a window of failures lasts.
pub const WINDOW: Duration = Duration::from_secs(60);
/// The most windows kept at once.
pub const MAX_WINDOWS: usize = 200_000;
/// Bodies larger than this are not logins to read (Nakama's are a few hundred bytes).
const MAX_BODY: usize = 16 * 1024;
const SHARDS: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

/// Failed logins per account identifier.
pub struct LoginFailures {
    limit: u32,
    shards: [Mutex<HashMap<u64, Window>>; SHARDS],
    hasher: RandomState,
}

#[derive(Deserialize)]
struct LoginBody<'a> {
    #[serde(borrow, default)]
    id: Option<&'a str>,
    #[serde(borrow, default)]
    email: Option<&'a str>,
    #[serde(borrow, default)]
    username: Option<&'a str>,
}

impl LoginFailures {
    /// At most `limit` failures per identifier per minute.
    pub fn new(limit: u32) -> LoginFailures {
        LoginFailures {
            limit: limit.max(1),
            shards: std::array::from_fn(|_| Mutex::default()),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, id: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Window>> {
        self.shards[(id % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The account a login to `path` with `body` is for, as a keyed hash: the `email`, else the
    /// `username`, else the `id` (device and custom logins), with the login's kind (the last
    /// segment of the path). `None`: not a login body this edge can read.
    pub fn identifier(&self, path: &str, body: &[u8]) -> Option<u64> {
        let kind = path.strip_prefix("/v2/account/authenticate/")?;
        if body.len() > MAX_BODY {
            return None;
        }
        let login: LoginBody = serde_json::from_slice(body).ok()?;
        let account = login.email.or(login.username).or(login.id)?;
        if account.is_empty() {
            return None;
        }
        Some(self.hasher.hash_one((kind, account)))
    }

    /// Whether `id` may try to log in now; else how long until its window ends.
    pub fn check(&self, id: u64) -> Result<(), Duration> {
        let now = Instant::now();
        match self.shard(id).get(&id) {
            Some(w) if w.failures >= self.limit => {
                let ends = w.started + WINDOW;
                if now < ends {
                    Err(ends - now)
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    /// `id` failed to log in (the node answered 401).
    pub fn failed(&self, id: u64) {
        let now = Instant::now();
        let cap = MAX_WINDOWS / SHARDS;
        let mut shard = self.shard(id);
        if let Some(w) = shard.get_mut(&id) {
            if now.duration_since(w.started) >= WINDOW {
                *w = Window {
                    started: now,
                    failures: 0,
                };
            }
            w.failures = w.failures.saturating_add(1);
            return;
        }
        if shard.len() >= cap {
            // Full: not tracked (the purge, once a second, frees the windows that ended).
            // Scanning here would make every failed login of a spray cost a whole shard.
            return;
        }
        shard.insert(
            id,
            Window {
                started: now,
                failures: 1,
            },
        );
    }

    /// Forget windows that are over.
    pub fn purge(&self) {
        let now = Instant::now();
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            shard.retain(|_, w| now.duration_since(w.started) < WINDOW);
            if shard.capacity() > 4 * shard.len().max(64) {
                shard.shrink_to_fit();
            }
        }
    }

    /// Windows held.
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_come_from_the_body_and_differ_by_account_and_kind() {
        let l = LoginFailures::new(10);
        let device = |id: &str| {
            l.identifier(
                "/v2/account/authenticate/device",
                format!(r#"{{"id":"{id}"}}"#).as_bytes(),
            )
        };
        assert_eq!(device("a"), device("a"));
        assert_ne!(device("a"), device("b"));
        assert_ne!(
            device("a"),
            l.identifier("/v2/account/authenticate/custom", br#"{"id":"a"}"#)
        );
        let email = l.identifier(
            "/v2/account/authenticate/email",
            br#"{"email":"p@x.test","password":"wrong"}"#,
        );
        assert_eq!(
            email,
            l.identifier(
                "/v2/account/authenticate/email",
                br#"{"email":"p@x.test","password":"other"}"#
            ),
            "the password is not part of it"
        );
        for (path, body) in [
            ("/v2/account/authenticate/device", &b"not json"[..]),
            ("/v2/account/authenticate/device", br#"{"id":""}"#),
            ("/v2/account/authenticate/device", br#"{"vars":{}}"#),
            ("/v2/rpc/x", br#"{"id":"a"}"#),
        ] {
            assert_eq!(l.identifier(path, body), None, "{path} {body:?}");
        }
        let huge = format!(r#"{{"id":"{}"}}"#, "x".repeat(MAX_BODY));
        assert_eq!(
            l.identifier("/v2/account/authenticate/device", huge.as_bytes()),
            None
        );
    }

    #[test]
    fn the_limit_blocks_one_account_for_the_rest_of_its_window() {
        let l = LoginFailures::new(3);
        for _ in 0..3 {
            assert_eq!(l.check(7), Ok(()));
            l.failed(7);
        }
        let wait = l.check(7).unwrap_err();
        assert!(wait > Duration::from_secs(55) && wait <= WINDOW, "{wait:?}");
        assert_eq!(l.check(8), Ok(()), "another account");
    }

    #[test]
    fn windows_are_capped() {
        let l = LoginFailures::new(3);
        for i in 0..(MAX_WINDOWS as u64 + 50_000) {
            l.failed(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        }
        assert!(l.tracked() <= MAX_WINDOWS, "{}", l.tracked());
    }
}

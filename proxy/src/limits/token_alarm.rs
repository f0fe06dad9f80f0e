//! The WARN for a wrong `[nakama] session_key`: when it is not Nakama's
//! `session.encryption_key`, every session token fails verification and players silently fall
//! back to per-address budgets. Most tokens with a bad signature within a minute is that
//! mistake (a forger sends a few; players send many, and refresh expired ones).
//!
//! Fed the `nakama_edge_session_tokens_total` counts on each bad signature; at most one WARN
//! per [`QUIET`].

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the counts are compared over.
const WINDOW: Duration = Duration::from_secs(60);
/// Bad signatures within a window before anything is said: a few forged tokens are no
/// misconfiguration.
const AT_LEAST: u64 = 20;
/// The least time between two WARN lines.
const QUIET: Duration = Duration::from_secs(600);

/// Session tokens seen so far, by what became of them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub verified: u64,
    pub bad_signature: u64,
}

#[derive(Debug)]
struct Window {
    since: Instant,
    base: Counts,
    warned: Option<Instant>,
}

/// Watches the share of bad signatures.
#[derive(Debug)]
pub struct TokenAlarm {
    window: Mutex<Window>,
}

impl TokenAlarm {
    /// An alarm whose first window starts `now`.
    pub fn new(now: Instant) -> TokenAlarm {
        TokenAlarm {
            window: Mutex::new(Window {
                since: now,
                base: Counts::default(),
                warned: None,
            }),
        }
    }

    /// After a bad signature, with the counts so far: the WARN line's text when most tokens of
    /// the current window had a bad signature (and none was said for [`QUIET`]).
    pub fn bad_signature(&self, counts: Counts, now: Instant) -> Option<String> {
        // Another request is looking: one look is enough.
        let mut w = self.window.try_lock().ok()?;
        let elapsed = now.saturating_duration_since(w.since);
        if elapsed > WINDOW {
            w.since = now;
            w.base = counts;
        }
        let bad = counts.bad_signature.saturating_sub(w.base.bad_signature);
        let verified = counts.verified.saturating_sub(w.base.verified);
        let quiet = w
            .warned
            .is_none_or(|at| now.saturating_duration_since(at) >= QUIET);
        if bad < AT_LEAST || bad <= verified || !quiet {
            return None;
        }
        w.warned = Some(now);
        Some(format!(
            "{bad} of {} session tokens in the last {}s have a bad signature: check [nakama] session_key (or session_key_file) against Nakama's session.encryption_key; until they match, players are limited per address, not per player",
            bad + verified,
            now.saturating_duration_since(w.since).as_secs().max(1)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(verified: u64, bad_signature: u64) -> Counts {
        Counts {
            verified,
            bad_signature,
        }
    }

    #[test]
    fn most_tokens_failing_warns_once_then_again_after_the_quiet_time() {
        let t0 = Instant::now();
        let alarm = TokenAlarm::new(t0);
        // A few forged tokens among many good ones: nothing to say.
        for bad in 1..=30 {
            assert_eq!(alarm.bad_signature(counts(1000, bad), t0), None);
        }
        // A new window in which every token fails.
        let t1 = t0 + WINDOW + Duration::from_secs(1);
        assert_eq!(alarm.bad_signature(counts(1000, 31), t1), None);
        let said: Vec<_> = (32..=100)
            .filter_map(|bad| alarm.bad_signature(counts(1000, bad), t1))
            .collect();
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].contains("[nakama] session_key"), "{}", said[0]);
        assert!(said[0].starts_with("20 of 20 "), "{}", said[0]);
        // Still failing: quiet until QUIET has passed.
        let t2 = t1 + WINDOW + Duration::from_secs(1);
        alarm.bad_signature(counts(1000, 100), t2);
        assert!((101..200).all(|bad| alarm.bad_signature(counts(1000, bad), t2).is_none()));
        let t3 = t1 + QUIET + Duration::from_secs(1);
        alarm.bad_signature(counts(1000, 200), t3);
        assert!((201..300).any(|bad| alarm.bad_signature(counts(1000, bad), t3).is_some()));
    }

    #[test]
    fn half_failing_is_not_most() {
        let t0 = Instant::now();
        let alarm = TokenAlarm::new(t0);
        assert!((1..=50).all(|n| alarm.bad_signature(counts(n, n), t0).is_none()));
    }
}

//! The retry budget: how many requests may be sent again to another node, so that a failing
//! node cannot multiply the load on the others (Envoy's and Linkerd's retry budgets).
//!
//! ```text
//!   every request sent to a node ──► record_request ──┐
//!                                                     ▼
//!        ring of WINDOW one-second slots: (second, requests, retries)
//!                                                     ▲
//!   a node failed before answering ──► try_retry ─────┘ retries in the window
//!        < max(RATIO × requests, FLOOR_PER_SECOND × WINDOW)?  yes: retry; no: the error stands
//! ```
//!
//! The floor lets a quiet edge fail over (one request a minute still gets its retry); the
//! ratio bounds a busy one: at most 20 % more requests reach the nodes than players sent.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Retries may add this share of the requests in the window.
pub const RATIO: f64 = 0.2;
/// Retries always allowed, per second of the window.
pub const FLOOR_PER_SECOND: u32 = 10;
/// The window, in seconds.
pub const WINDOW: usize = 10;

#[derive(Debug, Default)]
struct Slot {
    /// Seconds since the process's epoch, plus one; 0: never used.
    second: AtomicU64,
    requests: AtomicU32,
    retries: AtomicU32,
}

/// The process's retry budget (one for every listener, kept across reloads).
#[derive(Debug, Default)]
pub struct RetryBudget {
    slots: [Slot; WINDOW],
}

fn now_second() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_secs() + 1
}

impl RetryBudget {
    /// The slot of `second`, emptied first if it last held an older second.
    fn slot(&self, second: u64) -> &Slot {
        let slot = &self.slots[(second % WINDOW as u64) as usize];
        let seen = slot.second.load(Ordering::Acquire);
        if seen != second
            && slot
                .second
                .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            slot.requests.store(0, Ordering::Relaxed);
            slot.retries.store(0, Ordering::Relaxed);
        }
        slot
    }

    /// Requests and retries in the window ending at `second`.
    fn in_window(&self, second: u64) -> (u64, u64) {
        self.slots
            .iter()
            .filter(|s| second.saturating_sub(s.second.load(Ordering::Acquire)) < WINDOW as u64)
            .fold((0, 0), |(req, ret), s| {
                (
                    req + u64::from(s.requests.load(Ordering::Relaxed)),
                    ret + u64::from(s.retries.load(Ordering::Relaxed)),
                )
            })
    }

    /// Count a request's first attempt at a node.
    pub fn record_request(&self) {
        self.record_request_at(now_second());
    }

    fn record_request_at(&self, second: u64) {
        self.slot(second).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether one more retry fits the budget; if so it is counted.
    pub fn try_retry(&self) -> bool {
        self.try_retry_at(now_second())
    }

    fn try_retry_at(&self, second: u64) -> bool {
        let (requests, retries) = self.in_window(second);
        let allowed =
            ((requests as f64 * RATIO) as u64).max(u64::from(FLOOR_PER_SECOND) * WINDOW as u64);
        if retries >= allowed {
            return false;
        }
        self.slot(second).retries.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOOR: u64 = FLOOR_PER_SECOND as u64 * WINDOW as u64;

    #[test]
    fn a_quiet_edge_gets_the_floor() {
        let budget = RetryBudget::default();
        budget.record_request_at(1);
        let granted = (0..FLOOR + 50).filter(|_| budget.try_retry_at(1)).count();
        assert_eq!(granted as u64, FLOOR);
    }

    #[test]
    fn a_busy_edge_gets_a_fifth_of_its_requests() {
        let budget = RetryBudget::default();
        for _ in 0..10_000 {
            budget.record_request_at(5);
        }
        let granted = (0..5_000).filter(|_| budget.try_retry_at(5)).count();
        assert_eq!(granted, 2_000);
    }

    #[test]
    fn the_window_slides() {
        let budget = RetryBudget::default();
        budget.record_request_at(1);
        assert_eq!(
            (0..FLOOR * 2).filter(|_| budget.try_retry_at(1)).count() as u64,
            FLOOR
        );
        // Still inside the window: nothing more.
        assert!(!budget.try_retry_at(1 + WINDOW as u64 - 1));
        // Past it: the old retries no longer count.
        assert!(budget.try_retry_at(1 + WINDOW as u64));
        let (_, retries) = budget.in_window(1 + WINDOW as u64);
        assert_eq!(retries, 1);
    }
}

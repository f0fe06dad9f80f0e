//! When to renew, when to retry, and whether a new certificate may replace the current one.
//! Pure functions of their inputs (randomness passed in), so every rule is unit-tested.

use std::time::{Duration, SystemTime};

use crate::info::CertInfo;

/// A renewal window suggested by the CA (ACME Renewal Information, RFC 9773).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Renew no earlier than this.
    pub start: SystemTime,
    /// Renew before this.
    pub end: SystemTime,
}

/// A uniformly random `u64` from the system's secure random source.
pub fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    // Failure of the OS random source leaves zeros: the start of a window, no jitter.
    let _ = rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut buf);
    u64::from_le_bytes(buf)
}

/// A point in `[0, span]` chosen by `random`.
fn point_in(span: Duration, random: u64) -> Duration {
    let nanos = span.as_nanos().min(u64::MAX as u128) as u64;
    if nanos == 0 {
        Duration::ZERO
    } else {
        Duration::from_nanos(random % (nanos + 1).max(1))
    }
}

/// When to renew `current`: at a random point inside the CA's window when it offers one (a
/// window that has started means now), else at two thirds of the certificate's lifetime.
pub fn renewal_time(current: &CertInfo, ari: Option<&Window>, random: u64) -> SystemTime {
    match ari {
        Some(w) => {
            let span = w.end.duration_since(w.start).unwrap_or(Duration::ZERO);
            w.start + point_in(span, random)
        }
        None => {
            let lifetime = current
                .not_after
                .duration_since(current.not_before)
                .unwrap_or(Duration::ZERO);
            current.not_before + lifetime * 2 / 3
        }
    }
}

/// Why a certificate in hand may not replace the one being served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It is not valid now.
    NotValidNow,
    /// It does not name every configured domain.
    MissingDomain,
    /// It expires no later than the current one.
    NotNewer,
}

/// Whether `candidate` may replace `current` (`None`: a placeholder) for `domains` at `now`.
/// An older, expired or incomplete certificate never replaces a newer one.
pub fn may_replace(
    candidate: &CertInfo,
    current: Option<&CertInfo>,
    domains: &[String],
    now: SystemTime,
) -> Result<(), Refusal> {
    if !candidate.valid_at(now) {
        return Err(Refusal::NotValidNow);
    }
    if !candidate.covers(domains) {
        return Err(Refusal::MissingDomain);
    }
    match current {
        Some(c) if c.covers(domains) && c.valid_at(now) && candidate.not_after <= c.not_after => {
            Err(Refusal::NotNewer)
        }
        _ => Ok(()),
    }
}

/// Retry delays after failures: exponential from `initial`, capped at `max`, with jitter
/// (each delay is drawn from its upper half), and at least [`RATE_LIMITED_PAUSE`] after the
/// CA said "rate limited".
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

/// The least wait after a rate-limit answer, whatever the backoff says.
pub const RATE_LIMITED_PAUSE: Duration = Duration::from_secs(3600);

impl Backoff {
    /// A backoff starting at `initial`, never above `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            failures: 0,
        }
    }

    /// The wait before the next attempt after one more failure. `retry_after` is the CA's
    /// own answer, honoured when longer.
    pub fn next(
        &mut self,
        random: u64,
        rate_limited: bool,
        retry_after: Option<Duration>,
    ) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        let mut delay = exp / 2 + point_in(exp / 2, random);
        if rate_limited {
            delay = delay.max(RATE_LIMITED_PAUSE);
        }
        if let Some(ra) = retry_after {
            delay = delay.max(ra);
        }
        delay
    }

    /// Back to `initial` after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn cert(from: u64, to: u64, names: &[&str]) -> CertInfo {
        CertInfo {
            not_before: at(from),
            not_after: at(to),
            names: names.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn two_thirds_without_ari() {
        assert_eq!(renewal_time(&cert(0, 90, &[]), None, 12345), at(60));
    }

    #[test]
    fn inside_the_ari_window() {
        let w = Window {
            start: at(1000),
            end: at(2000),
        };
        for r in [0, 1, 999, 1_000_000_000_000, u64::MAX] {
            let t = renewal_time(&cert(0, 90, &[]), Some(&w), r);
            assert!(t >= w.start && t <= w.end, "{t:?}");
        }
        assert_eq!(renewal_time(&cert(0, 90, &[]), Some(&w), 0), at(1000));
        let empty = Window {
            start: at(5),
            end: at(5),
        };
        assert_eq!(renewal_time(&cert(0, 90, &[]), Some(&empty), 77), at(5));
        let backwards = Window {
            start: at(9),
            end: at(5),
        };
        assert_eq!(renewal_time(&cert(0, 90, &[]), Some(&backwards), 77), at(9));
    }

    #[test]
    fn only_a_newer_complete_valid_certificate_replaces() {
        let domains = vec!["a.example".to_string(), "b.example".to_string()];
        let current = cert(0, 100, &["a.example", "b.example"]);
        let now = at(50);
        assert_eq!(
            may_replace(
                &cert(40, 200, &["a.example", "b.example"]),
                Some(&current),
                &domains,
                now
            ),
            Ok(())
        );
        assert_eq!(
            may_replace(
                &cert(0, 90, &["a.example", "b.example"]),
                Some(&current),
                &domains,
                now
            ),
            Err(Refusal::NotNewer)
        );
        assert_eq!(
            may_replace(
                &cert(0, 100, &["a.example", "b.example"]),
                Some(&current),
                &domains,
                now
            ),
            Err(Refusal::NotNewer)
        );
        assert_eq!(
            may_replace(
                &cert(40, 200, &["a.example"]),
                Some(&current),
                &domains,
                now
            ),
            Err(Refusal::MissingDomain)
        );
        assert_eq!(
            may_replace(
                &cert(60, 200, &["a.example", "b.example"]),
                Some(&current),
                &domains,
                now
            ),
            Err(Refusal::NotValidNow)
        );
        assert_eq!(
            may_replace(
                &cert(0, 40, &["a.example", "b.example"]),
                None,
                &domains,
                now
            ),
            Err(Refusal::NotValidNow)
        );
        assert_eq!(
            may_replace(
                &cert(0, 60, &["a.example", "b.example"]),
                None,
                &domains,
                now
            ),
            Ok(())
        );
        // An expired or incomplete current certificate is replaced by any good one.
        assert_eq!(
            may_replace(
                &cert(0, 60, &["a.example", "b.example"]),
                Some(&cert(0, 70, &["a.example"])),
                &domains,
                now
            ),
            Ok(())
        );
    }

    #[test]
    fn backoff_grows_with_jitter_caps_and_honours_the_ca() {
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(60));
        let d1 = b.next(u64::MAX, false, None);
        assert!(
            d1 >= Duration::from_secs(5) && d1 <= Duration::from_secs(10),
            "{d1:?}"
        );
        let d2 = b.next(0, false, None);
        assert_eq!(d2, Duration::from_secs(10), "lower half of 20s");
        for _ in 0..10 {
            assert!(b.next(u64::MAX, false, None) <= Duration::from_secs(60));
        }
        assert!(b.next(0, true, None) >= RATE_LIMITED_PAUSE);
        assert_eq!(
            b.next(0, false, Some(Duration::from_secs(500))),
            Duration::from_secs(500)
        );
        b.reset();
        assert!(b.next(0, false, None) <= Duration::from_secs(10));
    }
}

//! One timer per connection, armed for one deadline at a time.

use std::future::Future as _;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// A timer armed for one deadline at a time. Once polled it wakes the task when it fires, so
/// until it is armed again a look at whether it has elapsed is enough (polling it again costs
/// a lock and the timer wheel).
pub(super) struct Timer {
    sleep: Pin<Box<Sleep>>,
    at: Option<Instant>,
    polled: bool,
}

impl Timer {
    /// A timer not armed yet.
    pub fn new() -> Timer {
        let far = Instant::now() + Duration::from_secs(86400);
        Timer {
            sleep: Box::pin(tokio::time::sleep_until(far)),
            at: None,
            polled: false,
        }
    }

    /// The deadline it is armed for.
    pub fn at(&self) -> Option<Instant> {
        self.at
    }

    /// Fire at `at`.
    pub fn arm(&mut self, at: Instant) {
        self.sleep.as_mut().reset(at);
        self.at = Some(at);
        self.polled = false;
    }

    /// The next look polls it again: the task that looks may not be the one it would wake.
    pub fn forget_waker(&mut self) {
        self.polled = false;
    }

    /// Whether it has fired; if not, this task is woken when it does.
    pub fn elapsed(&mut self, cx: &mut Context<'_>) -> bool {
        if self.polled {
            return self.sleep.is_elapsed();
        }
        self.polled = true;
        self.sleep.as_mut().poll(cx).is_ready()
    }
}

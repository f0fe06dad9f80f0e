//! A listener's "close what is idle" signal: raised once, halfway through a shutdown's grace
//! period, and seen by every connection of the listener.
//!
//! ```text
//!   Closing::raise ── flag set, every registered waker woken (once)
//!        │
//!   Watcher::poll_raised ── each poll of a connection: one atomic load and a waker compare
//! ```
//!
//! A connection registers once, when it starts, and leaves when it ends: its polls touch no
//! lock. (tokio's `watch` takes its waiters' lock at every poll of `changed()`, and a
//! connection is polled a few times per request.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

#[derive(Default)]
struct Inner {
    raised: AtomicBool,
    watchers: Mutex<Watchers>,
}

#[derive(Default)]
struct Watchers {
    next: u64,
    wakers: HashMap<u64, Arc<AtomicWaker>>,
}

/// The signal, owned by a listener.
#[derive(Clone, Default)]
pub struct Closing(Arc<Inner>);

impl Closing {
    /// Raise the signal: every watcher's next poll sees it, and each is woken for it.
    pub fn raise(&self) {
        self.0.raised.store(true, Ordering::SeqCst);
        for waker in self.0.watchers().wakers.values() {
            waker.wake();
        }
    }

    /// A watcher for one connection.
    pub fn watch(&self) -> Watcher {
        let waker = Arc::new(AtomicWaker::new());
        let mut watchers = self.0.watchers();
        let key = watchers.next;
        watchers.next += 1;
        watchers.wakers.insert(key, waker.clone());
        Watcher {
            closing: self.0.clone(),
            waker,
            key,
        }
    }
}

impl Inner {
    fn watchers(&self) -> MutexGuard<'_, Watchers> {
        self.watchers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One connection's view of the signal.
pub struct Watcher {
    closing: Arc<Inner>,
    waker: Arc<AtomicWaker>,
    key: u64,
}

impl Watcher {
    /// `Ready` once the signal is raised; until then the task is woken when it is.
    pub fn poll_raised(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.closing.raised.load(Ordering::Relaxed) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // Raised between the look and the registration: its wake may have found no waker.
        if self.closing.raised.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.closing.watchers().wakers.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::{Wake, Waker};

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_watcher_is_woken_once_raised_and_sees_it_from_then_on() {
        let closing = Closing::default();
        let watcher = closing.watch();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(watcher.poll_raised(&mut cx).is_pending());
        assert!(watcher.poll_raised(&mut cx).is_pending());
        closing.raise();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(watcher.poll_raised(&mut cx).is_ready());
        // A connection that starts after the signal sees it at its first poll.
        assert!(closing.watch().poll_raised(&mut cx).is_ready());
    }

    #[test]
    fn a_finished_connection_leaves_the_signal() {
        let closing = Closing::default();
        let watchers: Vec<_> = (0..3).map(|_| closing.watch()).collect();
        assert_eq!(closing.0.watchers().wakers.len(), 3);
        drop(watchers);
        assert_eq!(closing.0.watchers().wakers.len(), 0);
    }
}

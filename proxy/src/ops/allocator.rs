//! The allocator's upkeep: what the process gives back after a burst of connections.
//!
//! ```text
//!   a burst ends ──► freed memory ──► jemalloc's arenas ──► background thread: pages back
//!                         │                                  to the system after 1 s idle
//!                         └──► a worker thread's own cache ──► kept until that thread
//!                              (tcache)                         allocates again, unless
//!                                                               flushed: every FLUSH_EVERY
//! ```
//!
//! The binary runs on jemalloc (`main.rs`), whose background thread returns freed pages
//! within about a second. What it cannot reach is the cache of freed objects each thread keeps
//! for itself: jemalloc trims it only as that thread allocates, so a worker thread that goes
//! quiet after a burst keeps megabytes. Each worker thread that serves players therefore
//! flushes its own cache every [`FLUSH_EVERY`]; under load that costs a few microseconds per
//! flush. Measured with `benches/memory-burst.sh` (BENCHMARKS.md).

use std::cell::Cell;
use std::time::Duration;

/// How often a worker thread gives its cached freed objects back to the shared arenas.
pub const FLUSH_EVERY: Duration = Duration::from_secs(10);

/// Make the current worker thread flush its allocator cache every [`FLUSH_EVERY`], from now
/// on (the first call on a thread starts it; later calls cost a thread-local read). Must run
/// inside the thread's tokio runtime.
pub fn tend_this_thread() {
    thread_local! {
        static TENDED: Cell<bool> = const { Cell::new(false) };
    }
    if TENDED.with(|t| t.replace(true)) {
        return;
    }
    tokio::spawn(async {
        loop {
            tokio::time::sleep(FLUSH_EVERY).await;
            flush_thread_cache();
        }
    });
}

#[cfg(target_os = "linux")]
fn flush_thread_cache() {
    // SAFETY: `thread.tcache.flush` takes no old or new value (all null, length 0) and only
    // empties the calling thread's cache into the shared arenas.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            c"thread.tcache.flush".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn flush_thread_cache() {}

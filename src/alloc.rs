//! How the process uses glibc's allocator: few arenas, and freed memory handed back.
//!
//! glibc gives threads up to eight malloc arenas per core, and memory freed in one arena serves
//! only that arena's later allocations. quiver allocates on many threads (request handlers, the
//! apply pool, each collection's indexer, the planners), so a node kept memory that one thread
//! had freed while another asked the system for more. Elsewhere both functions are no-ops.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Caps glibc at one malloc arena per core, unless `MALLOC_ARENA_MAX` says otherwise; call it
/// before the first threads start. At 1M int8 points on 2 cores (issue 10) the ingest peak fell
/// from 1,616 to 1,528 MiB and the idle node from 1,533 to 1,460 MiB (before its last trim),
/// while ingest ran as fast (3,012/s against 2,821/s).
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let arenas = i32::try_from(cores).unwrap_or(i32::MAX);
        // SAFETY: mallopt takes two integers and changes a tunable of the allocator; it touches
        // no memory of ours.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

/// Hands memory that the allocator keeps after large frees (a replaced search copy, a graph
/// swapped out after a rebuild, a graph dump's buffers) back to the system, at most once a
/// second. glibc keeps freed memory in its arenas, so under churn resident memory followed the
/// writes and never came down (issue 10).
pub fn release_memory() {
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    {
        let mut last = LAST.lock();
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        *last = Some(Instant::now());
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's own heaps to the kernel;
    // it takes no pointer and leaves every live allocation where it is.
    unsafe {
        libc::malloc_trim(0);
    }
}

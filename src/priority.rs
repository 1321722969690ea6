//! Thread priorities for background work. On a small machine every background job (graph
//! building, snapshots, log purges, moving the heap onto huge pages) competes with the requests
//! and Raft messages that make writes visible; the jobs run below them. Off Linux these are
//! no-ops.

/// The nice value of work that may wait for anything else: snapshot builds, log purges, the
/// heap's collapse onto huge pages.
pub(crate) const BACKGROUND: i32 = 19;

/// Sets the calling thread's nice value; returns the one it had.
pub(crate) fn set_nice(nice: i32) -> i32 {
    #[cfg(target_os = "linux")]
    // SAFETY: getpriority and setpriority on the calling thread (who = 0 is the caller on Linux)
    // with plain integers; they touch no memory of ours.
    unsafe {
        let before = libc::getpriority(libc::PRIO_PROCESS, 0);
        libc::setpriority(libc::PRIO_PROCESS, 0, nice);
        before
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = nice;
        0
    }
}

/// Graph building is background work: let request handling and Raft win the CPU from it.
pub(crate) fn lower_priority() {
    set_nice(10);
}

/// Runs `f` at [`BACKGROUND`] priority on the calling (blocking pool) thread, then restores the
/// thread's priority (also if `f` panics).
pub(crate) fn in_background<T>(f: impl FnOnce() -> T) -> T {
    /// The thread's nice value before; put back on drop.
    struct Restore(i32);
    impl Drop for Restore {
        fn drop(&mut self) {
            set_nice(self.0);
        }
    }
    let _restore = Restore(set_nice(BACKGROUND));
    f()
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn background_work_runs_lower_and_the_thread_gets_its_priority_back() {
        std::thread::spawn(|| {
            let before = set_nice(0);
            assert_eq!(before, 0);
            let inside = in_background(|| set_nice(BACKGROUND));
            assert_eq!(inside, BACKGROUND);
            assert_eq!(set_nice(0), 0, "restored after the work");
        })
        .join()
        .unwrap();
    }
}

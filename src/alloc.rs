//! How the process uses glibc's allocator: few arenas, freed memory handed back, and the densely
//! used parts of its heaps on huge pages.
//!
//! glibc gives threads up to eight malloc arenas per core, and memory freed in one arena serves
//! only that arena's later allocations. quiver allocates on many threads (request handlers, the
//! apply pool, each collection's indexer, the planners), so a node kept memory that one thread
//! had freed while another asked the system for more. Off Linux (and glibc) these functions are
//! no-ops.

use std::sync::atomic::{AtomicBool, Ordering};
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
    if !first_in(&LAST, Duration::from_secs(1)) {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's own heaps to the kernel;
    // it takes no pointer and leaves every live allocation where it is.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// True (and `last` set to now) when `last` is longer than `every` ago or was never set: the
/// rate limit of the functions here.
fn first_in(last: &Mutex<Option<Instant>>, every: Duration) -> bool {
    let mut last = last.lock();
    if last.is_some_and(|t| t.elapsed() < every) {
        return false;
    }
    *last = Some(Instant::now());
    true
}

/// Most pages of a 2 MiB chunk that may be absent for it to be made a huge page: collapsing
/// fills them, so this bounds what collapsing adds to the resident memory (6.25 %), and a
/// chunk that `malloc_trim` has mostly handed back stays handed back.
const HOLES_ALLOWED: usize = 32;
const HUGE_PAGE: usize = 2 << 20;
const SMALL_PAGE: usize = 4096;

/// Moves the densely used 2 MiB chunks of the process's anonymous memory (malloc's heaps, large
/// allocations) onto transparent huge pages (`MADV_COLLAPSE`, Linux 6.1+), at most once every
/// [`COLLAPSE_EVERY`]; `QUIVER_HUGE_PAGES=0` turns it off. The indexer calls it after each
/// refresh of a search copy, once `malloc_trim` has handed freed pages back. A call within
/// [`COLLAPSE_EVERY`] of the last collapse is not dropped but deferred to the end of that
/// interval, so the newest points and search copy are covered at most that long after a burst
/// of writes ends.
///
/// A search or a graph insert reads a 1.5 KiB vector from anywhere in the heap for every
/// candidate, and with 4 KiB pages nearly every one of those reads also missed the TLB. Where
/// the kernel gives huge pages only to memory that asks for them (`[madvise]`, as on Debian and
/// Ubuntu), malloc's heaps never asked. Measured in one process over one graph (the bench's
/// `--pages-ab`): at 50k × 384 in-process searches ran 3-25 % faster, at 1M 7-20 %.
///
/// The work runs on a thread of its own at nice 19: at 1M × 384 the first collapse after a
/// restart moved 3.4 GiB in 7.4 s of one core, which the indexer had spent not inserting. It
/// is not free for the rest of the process either: the kernel copies each chunk under the
/// process's memory map lock, so a page fault elsewhere waits for it, hence the interval (it
/// was a second while the graph kept up). The replica lag at 400 writes/s (`examples/lag.rs`)
/// did not tell the two page sizes apart beyond the host's noise: p99 1.6-6.9 ms with huge
/// pages, 1.3-6.5 ms without, over ten interleaved pairs.
pub fn collapse_huge_pages() {
    if std::env::var_os("QUIVER_HUGE_PAGES").is_some_and(|v| v == "0") {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    COLLAPSER.request(COLLAPSE_EVERY);
}

/// The shortest time between two collapses ([`collapse_huge_pages`]).
pub const COLLAPSE_EVERY: Duration = Duration::from_secs(10);

/// The one background collapser of the process: a thread that exists while collapses are due.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
static COLLAPSER: Collapser = Collapser {
    wanted: AtomicBool::new(false),
    running: AtomicBool::new(false),
    last: Mutex::new(None),
};

#[cfg(all(target_os = "linux", target_env = "gnu"))]
struct Collapser {
    /// A collapse was asked for since the last one started.
    wanted: AtomicBool,
    /// The thread exists (it clears this before it ends, then looks at `wanted` once more).
    running: AtomicBool,
    /// When the last collapse started.
    last: Mutex<Option<Instant>>,
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
impl Collapser {
    fn request(&'static self, every: Duration) {
        self.wanted.store(true, Ordering::Release);
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("huge-pages".into())
            .spawn(move || {
                crate::priority::set_nice(crate::priority::BACKGROUND);
                self.run(every)
            });
        if spawned.is_err() {
            self.running.store(false, Ordering::Release);
        }
    }

    /// Collapses while collapses are asked for, each at least `every` after the one before.
    fn run(&self, every: Duration) {
        loop {
            let wait = self
                .last
                .lock()
                .map_or(Duration::ZERO, |t| every.saturating_sub(t.elapsed()));
            std::thread::sleep(wait);
            if !self.wanted.swap(false, Ordering::AcqRel) {
                self.running.store(false, Ordering::Release);
                // A request that came after the swap and saw the thread still running: stay.
                if !self.wanted.load(Ordering::Acquire) || self.running.swap(true, Ordering::AcqRel)
                {
                    return;
                }
                continue;
            }
            *self.last.lock() = Some(Instant::now());
            let started = Instant::now();
            let chunks = collapse_dense_chunks();
            tracing::debug!(
                chunks,
                ms = started.elapsed().as_secs_f64() * 1e3,
                "heap chunks on huge pages"
            );
        }
    }
}

/// Moves the dense chunks onto huge pages now, on the calling thread, whatever the rate limit
/// and `QUIVER_HUGE_PAGES` say (benchmarks that compare the two page sizes); returns how many
/// chunks are on huge pages afterwards.
pub fn collapse_now() -> usize {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    return collapse_dense_chunks();
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    0
}

/// The process's anonymous memory and the part of it on huge pages, in MiB, as
/// `/proc/self/smaps_rollup` reports them (zeros where it cannot be read).
pub fn anonymous_mib() -> (f64, f64) {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    let mib = |key: &str| {
        rollup
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    (mib("Anonymous:"), mib("AnonHugePages:"))
}

/// The private anonymous read-write mappings (malloc's heaps and large allocations) in `maps`,
/// the text of `/proc/self/maps`, that hold at least one whole 2 MiB chunk, as the chunks'
/// range.
fn anonymous_chunks(maps: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let inode = fields.nth(2);
        let path = fields.next();
        let anonymous = inode == Some("0") && path.is_none_or(|p| p == "[heap]");
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        let (first, last) = (
            start.next_multiple_of(HUGE_PAGE),
            end / HUGE_PAGE * HUGE_PAGE,
        );
        if anonymous && perms == "rw-p" && first < last {
            out.push((first, last));
        }
    }
    out
}

/// Whether a chunk whose pagemap entries are `entries` is used densely enough to collapse.
fn dense(entries: &[u64]) -> bool {
    // Bit 63: the page is present; bit 62: it is swapped out.
    let absent = entries.iter().filter(|e| *e >> 62 == 0).count();
    absent <= HOLES_ALLOWED
}

/// Collapses the dense chunks; returns how many the kernel moved onto huge pages (or found
/// there already).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn collapse_dense_chunks() -> usize {
    use std::os::unix::fs::FileExt;
    let (Ok(maps), Ok(pagemap)) = (
        std::fs::read_to_string("/proc/self/maps"),
        std::fs::File::open("/proc/self/pagemap"),
    ) else {
        return 0;
    };
    let mut collapsed = 0;
    let per_chunk = HUGE_PAGE / SMALL_PAGE;
    let mut bytes = vec![0u8; per_chunk * 8];
    for (first, last) in anonymous_chunks(&maps) {
        for chunk in (first..last).step_by(HUGE_PAGE) {
            if pagemap
                .read_exact_at(&mut bytes, (chunk / SMALL_PAGE * 8) as u64)
                .is_err()
            {
                break;
            }
            let entries: Vec<u64> = bytes
                .chunks_exact(8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                .collect();
            if dense(&entries) {
                // SAFETY: MADV_COLLAPSE copies the chunk's pages into one huge page and maps it
                // in their place: the contents and every address stay as they were. It fails
                // harmlessly (the chunk stays as it is) where the kernel cannot or will not.
                let done = unsafe {
                    libc::madvise(chunk as *mut libc::c_void, HUGE_PAGE, libc::MADV_COLLAPSE)
                };
                collapsed += usize::from(done == 0);
            }
        }
    }
    collapsed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_chunks_of_private_anonymous_memory_are_candidates() {
        let maps = "\
55d0c0000000-55d0c0421000 rw-p 00000000 00:00 0                          [heap]
7f1104000000-7f1104905000 rw-p 00000000 00:00 0 
7f1104905000-7f1108000000 ---p 00000000 00:00 0 
7f1120a00000-7f1120a01000 ---p 00000000 00:00 0 
7f1120a01000-7f1120c01000 rw-p 00000000 00:00 0 
7f1124018000-7f112416e000 r-xp 00028000 fe:00 325843                     /usr/lib/libc.so.6
7f1130000000-7f1131000000 rw-s 00000000 00:05 1234                       /dev/shm/x
7f1140000000-7f1140400000 rw-p 00000000 fe:00 99                         /data/file
7ffc14741000-7ffc14762000 rw-p 00000000 00:00 0                          [stack]
";
        assert_eq!(
            anonymous_chunks(maps),
            vec![
                // The main heap: its two whole chunks.
                (0x55d0_c000_0000, 0x55d0_c040_0000),
                // An arena's usable part (not the reserved part behind it): four chunks.
                (0x7f11_0400_0000, 0x7f11_0480_0000),
            ],
            "a thread stack that covers no whole chunk, code, shared and file mappings and \
             the main stack are left alone"
        );
    }

    #[test]
    fn a_chunk_is_collapsed_only_when_few_of_its_pages_are_absent() {
        let present = 1u64 << 63;
        let swapped = 1u64 << 62;
        let mut chunk = vec![present; HUGE_PAGE / SMALL_PAGE];
        assert!(dense(&chunk));
        chunk[..HOLES_ALLOWED].iter_mut().for_each(|e| *e = 0);
        chunk[HOLES_ALLOWED] = swapped;
        assert!(dense(&chunk), "32 holes, and a swapped page counts as used");
        chunk[HOLES_ALLOWED] = 0;
        assert!(!dense(&chunk), "33 holes");
    }

    /// Where the kernel can collapse at all (Linux 6.1+ with transparent huge pages), a densely
    /// written 16 MiB allocation ends up on huge pages, with its contents as they were.
    /// Elsewhere the kernel refuses every chunk and nothing changes.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_dense_allocation_is_moved_onto_huge_pages_unchanged() {
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        if thp.is_empty() || thp.contains("[never]") {
            return;
        }
        let block: Vec<u32> = (0..4u32 << 20).collect();
        let collapsed = collapse_dense_chunks();
        assert!(block.iter().enumerate().all(|(i, v)| *v == i as u32));
        if collapsed == 0 {
            return;
        }
        let huge_kb = huge_kb_around(block.as_ptr() as usize);
        // 16 MiB from an unaligned start hold at least seven whole chunks.
        assert!(
            huge_kb.is_some_and(|kb| kb >= 7 * 2048),
            "huge pages: {huge_kb:?} kB"
        );
    }

    /// A collapse asked for runs on a thread of its own; one asked for too soon after the last
    /// is deferred to the end of the interval, not dropped.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_collapse_asked_for_too_soon_is_deferred_not_dropped() {
        static C: Collapser = Collapser {
            wanted: AtomicBool::new(false),
            running: AtomicBool::new(false),
            last: Mutex::new(None),
        };
        // Where this kernel collapses nothing, there is nothing to see.
        let probe: Vec<u32> = (0..4u32 << 20).collect();
        collapse_now();
        if huge_kb_around(probe.as_ptr() as usize).is_none_or(|kb| kb == 0) {
            return;
        }
        let every = Duration::from_millis(300);
        C.request(every);
        let deadline = Instant::now() + Duration::from_secs(20);
        while C.last.lock().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        // Allocated after the first collapse started, asked for within its interval.
        let block: Vec<u32> = (0..4u32 << 20).collect();
        let at = block.as_ptr() as usize;
        C.request(every);
        while huge_kb_around(at).is_none_or(|kb| kb < 7 * 2048) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(huge_kb_around(at).is_some_and(|kb| kb >= 7 * 2048));
        assert!(block.iter().enumerate().all(|(i, v)| *v == i as u32));
        // With nothing more asked for, the thread ends.
        while C.running.load(Ordering::Acquire) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!C.running.load(Ordering::Acquire));
    }

    /// The huge pages, in KiB, of the mapping that holds address `at`.
    fn huge_kb_around(at: usize) -> Option<usize> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
        let mut inside = false;
        let mut huge_kb = None;
        for line in smaps.lines() {
            let range = line.split_once(' ').and_then(|(r, _)| r.split_once('-'));
            if let Some((s, e)) = range {
                if let (Ok(s), Ok(e)) = (usize::from_str_radix(s, 16), usize::from_str_radix(e, 16))
                {
                    inside = s <= at && at < e;
                    continue;
                }
            }
            if let Some(v) = line.strip_prefix("AnonHugePages:").filter(|_| inside) {
                huge_kb = v.trim().trim_end_matches("kB").trim().parse::<usize>().ok();
            }
        }
        huge_kb
    }
}

//! Issue 10: reloading a graph dump costs no more memory than the graph it restores.
//!
//! At a million points a restart used to hold about 1.1 GB for neighbour lists that take 0.4 GB
//! once loaded (every list collected first, then copied into the points), and the process kept
//! that size afterwards. This binary counts every heap byte (its own global allocator), so it
//! holds only this test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use quiver::index::{normalize, Graph, GraphMeta, Planning, SharedVector, BLOCK};
use quiver::model::{CollectionConfig, Metric};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn now() -> usize {
    CURRENT.load(Ordering::Relaxed)
}

#[test]
fn a_reloaded_graph_needs_no_more_memory_than_the_built_one() {
    let dim = 24u64;
    let n = 16 * BLOCK;
    let c = CollectionConfig::new(dim as usize, Metric::Cosine);
    let vectors: Vec<SharedVector> = (0..n)
        .map(|i| {
            let mut x: Vec<f32> = (0..dim)
                .map(|j| ((i * 131 + j * 7) as f32 * 0.0173).sin() + j as f32 * 0.05)
                .collect();
            normalize(&mut x);
            x.into()
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();

    let before = now();
    let built = Graph::new(&c, n as usize, 0, 0);
    for from in (0..n).step_by(BLOCK as usize) {
        let items: Vec<_> = (from..from + BLOCK)
            .map(|i| (i, Some(vectors[i as usize].clone())))
            .collect();
        built.insert_block(&items, from + BLOCK, Planning::Behind);
    }
    let built_bytes = now() - before;
    built.dump(dir.path(), &GraphMeta::new(1, n, 0, c)).unwrap();
    drop(built);

    let before = now();
    PEAK.store(before, Ordering::Relaxed);
    let (reloaded, meta) =
        Graph::load(dir.path(), &c, &|i| vectors.get(i as usize).cloned()).unwrap();
    let (held, peak) = (now() - before, PEAK.load(Ordering::Relaxed) - before);
    assert_eq!((meta.watermark, reloaded.len()), (n, n));
    // The reloaded lists are exactly as long as they need to be; the built ones grew by pushes.
    assert!(
        held <= built_bytes,
        "the reloaded graph holds {held} bytes, the built one {built_bytes}"
    );
    // The reload reads the lists straight into the points: nothing but read buffers on top.
    assert!(
        peak <= held + held / 5,
        "the reload peaked at {peak} bytes to end holding {held}"
    );
}

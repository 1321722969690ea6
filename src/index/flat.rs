//! A frozen, read-optimised copy of an hnsw_rs graph.
//!
//! hnsw_rs builds good graphs but searches them slowly: every visited point is an `Arc` behind a
//! lock, the visited set is a `HashMap`, and a filtered search gives up the early exit. Its graph
//! is only ever changed by the collection's single indexer thread, so between inserts that thread
//! copies it into this layout: vectors in one contiguous array indexed by internal id, layer-0
//! links in CSR form, upper layers per node, and a search in the style of hnswlib (generation-
//! stamped visited list reused per thread, filter applied to results while the walk keeps its
//! early exit). The copy covers ids below its `watermark`; the engine searches the rest exactly.
//!
//! The copy, like its graph, numbers its points densely in insertion order (each row holds its
//! point's internal id): internal ids are never reused, so arrays indexed by
//! them grew with every write ever made, and past 2^32 writes they would no longer fit a `u32`.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hnsw_rs::hnsw::Point;
use hnsw_rs::prelude::Distance;
#[cfg(test)]
use hnsw_rs::prelude::Hnsw;

use super::quant::{CodeDistance, Element, CODE_HEADER};
use super::Scored;
use crate::model::Metric;

/// The frozen graph over rows of `E` (the vectors, or their int8 codes).
#[derive(Clone)]
pub struct FlatGraph<E: Element = f32> {
    metric: Metric,
    watermark: u64,
    /// `rows[p]`: the vector of the graph's point `p`, shared with the collection's point table,
    /// and its internal id (ascending).
    rows: Vec<Row<E>>,
    /// Layer-0 neighbours, [`CHUNK`] points per chunk. A refresh replaces the chunks that hold a
    /// point whose list changed one at a time, so that it never holds a second copy of all
    /// links (at a million points the copy made beside the old one was the ingest's peak).
    chunks: Vec<Arc<Links>>,
    /// Upper-layer neighbours of the few nodes above layer 0; `upper[&p][l - 1]` is layer `l`.
    upper: HashMap<u32, Vec<Vec<u32>>>,
    /// The entry point: its point number, its level and its rank on that level (insertion
    /// order).
    entry: Option<(u32, usize, i32)>,
    points: usize,
    /// The walk's own form of the rows, when the walk reads int8 codes instead of `rows`
    /// ([`Codes`]); `rows` then only rescore.
    codes: Option<Codes>,
}

/// A point of the copy: its vector and its internal id, side by side, so that the walk, which
/// has just read the handle to score the point, finds the id the filter wants in the same
/// cache line.
#[derive(Clone)]
struct Row<E> {
    v: Arc<[E]>,
    iid: u64,
}

impl<E> AsRef<[E]> for Row<E> {
    fn as_ref(&self) -> &[E] {
        &self.v
    }
}

/// Points per chunk of links and of [`Codes`].
const CHUNK: usize = 4096;

/// The layer-0 links of the points of one chunk, in CSR form: those of the chunk's `i`-th are
/// `links[offsets[i]..offsets[i + 1]]`.
struct Links {
    offsets: Vec<u32>,
    links: Vec<u32>,
}

impl Links {
    #[inline(always)]
    fn of(&self, i: usize) -> &[u32] {
        &self.links[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// Points in the chunk.
    fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }
}

/// How long a refresh waits for the searches that still walk the copy before it copies the
/// copy instead of changing it in place.
const UNSHARE_WAIT: Duration = Duration::from_millis(100);

/// A copy taken out of service for a refresh: itself once the searches that walk it are done,
/// or a clone (sharing its chunks) if one runs on past [`UNSHARE_WAIT`].
pub fn unshared<E: Element>(mut copy: Arc<FlatGraph<E>>) -> FlatGraph<E> {
    let since = Instant::now();
    loop {
        match Arc::try_unwrap(copy) {
            Ok(copy) => return copy,
            Err(shared) if since.elapsed() >= UNSHARE_WAIT => return (*shared).clone(),
            Err(shared) => copy = shared,
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// The points a refresh reads from the graph (every point whose lists changed since the
/// copy's watermark, or all of them), their lists read before the copy is taken out of service.
/// Points are the graph's numbers (hnsw_rs' data ids), not internal ids.
pub struct Listed<'b, E: Element> {
    /// (point, level, rank), ascending, with the point.
    points: Vec<(u32, usize, i32, Arc<Point<'b, E>>)>,
    /// The layer-0 links of `points[j]`: `links[ends[j]..ends[j + 1]]`.
    ends: Vec<usize>,
    links: Vec<u32>,
    /// The upper lists of those of `points` above layer 0.
    upper: Vec<(u32, Vec<Vec<u32>>)>,
}

impl<'b, E: Element> Listed<'b, E> {
    /// Reads the lists of `points` numbered below `n`, in order. Must not run concurrently with
    /// inserts into their graph (the indexer calls it between inserts).
    pub fn read(points: impl IntoIterator<Item = Arc<Point<'b, E>>>, n: usize) -> Self {
        // Each point's id is read once: sorting by a key read through the pointer loaded two
        // points per comparison.
        let mut points: Vec<_> = points
            .into_iter()
            .map(|p| (p.get_origin_id(), p))
            .filter(|(p, _)| *p < n)
            .collect();
        points.sort_unstable_by_key(|(p, _)| *p);
        points.dedup_by_key(|(p, _)| *p);
        let mut listed = Listed {
            points: Vec::with_capacity(points.len()),
            ends: Vec::with_capacity(points.len() + 1),
            links: Vec::new(),
            upper: Vec::new(),
        };
        listed.ends.push(0);
        for (p, point) in points {
            // The lists hold their neighbours' ids: a point's lists are read without loading
            // its neighbours.
            let (level, rank) = (point.get_point_id().0 as usize, point.get_point_id().1);
            let mut ups: Vec<Vec<u32>> = Vec::new();
            point.for_each_layer_ids(|l, ids| {
                let ids = ids.filter(|&d| d < n).map(|d| d as u32);
                if l == 0 {
                    listed.links.extend(ids);
                } else if l <= level {
                    ups.push(ids.collect());
                }
            });
            listed.ends.push(listed.links.len());
            if level > 0 {
                listed.upper.push((p as u32, ups));
            }
            listed.points.push((p as u32, level, rank, point));
        }
        listed
    }
}

/// The int8 codes ([`super::encode`]) of a copy's rows, contiguous in chunks of [`CHUNK`] ids,
/// for an unquantised graph's walk: a code is a quarter of a vector and lies at a fixed place,
/// where a vector is reached through its `Arc` (two dependent loads, the first of which stalls
/// the prefetch). The walk ranks by code distance, and the caller rescores the best candidates
/// with the vectors, so answers are exact among them. A refresh encodes only new ids: complete
/// chunks are never rebuilt (and are shared with a copy's clone).
#[derive(Clone)]
struct Codes {
    /// Bytes per code: the row length plus [`CODE_HEADER`].
    stride: usize,
    chunks: Vec<Arc<[u8]>>,
}

impl Codes {
    fn new(dim: usize) -> Codes {
        Codes {
            stride: dim + CODE_HEADER,
            chunks: Vec::new(),
        }
    }

    /// Extends the codes of `rows[..from]` to all of `rows` (a point whose row is not `dim`
    /// long gets zeros).
    fn extend<E: Element, R: AsRef<[E]>>(&mut self, rows: &[R], dim: usize, from: usize) {
        let stride = self.stride;
        for c in from / CHUNK..rows.len().div_ceil(CHUNK) {
            let start = c * CHUNK;
            let points = &rows[start..rows.len().min(start + CHUNK)];
            let old = self.chunks.get(c);
            if old.is_some_and(|o| o.len() == points.len() * stride) {
                continue;
            }
            let mut out = vec![0u8; points.len() * stride];
            for (i, (row, code)) in points.iter().zip(out.chunks_exact_mut(stride)).enumerate() {
                match old {
                    Some(chunk) if start + i < from && chunk.len() >= (i + 1) * stride => {
                        code.copy_from_slice(&chunk[i * stride..(i + 1) * stride]);
                    }
                    _ if row.as_ref().len() == dim => E::code_into(row.as_ref(), code),
                    _ => {}
                }
            }
            match self.chunks.get_mut(c) {
                Some(chunk) => *chunk = out.into(),
                None => self.chunks.push(out.into()),
            }
        }
    }

    /// The code of point `p` (zeros for a point the copy has no row for).
    #[inline(always)]
    fn row(&self, p: u32) -> &[u8] {
        let i = p as usize;
        let at = (i % CHUNK) * self.stride;
        self.chunks
            .get(i / CHUNK)
            .and_then(|c| c.get(at..at + self.stride))
            .unwrap_or(&ZERO_CODE[..self.stride])
    }
}

/// The code of an id that a copy does not hold, at the largest stride.
static ZERO_CODE: [u8; crate::model::MAX_DIM + CODE_HEADER] =
    [0; crate::model::MAX_DIM + CODE_HEADER];

thread_local! {
    /// Per-thread visited marks: `marks[i] == generation` means visited in the current search.
    static VISITED: RefCell<(Vec<u32>, u32)> = const { RefCell::new((Vec::new(), 0)) };
}

impl<E: Element> FlatGraph<E> {
    /// A copy of no point; with `codes`, its walk reads int8 codes of the rows ([`Codes`]).
    pub fn empty(metric: Metric, dim: usize, codes: bool) -> FlatGraph<E> {
        FlatGraph {
            metric,
            watermark: 0,
            rows: Vec::new(),
            chunks: Vec::new(),
            upper: HashMap::new(),
            entry: None,
            points: 0,
            codes: codes.then(|| Codes::new(dim)),
        }
    }

    /// A whole copy of `hnsw` ([`FlatGraph::refresh`] of an empty copy) up to `watermark`,
    /// whose points are those numbered below `ids.len()`, for tests.
    #[cfg(test)]
    #[allow(clippy::too_many_arguments)]
    pub fn freeze<'b, D2: Distance<E> + Send + Sync>(
        hnsw: &Hnsw<'b, E, D2>,
        rows: Vec<Option<Arc<[E]>>>,
        ids: &[u64],
        metric: Metric,
        dim: usize,
        watermark: u64,
        codes: bool,
    ) -> FlatGraph<E> {
        let listed = Listed::read(hnsw.get_point_indexation(), ids.len());
        let mut copy = FlatGraph::empty(metric, dim, codes);
        copy.refresh(listed, rows, ids, dim, watermark);
        copy
    }

    /// Moves the copy to `watermark`: `ids` holds the internal ids of the graph's points from
    /// the copy's last point on (those below `watermark`), `listed` every point of the graph
    /// whose lists changed since the copy's watermark (all of them for an empty copy), `rows`
    /// the vectors of the new points as the caller has them (a point the caller lacks, such as
    /// a reloaded point the collection no longer has, takes its vector from the graph). Only the
    /// chunks of links that hold a listed point are rebuilt, each replaced before the next is
    /// built: the same copy as a whole one made at `watermark`, without a second copy of all
    /// links in memory.
    pub fn refresh(
        &mut self,
        listed: Listed<'_, E>,
        rows: Vec<Option<Arc<[E]>>>,
        ids: &[u64],
        dim: usize,
        watermark: u64,
    ) {
        if watermark <= self.watermark {
            return;
        }
        let from = self.rows.len();
        let n = from + ids.len();
        let empty: Arc<[E]> = Arc::from(Vec::new());
        let mut rows = rows.into_iter();
        self.rows.reserve(ids.len());
        self.rows.extend(ids.iter().map(|&iid| Row {
            v: rows.next().flatten().unwrap_or_else(|| empty.clone()),
            iid,
        }));
        for (p, level, rank, point) in &listed.points {
            let p = *p as usize;
            if p >= n {
                continue;
            }
            if p >= from {
                self.points += 1;
            }
            if self.rows[p].v.len() != dim {
                self.rows[p].v = Arc::from(point.get_v());
            }
            // hnsw_rs' entry point: the first point inserted on the top level.
            if self
                .entry
                .is_none_or(|(_, l, r)| *level > l || (*level == l && *rank < r))
            {
                self.entry = Some((p as u32, *level, *rank));
            }
        }
        self.upper.extend(listed.upper);
        let mut next = listed.points.iter().enumerate().peekable();
        for c in 0..n.div_ceil(CHUNK) {
            let start = c * CHUNK;
            let end = n.min(start + CHUNK);
            let old = self.chunks.get(c).map(|chunk| &**chunk);
            let changed = next.peek().is_some_and(|(_, p)| (p.0 as usize) < end);
            if !changed && old.is_some_and(|o| o.len() == end - start) {
                continue;
            }
            // The lists of the chunk's points: the graph's for a listed one, else the copy's.
            let lists: Vec<&[u32]> = (start..end)
                .map(|p| match next.next_if(|(_, l)| l.0 as usize == p) {
                    Some((j, _)) => &listed.links[listed.ends[j]..listed.ends[j + 1]],
                    None => match old {
                        Some(old) if p < from => old.of(p - start),
                        _ => &[],
                    },
                })
                .collect();
            let mut chunk = Links {
                offsets: Vec::with_capacity(lists.len() + 1),
                links: Vec::with_capacity(lists.iter().map(|l| l.len()).sum()),
            };
            for l in lists {
                chunk.offsets.push(chunk.links.len() as u32);
                chunk.links.extend_from_slice(l);
            }
            chunk.offsets.push(chunk.links.len() as u32);
            match self.chunks.get_mut(c) {
                Some(slot) => *slot = Arc::new(chunk),
                None => self.chunks.push(Arc::new(chunk)),
            }
        }
        if let Some(codes) = &mut self.codes {
            codes.extend(&self.rows, dim, from);
        }
        self.watermark = watermark;
    }

    /// True when the walk ranks by int8 codes: its distances are approximate, and the caller
    /// rescores more than `k` of its candidates.
    pub fn walks_codes(&self) -> bool {
        self.codes.is_some()
    }

    /// The layer-0 neighbours of point `p`.
    #[inline]
    fn neighbours(&self, p: u32) -> &[u32] {
        let i = p as usize;
        self.chunks[i / CHUNK].of(i % CHUNK)
    }

    /// The layer-0 neighbours of point `p`, as internal ids, for tests.
    #[cfg(test)]
    pub fn layer0(&self, p: u32) -> Vec<u64> {
        self.neighbours(p)
            .iter()
            .map(|&l| self.rows[l as usize].iid)
            .collect()
    }

    /// How many points of the copy have no vector of `dim` floats (must be none).
    #[cfg(test)]
    pub fn rows_missing(&self, dim: usize) -> usize {
        (0..self.rows.len())
            .filter(|&i| !self.neighbours(i as u32).is_empty() && self.rows[i].v.len() != dim)
            .count()
    }

    /// A digest of the links (every layer) and the entry point, in internal ids: equal digests,
    /// same graph. Every internal id below the copy's watermark counts, those that are not
    /// points with no links, so the digest is the one of the graph when internal ids were its
    /// points' numbers.
    #[cfg(test)]
    pub fn links_digest(&self) -> u64 {
        // FNV-1a over the links in id order: stable across runs and releases.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |x: u64| {
            for b in x.to_le_bytes() {
                h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
            }
        };
        let iid = |p: u32| self.rows[p as usize].iid;
        let mut points = self.rows.iter().enumerate().peekable();
        for i in 0..self.watermark {
            match points.next_if(|(_, row)| row.iid == i) {
                Some((p, _)) => {
                    let links = self.neighbours(p as u32);
                    eat(links.len() as u64);
                    links.iter().for_each(|&l| eat(iid(l)));
                }
                None => eat(0),
            }
        }
        let mut upper: Vec<_> = self.upper.iter().collect();
        upper.sort_by_key(|(p, _)| **p);
        for (p, layers) in upper {
            eat(iid(*p));
            for l in layers {
                eat(l.len() as u64);
                l.iter().for_each(|&x| eat(iid(x)));
            }
        }
        let (ep, top) = self
            .entry
            .map_or((u32::MAX as u64, 0), |(p, l, _)| (iid(p), l));
        eat(ep);
        eat(top as u64);
        h
    }

    /// Ids below this are covered.
    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    /// How many of its graph's points the copy has rows for (every point numbered below this).
    pub fn points_numbered(&self) -> usize {
        self.rows.len()
    }

    /// Points in the copy.
    pub fn len(&self) -> usize {
        self.points
    }

    /// True when the copy holds no point.
    pub fn is_empty(&self) -> bool {
        self.points == 0
    }

    #[inline]
    fn row(&self, p: u32) -> &[E] {
        &self.rows[p as usize].v
    }

    /// Asks the CPU to start loading a vector.
    #[inline(always)]
    fn prefetch(&self, p: u32) {
        let row = self.row(p);
        super::prefetch(row.as_ptr().cast(), std::mem::size_of_val(row));
    }

    /// Asks the CPU to start loading the links of point `p` (their first two cache lines).
    #[inline(always)]
    fn prefetch_links(&self, p: u32) {
        let i = p as usize;
        let chunk = &self.chunks[i / CHUNK];
        let at = chunk
            .links
            .as_ptr()
            .wrapping_add(chunk.offsets[i % CHUNK] as usize);
        super::prefetch(at.cast(), 128);
    }

    /// Smaller is closer; same order as the graph's distance.
    #[inline]
    fn dist(&self, q: &[E], p: u32) -> f32 {
        E::search_distance(self.metric, q, self.row(p))
    }

    /// The `k` nearest points whose internal id `keep` accepts, best first, as (internal id,
    /// distance in this graph's order); with codes ([`FlatGraph::walks_codes`]) the distance is
    /// the codes'.
    pub fn search(
        &self,
        q: &[E],
        k: usize,
        ef: usize,
        keep: Option<&dyn Fn(u64) -> bool>,
    ) -> Vec<(u64, f32)> {
        match &self.codes {
            Some(codes) => {
                let mut code = vec![0; codes.stride];
                E::code_into(q, &mut code);
                let d = CodeDistance(self.metric);
                self.walk(
                    k,
                    ef,
                    keep,
                    |p| d.eval(&code, codes.row(p)),
                    |p| super::prefetch(codes.row(p).as_ptr(), codes.stride),
                )
            }
            None => self.walk(k, ef, keep, |p| self.dist(q, p), |p| self.prefetch(p)),
        }
    }

    /// The search, over the distance `dist` to the query, `fetch` starting to load what it reads.
    #[inline(always)]
    fn walk(
        &self,
        k: usize,
        ef: usize,
        keep: Option<&dyn Fn(u64) -> bool>,
        dist: impl Fn(u32) -> f32,
        fetch: impl Fn(u32),
    ) -> Vec<(u64, f32)> {
        let Some((mut ep, top_level, _)) = self.entry else {
            return Vec::new();
        };
        let ef = ef.max(k);
        let mut d_ep = dist(ep);
        for level in (1..=top_level).rev() {
            loop {
                let mut changed = false;
                if let Some(nbs) = self.upper.get(&ep).and_then(|u| u.get(level - 1)) {
                    for &nb in nbs {
                        let d = dist(nb);
                        if d < d_ep {
                            d_ep = d;
                            ep = nb;
                            changed = true;
                        }
                    }
                }
                if !changed {
                    break;
                }
            }
        }
        let accepts = |p: u32| keep.is_none_or(|f| f(self.rows[p as usize].iid));
        VISITED.with(|cell| {
            let mut guard = cell.borrow_mut();
            let (marks, generation) = &mut *guard;
            let n = self.rows.len();
            if marks.len() < n {
                marks.resize(n, 0);
            }
            *generation = generation.wrapping_add(1);
            if *generation == 0 {
                marks.iter_mut().for_each(|m| *m = 0);
                *generation = 1;
            }
            let g = *generation;
            let mut candidates: BinaryHeap<Reverse<Scored<u32>>> =
                BinaryHeap::with_capacity(ef * 2);
            let mut top: BinaryHeap<Scored<u32>> = BinaryHeap::with_capacity(ef + 1);
            let mut bound = f32::INFINITY;
            let mut fresh: Vec<u32> = Vec::with_capacity(64);
            marks[ep as usize] = g;
            candidates.push(Reverse(Scored(d_ep, ep)));
            if accepts(ep) {
                top.push(Scored(d_ep, ep));
                bound = d_ep;
            }
            while let Some(Reverse(Scored(dc, c))) = candidates.pop() {
                if dc > bound && top.len() >= ef {
                    break;
                }
                // The next candidate's links load while this one's neighbours are scored.
                if let Some(Reverse(Scored(_, next))) = candidates.peek() {
                    self.prefetch_links(*next);
                }
                // Mark the unvisited neighbours first and prefetch their vectors, so that the
                // memory fetches overlap with the distance computations (as hnswlib does).
                fresh.clear();
                for &nb in self.neighbours(c) {
                    let m = &mut marks[nb as usize];
                    if *m != g {
                        *m = g;
                        fresh.push(nb);
                        fetch(nb);
                    }
                }
                for &nb in fresh.iter() {
                    let d = dist(nb);
                    if top.len() < ef || d < bound {
                        candidates.push(Reverse(Scored(d, nb)));
                        if accepts(nb) {
                            top.push(Scored(d, nb));
                            if top.len() > ef {
                                top.pop();
                            }
                            if let Some(t) = top.peek() {
                                bound = t.0;
                            }
                        }
                    }
                }
            }
            let mut out = top.into_sorted_vec();
            out.truncate(k);
            out.into_iter()
                .map(|Scored(d, p)| (self.rows[p as usize].iid, d))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::GraphDistance;

    #[test]
    fn frozen_search_finds_exact_neighbours_on_a_small_graph() {
        let dim = 8;
        let hnsw = Hnsw::new(16, 1000, 16, 100, GraphDistance(Metric::L2));
        let data: Vec<Vec<f32>> = (0..1000)
            .map(|i| {
                (0..dim)
                    .map(|d| (i as f32 * 0.37 + d as f32 * 1.3).sin() * (1.0 + i as f32 / 1000.0))
                    .collect()
            })
            .collect();
        for (i, v) in data.iter().enumerate() {
            hnsw.insert_slice((v, i));
        }
        let flat = FlatGraph::freeze(&hnsw, Vec::new(), &ids(1000), Metric::L2, dim, 1000, false);
        assert_eq!(flat.len(), 1000);
        let mut hits = 0;
        for (i, q) in data.iter().enumerate().step_by(50) {
            let r = flat.search(q, 1, 32, None);
            hits += usize::from(r[0].0 == i as u64);
        }
        assert!(hits >= 19, "{hits}/20 points found themselves");
        // A filter is applied to results.
        let r = flat.search(&data[10], 5, 64, Some(&|iid| iid % 2 == 1));
        assert_eq!(r.len(), 5);
        assert!(r.iter().all(|(i, _)| i % 2 == 1));
        // A watermark below the graph's size leaves later ids out.
        let part = FlatGraph::freeze(&hnsw, Vec::new(), &ids(500), Metric::L2, dim, 500, false);
        assert!(part
            .search(&data[900], 10, 64, None)
            .iter()
            .all(|(i, _)| *i < 500));
    }

    /// The ids of a graph whose points' numbers are their internal ids.
    fn ids(n: u64) -> Vec<u64> {
        (0..n).collect()
    }

    fn rows(n: usize, dim: usize) -> Vec<Arc<[f32]>> {
        (0..n)
            .map(|i| {
                let v: Vec<f32> = (0..dim)
                    .map(|d| (i as f32 * 0.37 + d as f32 * 1.3).sin())
                    .collect();
                Arc::from(v)
            })
            .collect()
    }

    #[test]
    fn codes_extended_from_a_previous_copy_equal_codes_built_whole() {
        let dim = 6;
        let mut all = rows(2 * CHUNK + 100, dim);
        // A point with no vector gets zeros, and a later copy still has none for it.
        all[7] = Arc::from(Vec::new());
        let build = |rows: &[Arc<[f32]>]| {
            let mut c = Codes::new(dim);
            c.extend(rows, dim, 0);
            c
        };
        let whole = build(&all);
        for wm in [0, 5, CHUNK, CHUNK + 3, 2 * CHUNK + 1] {
            let prev = build(&all[..wm]);
            let mut next = prev.clone();
            next.extend(&all, dim, wm);
            assert_eq!(next.chunks.len(), whole.chunks.len());
            for (a, b) in next.chunks.iter().zip(&whole.chunks) {
                assert_eq!(a[..], b[..], "wm {wm}");
            }
            // Complete chunks below the watermark are kept, not rebuilt.
            for c in 0..wm / CHUNK {
                assert!(Arc::ptr_eq(&next.chunks[c], &prev.chunks[c]), "wm {wm}");
            }
        }
        assert!(whole.row(7).iter().all(|b| *b == 0));
        assert_eq!(whole.row(8), &crate::index::encode(&all[8])[..]);
        let last = (2 * CHUNK + 99) as u32;
        assert_eq!(
            whole.row(last),
            &crate::index::encode(&all[last as usize])[..]
        );
    }

    #[test]
    fn a_walk_over_codes_ranks_candidates_that_rescore_to_the_exact_answer() {
        let dim = 16;
        let hnsw = Hnsw::new(16, 2000, 16, 100, GraphDistance(Metric::Cosine));
        let data: Vec<Arc<[f32]>> = rows(2000, dim)
            .into_iter()
            .map(|v| {
                let mut v = v.to_vec();
                crate::index::normalize(&mut v);
                Arc::from(v)
            })
            .collect();
        for (i, v) in data.iter().enumerate() {
            hnsw.insert_slice((v, i));
        }
        let shared: Vec<Option<Arc<[f32]>>> = data.iter().cloned().map(Some).collect();
        let flat = FlatGraph::freeze(&hnsw, shared, &ids(2000), Metric::Cosine, dim, 2000, true);
        assert!(flat.walks_codes());
        let k = 10;
        let mut exact_hits = 0;
        for q in data.iter().step_by(97) {
            let found = flat.search(q, crate::index::rescored(k, 64), 64, None);
            assert_eq!(found.len(), 40);
            let mut rescored: Vec<Scored<u64>> = found
                .iter()
                .map(|(i, _)| Scored(-crate::index::dot(q, &data[*i as usize]), *i))
                .collect();
            rescored.sort_unstable();
            let mut truth: Vec<Scored<u64>> = (0..data.len())
                .map(|i| Scored(-crate::index::dot(q, &data[i]), i as u64))
                .collect();
            truth.sort_unstable();
            let got: Vec<u64> = rescored.iter().take(k).map(|s| s.1).collect();
            let want: Vec<u64> = truth.iter().take(k).map(|s| s.1).collect();
            exact_hits += usize::from(got == want);
        }
        assert!(exact_hits >= 19, "{exact_hits}/21 exact top-10s");
    }
}

//! A frozen, read-optimised copy of an hnsw_rs graph.
//!
//! hnsw_rs builds good graphs but searches them slowly: every visited point is an `Arc` behind a
//! lock, the visited set is a `HashMap`, and a filtered search gives up the early exit. Its graph
//! is only ever changed by the collection's single indexer thread, so between inserts that thread
//! copies it into this layout: vectors in one contiguous array indexed by internal id, layer-0
//! links in CSR form, upper layers per node, and a search in the style of hnswlib (generation-
//! stamped visited list reused per thread, filter applied to results while the walk keeps its
//! early exit). The copy covers ids below its `watermark`; the engine searches the rest exactly.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use hnsw_rs::hnsw::Point;
use hnsw_rs::prelude::{Distance, Hnsw};

use super::quant::{CodeDistance, Element, CODE_HEADER};
use super::Scored;
use crate::model::Metric;

/// The frozen graph over rows of `E` (the vectors, or their int8 codes).
pub struct FlatGraph<E: Element = f32> {
    metric: Metric,
    watermark: u64,
    /// `rows[iid]`: the vector of internal id `iid`, shared with the collection's point table
    /// (an empty slice for ids absent from the graph, which no link leads to).
    rows: Vec<Arc<[E]>>,
    /// Layer-0 neighbours of `iid`: `links[offsets[iid]..offsets[iid + 1]]`. `usize`, since the
    /// link count passes u32 at about 17M points with m = 128 (review L6).
    offsets: Vec<usize>,
    links: Vec<u32>,
    /// Upper-layer neighbours of the few nodes above layer 0; `upper[&iid][l - 1]` is layer `l`.
    upper: HashMap<u32, Vec<Vec<u32>>>,
    /// The entry point: its id, its level and its rank on that level (insertion order).
    entry: Option<(u32, usize, i32)>,
    points: usize,
    /// The walk's own form of the rows, when the walk reads int8 codes instead of `rows`
    /// ([`Codes`]); `rows` then only rescore.
    codes: Option<Codes>,
}

/// Ids per chunk of [`Codes`].
const CODE_CHUNK: usize = 4096;

/// The int8 codes ([`super::encode`]) of a copy's rows, contiguous in chunks of [`CODE_CHUNK`]
/// ids, for an unquantised graph's walk: a code is a quarter of a vector and lies at a fixed
/// place, where a vector is reached through its `Arc` (two dependent loads, the first of which
/// stalls the prefetch). The walk ranks by code distance, and the caller rescores the best
/// candidates with the vectors, so answers are exact among them. A chunk wholly below the
/// previous copy's watermark is shared with that copy: a refresh encodes only new ids.
struct Codes {
    /// Bytes per code: the row length plus [`CODE_HEADER`].
    stride: usize,
    chunks: Vec<Arc<[u8]>>,
}

impl Codes {
    /// The codes of `rows` (an id whose row is not `dim` long gets zeros: no link leads to it),
    /// taking from `prev` (the codes of the same ids below `prev_wm`) what it holds.
    fn build<E: Element>(rows: &[Arc<[E]>], dim: usize, prev: Option<(&Codes, usize)>) -> Codes {
        let stride = dim + CODE_HEADER;
        let mut chunks = Vec::with_capacity(rows.len().div_ceil(CODE_CHUNK));
        for (c, ids) in rows.chunks(CODE_CHUNK).enumerate() {
            let start = c * CODE_CHUNK;
            let old = prev.and_then(|(p, wm)| p.chunks.get(c).map(|chunk| (chunk, wm)));
            if let Some((chunk, wm)) = old {
                if start + ids.len() <= wm && chunk.len() == ids.len() * stride {
                    chunks.push(chunk.clone());
                    continue;
                }
            }
            let mut out = vec![0u8; ids.len() * stride];
            for (i, (row, code)) in ids.iter().zip(out.chunks_exact_mut(stride)).enumerate() {
                match old {
                    Some((chunk, wm)) if start + i < wm && chunk.len() >= (i + 1) * stride => {
                        code.copy_from_slice(&chunk[i * stride..(i + 1) * stride]);
                    }
                    _ if row.len() == dim => E::code_into(row, code),
                    _ => {}
                }
            }
            chunks.push(out.into());
        }
        Codes { stride, chunks }
    }

    #[inline(always)]
    fn row(&self, iid: u32) -> &[u8] {
        let i = iid as usize;
        let at = (i % CODE_CHUNK) * self.stride;
        &self.chunks[i / CODE_CHUNK][at..at + self.stride]
    }
}

thread_local! {
    /// Per-thread visited marks: `marks[i] == generation` means visited in the current search.
    static VISITED: RefCell<(Vec<u32>, u32)> = const { RefCell::new((Vec::new(), 0)) };
}

impl<E: Element> FlatGraph<E> {
    /// Copies the links of `hnsw`, which holds every inserted id below `watermark`; `shared[iid]`
    /// is the vector of `iid` when the caller has it (else the point's own data is copied). With
    /// `prev`, a copy of the same graph at an earlier watermark, only the points in `touched`
    /// (every point whose lists changed since `prev`, as `Hnsw::link_block` reports them) are
    /// read from `hnsw` and the rest is copied from `prev`: at a million points a whole copy read
    /// every point's lists, every 4,096 inserts. With `codes`, the walk reads int8 codes of the
    /// rows ([`Codes`]). Must not run concurrently with inserts into `hnsw` (the indexer calls
    /// it between inserts).
    #[allow(clippy::too_many_arguments)]
    pub fn freeze<'b, D2: Distance<E> + Send + Sync>(
        hnsw: &Hnsw<'b, E, D2>,
        mut shared: Vec<Option<Arc<[E]>>>,
        metric: Metric,
        dim: usize,
        watermark: u64,
        prev: Option<&FlatGraph<E>>,
        touched: Vec<Arc<Point<'b, E>>>,
        codes: bool,
    ) -> FlatGraph<E> {
        let n = watermark as usize;
        let empty: Arc<[E]> = Arc::from(Vec::new());
        shared.resize(n, None);
        let prev = prev.filter(|p| p.watermark <= watermark);
        // The points to read, in id order, so that the links are written in place. The lists
        // hold their neighbours' ids: a point's lists are read without loading its neighbours.
        // Each point's id is read once: sorting by a key read through the pointer loaded two
        // points per comparison.
        let listed: Vec<_> = match prev {
            Some(_) => touched,
            None => hnsw.get_point_indexation().into_iter().collect(),
        };
        let mut points: Vec<(usize, Arc<Point<'b, E>>)> = listed
            .into_iter()
            .map(|p| (p.get_origin_id(), p))
            .filter(|(iid, _)| *iid < n)
            .collect();
        points.sort_unstable_by_key(|(iid, _)| *iid);
        points.dedup_by_key(|(iid, _)| *iid);
        let prev_wm = prev.map_or(0, |p| p.watermark as usize);
        let mut offsets = Vec::with_capacity(n + 1);
        let mut links: Vec<u32> = Vec::with_capacity(prev.map_or(0, |p| p.links_hint(watermark)));
        let mut upper = prev.map_or_else(HashMap::new, |p| p.upper.clone());
        // hnsw_rs' entry point: the first point inserted on the top level.
        let mut entry = prev.and_then(|p| p.entry);
        let mut count = prev.map_or(0, |p| p.points);
        let mut next = points.iter().peekable();
        shared.truncate(n);
        for (iid, row) in shared.iter_mut().enumerate() {
            offsets.push(links.len());
            let Some((_, point)) = next.next_if(|(id, _)| *id == iid) else {
                if let Some(p) = prev.filter(|_| iid < prev_wm) {
                    links.extend_from_slice(p.neighbours(iid as u32));
                    // A vector the caller lacks (a reloaded point the collection no longer has)
                    // was copied from the graph into the previous copy: keep it.
                    if row.as_ref().is_none_or(|v| v.len() != dim) && p.rows[iid].len() == dim {
                        *row = Some(p.rows[iid].clone());
                    }
                }
                continue;
            };
            if iid >= prev_wm {
                count += 1;
            }
            if row.as_ref().is_none_or(|v| v.len() != dim) {
                *row = Some(Arc::from(point.get_v()));
            }
            let (level, rank) = (point.get_point_id().0 as usize, point.get_point_id().1);
            let mut ups: Vec<Vec<u32>> = Vec::new();
            point.for_each_layer_ids(|l, ids| {
                let ids = ids.filter(|&d| d < n).map(|d| d as u32);
                if l == 0 {
                    links.extend(ids);
                } else if l <= level {
                    ups.push(ids.collect());
                }
            });
            if level > 0 {
                upper.insert(iid as u32, ups);
            }
            if entry.is_none_or(|(_, l, r)| level > l || (level == l && rank < r)) {
                entry = Some((iid as u32, level, rank));
            }
        }
        offsets.push(links.len());
        let rows: Vec<Arc<[E]>> = shared
            .into_iter()
            .take(n)
            .map(|v| v.unwrap_or_else(|| empty.clone()))
            .collect();
        let codes = codes.then(|| {
            let old = prev.and_then(|p| p.codes.as_ref().map(|c| (c, prev_wm)));
            Codes::build(&rows, dim, old)
        });
        FlatGraph {
            metric,
            watermark,
            rows,
            offsets,
            links,
            upper,
            entry,
            points: count,
            codes,
        }
    }

    /// True when the walk ranks by int8 codes: its distances are approximate, and the caller
    /// rescores more than `k` of its candidates.
    pub fn walks_codes(&self) -> bool {
        self.codes.is_some()
    }

    /// The layer-0 neighbours of `iid`.
    #[inline]
    fn neighbours(&self, iid: u32) -> &[u32] {
        let i = iid as usize;
        &self.links[self.offsets[i]..self.offsets[i + 1]]
    }

    /// The layer-0 neighbours of `iid`, for tests.
    #[cfg(test)]
    pub fn layer0(&self, iid: u32) -> Vec<u32> {
        self.neighbours(iid).to_vec()
    }

    /// How many points of the copy have no vector of `dim` floats (must be none).
    #[cfg(test)]
    pub fn rows_missing(&self, dim: usize) -> usize {
        (0..self.rows.len())
            .filter(|&i| self.offsets[i + 1] > self.offsets[i] && self.rows[i].len() != dim)
            .count()
    }

    /// A digest of the links (every layer) and the entry point: equal digests, same graph.
    #[cfg(test)]
    pub fn links_digest(&self) -> u64 {
        // FNV-1a over the links in id order: stable across runs and releases.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |x: u64| {
            for b in x.to_le_bytes() {
                h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
            }
        };
        for w in self.offsets.windows(2) {
            eat(w[1] as u64 - w[0] as u64);
            self.links[w[0]..w[1]].iter().for_each(|&l| eat(l as u64));
        }
        let mut upper: Vec<_> = self.upper.iter().collect();
        upper.sort_by_key(|(iid, _)| **iid);
        for (iid, layers) in upper {
            eat(*iid as u64);
            for l in layers {
                eat(l.len() as u64);
                l.iter().for_each(|&x| eat(x as u64));
            }
        }
        let (ep, top, _) = self.entry.unwrap_or((u32::MAX, 0, 0));
        eat(ep as u64);
        eat(top as u64);
        h
    }

    /// Room for the links of a copy up to `watermark`, from this copy's links per point: the
    /// next copy allocates its links once instead of growing them by doubling.
    pub fn links_hint(&self, watermark: u64) -> usize {
        let per_point = self.links.len() / self.points.max(1) + 1;
        self.links.len() + watermark.saturating_sub(self.watermark) as usize * per_point
    }

    /// Ids below this are covered.
    pub fn watermark(&self) -> u64 {
        self.watermark
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
    fn row(&self, iid: u32) -> &[E] {
        &self.rows[iid as usize]
    }

    /// Asks the CPU to start loading a vector.
    #[inline(always)]
    fn prefetch(&self, iid: u32) {
        let row = self.row(iid);
        super::prefetch(row.as_ptr().cast(), std::mem::size_of_val(row));
    }

    /// Asks the CPU to start loading the links of `iid` (their first two cache lines).
    #[inline(always)]
    fn prefetch_links(&self, iid: u32) {
        let at = self.links.as_ptr().wrapping_add(self.offsets[iid as usize]);
        super::prefetch(at.cast(), 128);
    }

    /// Smaller is closer; same order as the graph's distance.
    #[inline]
    fn dist(&self, q: &[E], iid: u32) -> f32 {
        E::search_distance(self.metric, q, self.row(iid))
    }

    /// The `k` nearest accepted ids, best first, as (iid, distance in this graph's order); with
    /// codes ([`FlatGraph::walks_codes`]) the distance is the codes'.
    pub fn search(
        &self,
        q: &[E],
        k: usize,
        ef: usize,
        keep: Option<&dyn Fn(u32) -> bool>,
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
                    |iid| d.eval(&code, codes.row(iid)),
                    |iid| super::prefetch(codes.row(iid).as_ptr(), codes.stride),
                )
            }
            None => self.walk(
                k,
                ef,
                keep,
                |iid| self.dist(q, iid),
                |iid| self.prefetch(iid),
            ),
        }
    }

    /// The search, over the distance `dist` to the query, `fetch` starting to load what it reads.
    #[inline(always)]
    fn walk(
        &self,
        k: usize,
        ef: usize,
        keep: Option<&dyn Fn(u32) -> bool>,
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
        let accepts = |iid: u32| keep.is_none_or(|f| f(iid));
        VISITED.with(|cell| {
            let mut guard = cell.borrow_mut();
            let (marks, generation) = &mut *guard;
            let n = self.offsets.len() - 1;
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
            out.into_iter().map(|Scored(d, i)| (i as u64, d)).collect()
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
        let flat = FlatGraph::freeze(
            &hnsw,
            Vec::new(),
            Metric::L2,
            dim,
            1000,
            None,
            Vec::new(),
            false,
        );
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
        let part = FlatGraph::freeze(
            &hnsw,
            Vec::new(),
            Metric::L2,
            dim,
            500,
            None,
            Vec::new(),
            false,
        );
        assert!(part
            .search(&data[900], 10, 64, None)
            .iter()
            .all(|(i, _)| *i < 500));
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
    fn codes_built_on_a_previous_copy_equal_codes_built_whole() {
        let dim = 6;
        let mut all = rows(2 * CODE_CHUNK + 100, dim);
        // An id with no vector gets zeros, and a later copy still has none for it.
        all[7] = Arc::from(Vec::new());
        let whole = Codes::build(&all, dim, None);
        for wm in [0, 5, CODE_CHUNK, CODE_CHUNK + 3, 2 * CODE_CHUNK + 1] {
            let prev = Codes::build(&all[..wm], dim, None);
            let next = Codes::build(&all, dim, Some((&prev, wm)));
            assert_eq!(next.chunks.len(), whole.chunks.len());
            for (a, b) in next.chunks.iter().zip(&whole.chunks) {
                assert_eq!(a[..], b[..], "wm {wm}");
            }
            // Complete chunks below the watermark are shared, not copied.
            for c in 0..wm / CODE_CHUNK {
                assert!(Arc::ptr_eq(&next.chunks[c], &prev.chunks[c]), "wm {wm}");
            }
        }
        assert!(whole.row(7).iter().all(|b| *b == 0));
        assert_eq!(whole.row(8), &crate::index::encode(&all[8])[..]);
        let last = (2 * CODE_CHUNK + 99) as u32;
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
        let flat = FlatGraph::freeze(
            &hnsw,
            shared,
            Metric::Cosine,
            dim,
            2000,
            None,
            Vec::new(),
            true,
        );
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

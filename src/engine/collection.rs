//! One collection: its points in memory, its HNSW graph and the indexer thread that feeds it.
//!
//! Invariants (see `engine` for the overview):
//! - Internal ids (`iid`) are assigned by `apply` in log order, densely, and never reused.
//! - The indexer inserts every iid into the graph in increasing order, including points deleted
//!   before their turn (their vectors are kept until the next rebuild), so two nodes that applied
//!   the same log build the same graph. Ids at or above the graph's watermark are the "tail" and are
//!   searched exactly, which makes a write searchable as soon as it is applied.
//! - A rebuild is decided inside `apply` (deterministically, when tombstones pass a ratio of the
//!   epoch's points, or on `Command::Compact`): the new graph gets the live points of that moment
//!   plus every later iid. It is built on its own thread while the old graph keeps serving, then
//!   swapped in. One build runs at a time and is never abandoned for a newer epoch: an epoch
//!   decided meanwhile waits (replacing any that waited before it) and is built next. Which
//!   intermediate epochs a node builds depends on its speed, but each built graph is a function
//!   of the log, and a settled node serves the last epoch's graph, the same everywhere.

use std::collections::{BinaryHeap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};
use serde_json::Value;

use super::payload_index::PayloadIndex;
use super::vectors::VectorFile;
use crate::filter::Filter;
use crate::index::{
    badness, encode, prefetch, rescored, score, AnyFlat, AnyGraph, CodeDistance, GraphMeta,
    Planner, Planning, Scored, Stored, BLOCK,
};
use crate::model::{
    ApplyError, CollectionConfig, CollectionInfo, Hit, PointId, PointRecord, PointWrite,
};
use crate::priority::lower_priority;
use crate::store::{CollectionMeta, StoredPoint, WriteBatch};
use hnsw_rs::prelude::Distance;

/// Refresh a graph's frozen search copy after this many inserts (and whenever the indexer idles).
const FREEZE_EVERY: u64 = 4_096;
/// Search the frozen copy (plus an exact scan of what it lacks) while it trails by at most this.
const FLAT_MAX_LAG: u64 = 8_192;

/// Tuning shared by all collections.
#[derive(Clone, Debug)]
pub struct CollectionOptions {
    /// Where graph dumps live (one folder per collection id).
    pub graph_dir: PathBuf,
    /// Rebuild when tombstones exceed this fraction of the graph's points.
    pub rebuild_ratio: f64,
    /// ... and the graph holds at least this many points.
    pub rebuild_min_points: u64,
    /// Dump the graph once this many ids were inserted since the last dump and the indexer is idle.
    pub dump_after_inserts: u64,
    /// Collections with at most this many live points are always searched exactly.
    pub exact_below: usize,
    /// Where quantised collections keep their full vectors (one file per collection id).
    pub vector_dir: PathBuf,
}

/// A point held in memory. A tombstone keeps `vector` (the graph may still need it) but no id.
struct Slot {
    ext: Option<PointId>,
    /// The vector, or in a quantised collection its code (the vector is in [`VectorFile`]).
    vector: Option<Stored>,
    /// The payload as the log carries it (compact JSON text), parsed only when read: a parsed
    /// `Value` costs at least a map node (about 600 bytes) per point, the text its own length
    /// (issue 10). Filters that the payload index narrows parse only its candidates.
    payload: Option<Arc<str>>,
}

/// Slots per chunk of the point table ([`Slots`]).
const SLOT_CHUNK: usize = 1024;

/// What a slot of a released chunk holds: a dead point.
static DEAD: Slot = Slot {
    ext: None,
    vector: None,
    payload: None,
};

/// The point table, by internal id, in chunks of [`SLOT_CHUNK`] slots. Ids are never reused, so
/// a table indexed by them grows with every write (a slot is 64 bytes: 7.7 MB after two minutes
/// of churn at 1,500 points/s, whatever the live points). A chunk whose points are all dead and
/// whose vectors no graph needs any more is released ([`Slots::release_dead`]), so that the
/// table follows the live points rather than the writes (issue 10).
#[derive(Default)]
struct Slots {
    chunks: Vec<Option<Vec<Slot>>>,
    len: usize,
}

impl Slots {
    fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, slot: Slot) {
        if self.len.is_multiple_of(SLOT_CHUNK) {
            self.chunks.push(Some(Vec::with_capacity(SLOT_CHUNK)));
        }
        if let Some(Some(chunk)) = self.chunks.last_mut() {
            chunk.push(slot);
        }
        self.len += 1;
    }

    #[inline]
    fn get(&self, iid: usize) -> Option<&Slot> {
        if iid >= self.len {
            return None;
        }
        Some(
            self.chunks[iid / SLOT_CHUNK]
                .as_ref()
                .map_or(&DEAD, |c| &c[iid % SLOT_CHUNK]),
        )
    }

    /// The slot of `iid`, unless it is out of range or its chunk was released (a dead point).
    fn get_mut(&mut self, iid: usize) -> Option<&mut Slot> {
        self.chunks
            .get_mut(iid / SLOT_CHUNK)?
            .as_mut()?
            .get_mut(iid % SLOT_CHUNK)
    }

    /// Every slot of the chunks still held, with its id, in id order (a released chunk held
    /// dead points only).
    fn iter(&self) -> impl Iterator<Item = (usize, &Slot)> {
        self.chunks.iter().enumerate().flat_map(|(c, chunk)| {
            chunk
                .iter()
                .flatten()
                .enumerate()
                .map(move |(i, s)| (c * SLOT_CHUNK + i, s))
        })
    }

    /// Drops the vectors of the dead points below `since` (the graph that serves from now on does
    /// not hold them), then releases the complete chunks below it that hold no live point.
    /// Returns the ids of the chunks it released.
    fn release_dead(&mut self, since: usize) -> Vec<std::ops::Range<u64>> {
        let mut released = Vec::new();
        let full = (since / SLOT_CHUNK).min(self.len / SLOT_CHUNK);
        for (c, chunk) in self.chunks.iter_mut().enumerate() {
            let Some(slots) = chunk else { continue };
            let below = slots.len().min(since.saturating_sub(c * SLOT_CHUNK));
            if below == 0 {
                break;
            }
            for slot in &mut slots[..below] {
                if slot.ext.is_none() {
                    slot.vector = None;
                }
            }
            if c < full && slots.iter().all(|s| s.ext.is_none()) {
                *chunk = None;
                let start = (c * SLOT_CHUNK) as u64;
                released.push(start..start + SLOT_CHUNK as u64);
            }
        }
        released
    }
}

impl std::ops::Index<usize> for Slots {
    type Output = Slot;

    #[inline]
    fn index(&self, iid: usize) -> &Slot {
        match self.get(iid) {
            Some(slot) => slot,
            None => panic!("slot {iid} out of range ({} slots)", self.len),
        }
    }
}

/// A stored payload's value (the text was validated when it was applied).
fn parsed(text: &str) -> Option<Value> {
    serde_json::from_str(text).ok()
}

struct State {
    slots: Slots,
    /// Which slots hold a live point, as [`Slot::ext`] says.
    live_bits: LiveBits,
    by_ext: HashMap<PointId, u64>,
    /// Which live points hold which payload values (maintained in apply, so the same everywhere).
    payloads: PayloadIndex,
    live: usize,
    epoch_since: u64,
    epoch_total: u64,
    /// Moves on every change to the points (writes, deletes, a finished rebuild): with the
    /// graph's state it says which answers a search can give ([`ViewTag`]).
    version: u64,
}

/// One bit per internal id, set while its slot holds a live point (`ext` is `Some`). The graph
/// walk tests every candidate it keeps; a slot is about 70 bytes (3.6 MB of slots at 50k points),
/// so testing the slot itself missed the cache: about 5 % of a replica's CPU under search load.
#[derive(Default)]
struct LiveBits(Vec<u64>);

impl LiveBits {
    fn of(slots: &Slots) -> LiveBits {
        let mut bits = LiveBits(vec![0; slots.len().div_ceil(64)]);
        for (iid, s) in slots.iter() {
            bits.set(iid, s.ext.is_some());
        }
        bits
    }

    #[inline]
    fn get(&self, iid: usize) -> bool {
        self.0
            .get(iid / 64)
            .is_some_and(|w| (w >> (iid % 64)) & 1 == 1)
    }

    fn set(&mut self, iid: usize, live: bool) {
        let word = iid / 64;
        if self.0.len() <= word {
            self.0.resize(word + 1, 0);
        }
        let bit = 1u64 << (iid % 64);
        if live {
            self.0[word] |= bit;
        } else {
            self.0[word] &= !bit;
        }
    }
}

/// What a search's answer is a function of: the points (`version`), which graph (`graph`, unique
/// in the process), how far it and its frozen copy reach, and whether it was empty. Two searches
/// of the same request under equal tags give the same answer, so a cached answer is served only
/// while the tag it was computed under is current (issue 11).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViewTag {
    version: u64,
    graph: u64,
    watermark: u64,
    flat: u64,
    empty: bool,
}

/// The graph state one search reads, once: re-reading the watermark or the frozen copy midway
/// could mix two states.
struct View {
    watermark: u64,
    /// The frozen copy, when it is close enough to the graph to be searched.
    flat: Option<AnyFlat>,
    empty: bool,
}

impl View {
    fn of(graph: &AnyGraph) -> View {
        let watermark = graph.watermark();
        View {
            watermark,
            flat: graph
                .flat()
                .filter(|f| watermark.saturating_sub(f.watermark()) <= FLAT_MAX_LAG),
            empty: graph.is_empty(),
        }
    }

    fn tag(&self, st: &State, graph: &AnyGraph) -> ViewTag {
        ViewTag {
            version: st.version,
            graph: graph.serial(),
            watermark: self.watermark,
            flat: self.flat.as_ref().map_or(u64::MAX, |f| f.watermark()),
            empty: self.empty,
        }
    }
}

struct RebuildJob {
    /// [`Control::generation`] when the build started.
    generation: u64,
    base: Vec<(u64, Stored)>,
    since: u64,
}

#[derive(Default)]
struct Control {
    stop: bool,
    /// Moves when the graph is reset after a failure: a build started before belongs to a graph
    /// that is gone and is dropped.
    generation: u64,
    /// The newest epoch decided and not yet being built.
    job: Option<RebuildJob>,
    /// A build in flight.
    building: bool,
    /// A finished build, with the generation it started under, for the indexer to swap in.
    built: Option<(u64, AnyGraph)>,
    /// Some epoch is decided and not yet swapped in.
    rebuilding: bool,
    /// With `stop`: exit without the final dump (the collection is being destroyed).
    discard: bool,
    /// Dump the graph once idle, changed or not (see [`Collection::dump_when_idle`]).
    redump: bool,
}

struct Shared {
    id: u64,
    name: String,
    config: CollectionConfig,
    opts: CollectionOptions,
    state: RwLock<State>,
    graph: RwLock<Arc<AnyGraph>>,
    /// The full vectors of a quantised collection.
    full: Option<VectorFile>,
    next_iid: AtomicU64,
    ctl: Mutex<Control>,
    wake: Condvar,
    progress: Condvar,
    cancel: AtomicBool,
    /// Held while the graph dump folder is written, read (snapshots copy it) or removed; true once
    /// the collection was destroyed (its folder is gone, and the id may be reused by an install).
    dump_lock: Mutex<bool>,
    /// Why the indexer last failed, until the graph rebuilt from the store has caught up.
    failure: Mutex<Option<String>>,
    /// Test hook: this many inserts in a row panic (see [`Collection::inject_indexer_faults`]).
    faults: AtomicU64,
    /// Indexer and rebuild failures since the collection was opened.
    failures: AtomicU64,
    /// Rebuilt graphs swapped in since the collection was opened.
    rebuilds: AtomicU64,
}

/// A collection. Dropping it does not stop its indexer: call [`Collection::close`].
pub struct Collection {
    shared: Arc<Shared>,
    indexer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// A live point as a snapshot sees it: iid, id, and shared handles to its vector (or code: see
/// [`Collection::vector`]) and payload.
pub type SharedPoint = (u64, PointId, Stored, Option<Arc<str>>);

/// A validated search, ready to run.
#[derive(Clone, Debug)]
pub struct SearchParams {
    /// Query (normalised for cosine).
    pub vector: Vec<f32>,
    /// Hits wanted.
    pub k: usize,
    /// Search breadth (≥ k).
    pub ef: usize,
    /// Payload filter.
    pub filter: Option<Filter>,
    /// Drop hits worse than this.
    pub score_threshold: Option<f32>,
    /// Return payloads.
    pub with_payload: bool,
    /// Return vectors.
    pub with_vector: bool,
    /// Brute force.
    pub exact: bool,
    /// `ef` is the configured default (the request gave none): grow it with the collection's
    /// size ([`sized_ef`]).
    pub sized_ef: bool,
}

impl SearchParams {
    /// The breadth the walk uses in a collection of `live` points: `ef`, grown with the
    /// collection when it is the default ([`sized_ef`]), and at least `k`.
    fn breadth(&self, live: usize) -> usize {
        if self.sized_ef {
            sized_ef(self.ef, live)
        } else {
            self.ef
        }
        .max(self.k)
    }

    /// A plain approximate search for the `k` nearest to `vector` at breadth `ef`: no filter,
    /// threshold, payloads or vectors.
    pub fn nearest(vector: Vec<f32>, k: usize, ef: usize) -> SearchParams {
        SearchParams {
            vector,
            k,
            ef,
            filter: None,
            score_threshold: None,
            with_payload: false,
            with_vector: false,
            exact: false,
            sized_ef: false,
        }
    }
}

/// Keeps the k best candidates seen.
struct TopK {
    k: usize,
    heap: BinaryHeap<Scored<u64>>,
}
impl TopK {
    fn new(k: usize) -> TopK {
        TopK {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }
    #[inline]
    fn push(&mut self, c: Scored<u64>) {
        if self.heap.len() < self.k {
            self.heap.push(c);
        } else if let Some(top) = self.heap.peek() {
            if c < *top {
                self.heap.pop();
                self.heap.push(c);
            }
        }
    }
    fn into_sorted(self) -> Vec<Scored<u64>> {
        self.heap.into_sorted_vec()
    }
}

impl State {
    #[inline]
    fn is_live(&self, iid: usize) -> bool {
        self.live_bits.get(iid)
    }
    #[inline]
    fn accepts(&self, iid: usize, filter: Option<&Filter>) -> bool {
        self.is_live(iid)
            && filter.is_none_or(|f| {
                let payload = self.slots[iid].payload.as_deref();
                f.matches(payload.and_then(parsed).as_ref())
            })
    }
    /// Whether a candidate of the payload index passes `filter`: when the candidates are
    /// `exact`ly its matches, liveness decides (no payload parsed); otherwise the filter does.
    fn admits(&self, iid: usize, filter: Option<&Filter>, exact: bool) -> bool {
        if exact {
            self.is_live(iid)
        } else {
            self.accepts(iid, filter)
        }
    }
    fn tombstones(&self) -> u64 {
        self.epoch_total.saturating_sub(self.live as u64)
    }

    /// Every live point the filter accepts, in id order: the payload index's candidates (checked
    /// one by one unless they are exactly the matches), or every point checked when the index
    /// cannot narrow the filter.
    fn matching(&self, filter: &Filter) -> Vec<usize> {
        match self.payloads.candidates(filter) {
            Some((cands, exact)) => cands
                .into_iter()
                .map(|i| i as usize)
                .filter(|&i| self.admits(i, Some(filter), exact))
                .collect(),
            None => (0..self.slots.len())
                .filter(|&i| self.accepts(i, Some(filter)))
                .collect(),
        }
    }
}

/// Whether the indexer should dump its graph now, after `dirty` inserts since the last dump into
/// a graph of `len` points. When idle: after `after` inserts. While busy too, once the dump
/// trails by half the graph: under a long ingest the indexer is never idle, and a `kill -9` then
/// left no dump at all, so a restart re-indexed everything and searched it exactly meanwhile
/// (issue 10). Dumps at 1/2 growth write each point about three times over an ingest, and a
/// restart re-indexes at most a third of the graph.
fn dump_due(dirty: u64, len: u64, idle: bool, after: u64) -> bool {
    dirty > 0 && ((idle && dirty >= after) || dirty >= after.max(len / 2))
}

/// Ids the graph at watermark `wm` still has to insert when `next` ids were applied: the complete
/// blocks past `wm`. The last, incomplete block (fewer than [`BLOCK`] ids) waits for the ids that
/// complete it and is searched exactly meanwhile: inserting it early would cut blocks at a moment
/// that differs from node to node, and so build different graphs.
fn pending(wm: u64, next: u64) -> u64 {
    (next / BLOCK * BLOCK).saturating_sub(wm)
}

/// Collections up to this many live points search at the configured default ef...
const SIZED_EF_FROM: f64 = 200_000.0;
/// ... larger ones at that ef times (points / SIZED_EF_FROM) to this power: 112 at 1M with the
/// default 64.
const SIZED_EF_POWER: f64 = 0.35;

/// The search breadth of a request that gives no `ef`, on a collection of `live` points: `base`
/// (`--default-ef`) up to [`SIZED_EF_FROM`] points, then growing with the size, because recall at
/// a fixed ef falls as a graph grows (issue 10, on the derived set at m 16: recall@10 at ef 64 is
/// 0.976 at 200k points but 0.931 at 1M, and 0.976 at ef 128 there). The power was 0.8 (ef 232
/// at 1M) while full lists dropped their farthest entry (recall 0.89 at ef 64 at 1M). Capped at
/// [`crate::model::MAX_K`]. A function of the collection's state only, so replicas at the same
/// index still give the same answer.
pub fn sized_ef(base: usize, live: usize) -> usize {
    let growth = (live as f64 / SIZED_EF_FROM).max(1.0).powf(SIZED_EF_POWER);
    ((base as f64 * growth).round() as usize).clamp(base, crate::model::MAX_K.max(base))
}

/// Bounds of [`Collection::quick_search`]: a walk at ef 64 over 200k points takes about 0.2 ms
/// on one core here, and 1,024 points scanned exactly about as long.
pub const QUICK_EF: usize = 64;
pub const QUICK_POINTS: usize = 200_000;
pub const QUICK_TAIL: u64 = 1_024;

/// How a filtered search that would walk the graph proceeds, given the share `frac` of live points
/// its filter matches (about `matches` points): `None` when so few match that the walk would starve
/// and an exact scan of the matches is cheaper, else the search breadth widened by the selectivity
/// so that the walk still meets `ef` accepted points.
fn filtered_walk_ef(frac: f64, matches: f64, ef: usize) -> Option<usize> {
    if frac < 0.05 || matches < (4 * ef) as f64 {
        None
    } else {
        Some(((ef as f64 / frac.min(1.0)) as usize).min(crate::model::MAX_K.max(ef)))
    }
}

impl Collection {
    /// Creates a collection from persisted metadata and points (in iid order), loading its graph
    /// dump when one matches, and starts its indexer.
    pub fn open(
        id: u64,
        meta: &CollectionMeta,
        points: impl Iterator<Item = crate::error::Result<(u64, StoredPoint)>>,
        opts: CollectionOptions,
    ) -> crate::error::Result<Collection> {
        let started = std::time::Instant::now();
        let mut slots = Slots::default();
        let mut by_ext = HashMap::new();
        let full = VectorFile::of(id, &meta.config, &opts.vector_dir);
        let mut rows = full.as_ref().map(VectorFile::rows);
        let mut payloads = PayloadIndex::new();
        for point in points {
            let (iid, p) = point?;
            while (slots.len() as u64) < iid {
                slots.push(Slot {
                    ext: None,
                    vector: None,
                    payload: None,
                });
            }
            if let Some(v) = p.payload.as_deref().and_then(parsed) {
                payloads.insert(iid, &v);
            }
            by_ext.insert(p.id.clone(), iid);
            slots.push(Slot {
                ext: Some(p.id),
                vector: Some(keep_vector(rows.as_mut(), &meta.config, iid, p.vector)),
                payload: p.payload.map(Arc::from),
            });
        }
        while (slots.len() as u64) < meta.next_iid {
            slots.push(Slot {
                ext: None,
                vector: None,
                payload: None,
            });
        }
        drop(rows);
        let live = by_ext.len();
        let dir = opts.graph_dir.join(id.to_string());
        let vector_of = |iid: u64| slots.get(iid as usize).and_then(|s| s.vector.clone());
        let read_secs = started.elapsed().as_secs_f64();
        let graph = match AnyGraph::load(&dir, &meta.config, &vector_of) {
            Some((g, m)) if m.collection_id == id && m.watermark <= meta.next_iid => {
                tracing::info!(
                    collection = %meta.name,
                    watermark = m.watermark,
                    points = g.len(),
                    read_secs,
                    load_secs = started.elapsed().as_secs_f64() - read_secs,
                    "graph dump loaded"
                );
                g
            }
            Some((_, m)) => {
                tracing::info!(collection = %meta.name, dump = m.watermark, applied = meta.next_iid, "graph dump does not match the store; rebuilding");
                AnyGraph::new(&meta.config, live, 0, meta.epoch_since)
            }
            None => AnyGraph::new(&meta.config, live, 0, meta.epoch_since),
        };
        let pending_rebuild = graph.epoch_since() < meta.epoch_since;
        // The store holds no vector of a dead point: chunks of dead points only are not kept.
        slots.release_dead(slots.len());
        let state = State {
            live_bits: LiveBits::of(&slots),
            slots,
            by_ext,
            payloads,
            live,
            epoch_since: meta.epoch_since,
            epoch_total: meta.epoch_total,
            version: 0,
        };
        let c = Collection::start(id, meta, state, graph, full, opts);
        if pending_rebuild {
            let st = c.shared.state.read();
            let job = c.shared.rebuild_job(&st, meta.epoch_since);
            drop(st);
            c.shared.submit_rebuild(job);
        }
        Ok(c)
    }

    /// A new, empty collection.
    pub fn create(
        id: u64,
        name: &str,
        config: CollectionConfig,
        opts: CollectionOptions,
    ) -> Collection {
        let meta = CollectionMeta {
            name: name.to_string(),
            config,
            next_iid: 0,
            epoch_since: 0,
            epoch_total: 0,
        };
        let _ = std::fs::remove_dir_all(opts.graph_dir.join(id.to_string()));
        let state = State {
            live_bits: LiveBits::default(),
            slots: Slots::default(),
            by_ext: HashMap::new(),
            payloads: PayloadIndex::new(),
            live: 0,
            epoch_since: 0,
            epoch_total: 0,
            version: 0,
        };
        let graph = AnyGraph::new(&config, 0, 0, 0);
        let full = VectorFile::of(id, &config, &opts.vector_dir);
        Collection::start(id, &meta, state, graph, full, opts)
    }

    fn start(
        id: u64,
        meta: &CollectionMeta,
        state: State,
        graph: AnyGraph,
        full: Option<VectorFile>,
        opts: CollectionOptions,
    ) -> Collection {
        let shared = Arc::new(Shared {
            id,
            name: meta.name.clone(),
            config: meta.config,
            opts,
            next_iid: AtomicU64::new(state.slots.len() as u64),
            state: RwLock::new(state),
            graph: RwLock::new(Arc::new(graph)),
            full,
            ctl: Mutex::new(Control::default()),
            wake: Condvar::new(),
            progress: Condvar::new(),
            cancel: AtomicBool::new(false),
            dump_lock: Mutex::new(false),
            failure: Mutex::new(None),
            faults: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            rebuilds: AtomicU64::new(0),
        });
        let s = shared.clone();
        let handle = std::thread::Builder::new()
            .name(format!("indexer-{}", meta.name))
            .spawn(move || s.run_indexer())
            .ok();
        if handle.is_none() {
            tracing::error!(collection = %meta.name, "cannot spawn indexer thread; searches stay exact");
        }
        Collection {
            shared,
            indexer: Mutex::new(handle),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The collection id (unique for the store's lifetime; names can be reused).
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// Its configuration.
    pub fn config(&self) -> &CollectionConfig {
        &self.shared.config
    }

    /// The persisted form of its metadata.
    fn meta(&self, st: &State) -> CollectionMeta {
        CollectionMeta {
            name: self.shared.name.clone(),
            config: self.shared.config,
            next_iid: st.slots.len() as u64,
            epoch_since: st.epoch_since,
            epoch_total: st.epoch_total,
        }
    }

    /// Applies an upsert: validates every point first (all or nothing), then records it.
    pub fn upsert(
        &self,
        points: Vec<PointWrite>,
        batch: &mut WriteBatch,
    ) -> Result<usize, ApplyError> {
        let dim = self.shared.config.dim;
        let mut points = points;
        let mut parsed = Vec::with_capacity(points.len());
        for (i, p) in points.iter_mut().enumerate() {
            if p.vector.len() != dim {
                return Err(ApplyError::DimensionMismatch {
                    index: i,
                    expected: dim,
                    got: p.vector.len(),
                });
            }
            if let Err((_, why)) = super::prepare_vector(self.shared.config.metric, &mut p.vector) {
                return Err(ApplyError::Invalid(format!("points[{i}].vector: {why}")));
            }
            let payload = match &p.payload {
                Some(text) => Some(
                    serde_json::from_str::<Value>(text)
                        .map_err(|e| ApplyError::Invalid(format!("points[{i}].payload: {e}")))?,
                ),
                None => None,
            };
            parsed.push(payload);
        }
        let cid = self.shared.id;
        let n = points.len();
        let mut st = self.shared.state.write();
        let mut rows = self.shared.full.as_ref().map(VectorFile::rows);
        for (p, payload) in points.into_iter().zip(parsed) {
            if let Some(old) = st.by_ext.remove(&p.id) {
                Self::tombstone(&mut st, old);
                batch.remove_point(cid, old);
            }
            let iid = st.slots.len() as u64;
            batch.put_point(cid, iid, &p);
            if let Some(v) = &payload {
                st.payloads.insert(iid, v);
            }
            st.by_ext.insert(p.id.clone(), iid);
            let vector = keep_vector(rows.as_mut(), &self.shared.config, iid, p.vector);
            st.live_bits.set(iid as usize, true);
            st.slots.push(Slot {
                ext: Some(p.id),
                vector: Some(vector),
                payload: p.payload.map(Arc::from),
            });
            st.live += 1;
            st.epoch_total += 1;
        }
        // The rows reach the file before any search can see their points (it needs `st`).
        drop(rows);
        st.version += 1;
        let job = self.maybe_rebuild(&mut st);
        batch.put_collection(cid, &self.meta(&st));
        self.shared
            .next_iid
            .store(st.slots.len() as u64, Ordering::Release);
        drop(st);
        if let Some(job) = job {
            self.shared.submit_rebuild(job);
        }
        self.shared.notify_indexer();
        Ok(n)
    }

    fn tombstone(st: &mut State, iid: u64) {
        if let Some(slot) = st.slots.get_mut(iid as usize) {
            if slot.ext.take().is_some() {
                if let Some(v) = slot.payload.take().as_deref().and_then(parsed) {
                    st.payloads.remove(iid, &v);
                }
                st.live_bits.set(iid as usize, false);
                st.live -= 1;
            }
        }
    }

    /// Records the removal of every live point (the collection is being dropped).
    pub fn remove_all(&self, batch: &mut WriteBatch) {
        let st = self.shared.state.read();
        for (iid, slot) in st.slots.iter() {
            if slot.ext.is_some() {
                batch.remove_point(self.shared.id, iid as u64);
            }
        }
    }

    /// Deletes the given ids (missing ones are ignored); returns how many existed.
    pub fn delete_ids(&self, ids: &[PointId], batch: &mut WriteBatch) -> usize {
        let mut st = self.shared.state.write();
        let iids: Vec<u64> = ids.iter().filter_map(|id| st.by_ext.remove(id)).collect();
        self.finish_delete(st, iids, batch)
    }

    /// Deletes every point whose payload matches `filter`; returns how many.
    pub fn delete_filter(&self, filter: &Filter, batch: &mut WriteBatch) -> usize {
        let mut st = self.shared.state.write();
        let iids: Vec<u64> = st.matching(filter).into_iter().map(|i| i as u64).collect();
        for &iid in &iids {
            if let Some(id) = &st.slots[iid as usize].ext {
                let id = id.clone();
                st.by_ext.remove(&id);
            }
        }
        self.finish_delete(st, iids, batch)
    }

    fn finish_delete(
        &self,
        mut st: parking_lot::RwLockWriteGuard<'_, State>,
        iids: Vec<u64>,
        batch: &mut WriteBatch,
    ) -> usize {
        let cid = self.shared.id;
        for &iid in &iids {
            Self::tombstone(&mut st, iid);
            batch.remove_point(cid, iid);
        }
        st.version += 1;
        let job = self.maybe_rebuild(&mut st);
        if !iids.is_empty() {
            batch.put_collection(cid, &self.meta(&st));
        }
        drop(st);
        if let Some(job) = job {
            self.shared.submit_rebuild(job);
        }
        iids.len()
    }

    /// Decides (deterministically, from applied state only) whether to start a new graph epoch.
    fn maybe_rebuild(&self, st: &mut State) -> Option<RebuildJob> {
        let opts = &self.shared.opts;
        let tomb = st.tombstones();
        if st.epoch_total < opts.rebuild_min_points
            || (tomb as f64) <= opts.rebuild_ratio * st.epoch_total as f64
        {
            return None;
        }
        Some(self.new_epoch(st))
    }

    /// Starts a new graph epoch: a graph of the live points of this moment, built beside the
    /// current one, which the indexer then brings up to date and swaps in.
    fn new_epoch(&self, st: &mut State) -> RebuildJob {
        let since = st.slots.len() as u64;
        st.epoch_since = since;
        st.epoch_total = st.live as u64;
        self.shared.rebuild_job(st, since)
    }

    /// Applies `Command::Compact`: starts a new graph epoch now if the collection holds any
    /// tombstone, below `rebuild_ratio` too. Decided from applied state only, so every node that
    /// applies the command starts the same rebuild. Returns the tombstones it drops.
    pub fn compact(&self, batch: &mut WriteBatch) -> usize {
        let mut st = self.shared.state.write();
        let tombstones = st.tombstones();
        if tombstones == 0 {
            return 0;
        }
        let job = self.new_epoch(&mut st);
        batch.put_collection(self.shared.id, &self.meta(&st));
        drop(st);
        self.shared.submit_rebuild(job);
        metrics::counter!("quiver_compactions_total", "collection" => self.shared.name.clone())
            .increment(1);
        tombstones as usize
    }

    /// What the leader's compaction duty looks at: the collection's version (it moves on every
    /// write), its tombstones and the points of its current graph epoch.
    pub fn churn(&self) -> (u64, u64, u64) {
        let st = self.shared.state.read();
        (st.version, st.tombstones(), st.epoch_total)
    }

    /// Blocks until the graph lags the applied points by at most `max_unindexed`, or `timeout`.
    /// This is the ingest backpressure that keeps the exactly-searched tail short.
    pub fn wait_for_room(&self, max_unindexed: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut ctl = self.shared.ctl.lock();
        loop {
            let lag = pending(
                self.shared.graph.read().watermark(),
                self.shared.next_iid.load(Ordering::Acquire),
            );
            if lag <= max_unindexed || ctl.stop {
                return true;
            }
            if self
                .shared
                .progress
                .wait_until(&mut ctl, deadline)
                .timed_out()
            {
                return false;
            }
        }
    }

    /// Why the indexer failed, while the graph is being rebuilt after the failure.
    pub fn indexer_failure(&self) -> Option<String> {
        self.shared.failure.lock().clone()
    }

    /// Indexer and rebuild failures since the collection was opened.
    pub fn indexer_failures(&self) -> u64 {
        self.shared.failures.load(Ordering::Acquire)
    }

    /// Rebuilt graphs swapped in since the collection was opened (tests).
    #[cfg(test)]
    pub(crate) fn rebuilds(&self) -> u64 {
        self.shared.rebuilds.load(Ordering::Acquire)
    }

    /// Whether a graph rebuild is running (tests).
    #[cfg(test)]
    pub(crate) fn rebuild_in_flight(&self) -> bool {
        self.shared.ctl.lock().building
    }

    /// Test hook: makes the indexer's next `n` inserts panic, to exercise its recovery.
    #[doc(hidden)]
    pub fn inject_indexer_faults(&self, n: u64) {
        self.shared.faults.store(n, Ordering::Release);
        self.shared.notify_indexer();
    }

    /// Blocks until every applied point is in the graph and no rebuild is pending (tests, benches).
    pub fn wait_indexed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut ctl = self.shared.ctl.lock();
        loop {
            let done = pending(
                self.shared.graph.read().watermark(),
                self.shared.next_iid.load(Ordering::Acquire),
            ) == 0
                && ctl.job.is_none()
                && ctl.built.is_none()
                && !ctl.rebuilding;
            if done || ctl.stop {
                return done;
            }
            if self
                .shared
                .progress
                .wait_until(&mut ctl, deadline)
                .timed_out()
            {
                return false;
            }
        }
    }

    /// Stops the indexer (dumping the graph if it changed) and waits for it.
    pub fn close(&self) {
        self.stop(true);
    }

    fn stop(&self, dump: bool) {
        {
            let mut ctl = self.shared.ctl.lock();
            ctl.stop = true;
            ctl.discard |= !dump;
            self.shared.cancel.store(true, Ordering::Release);
            self.shared.wake.notify_all();
            self.shared.progress.notify_all();
        }
        if let Some(h) = self.indexer.lock().take() {
            let _ = h.join();
        }
    }

    /// A consistent copy of the collection's metadata and live points (cheap: vectors and payloads
    /// are shared), for a snapshot written after the caller releases the apply lock.
    pub fn snapshot_view(&self) -> (CollectionMeta, Vec<SharedPoint>) {
        let st = self.shared.state.read();
        let points = st
            .slots
            .iter()
            .filter_map(|(iid, s)| {
                Some((
                    iid as u64,
                    s.ext.clone()?,
                    s.vector.clone()?,
                    s.payload.clone(),
                ))
            })
            .collect();
        (self.meta(&st), points)
    }

    /// Has the indexer write a graph dump of its own once it is idle. A dump received in a
    /// snapshot leaves out the data of the points shipped with it (`index::slim_dump_data`), so
    /// it loads only while the store holds every one of them; the node's own dump does not
    /// depend on that once a point is deleted.
    pub fn dump_when_idle(&self) {
        self.shared.ctl.lock().redump = true;
        self.shared.wake.notify_all();
    }

    /// Runs `f` on the folder of the latest graph dump (which may not exist), with dumps and
    /// removal held off, so that a snapshot can copy a consistent dump; `None` once the collection
    /// was destroyed.
    pub fn with_graph_dump<T>(&self, f: impl FnOnce(Option<&std::path::Path>) -> T) -> T {
        let destroyed = self.shared.dump_lock.lock();
        if *destroyed {
            return f(None);
        }
        f(Some(&self.shared.graph_path()))
    }

    /// Stops the indexer without dumping (the graph is about to be deleted) and removes the graph
    /// dump (the collection was dropped, or is replaced by a snapshot install). Waits for a
    /// snapshot that is copying the dump, and leaves later ones nothing to copy.
    pub fn destroy(&self) {
        self.stop(false);
        let mut destroyed = self.shared.dump_lock.lock();
        *destroyed = true;
        let _ = std::fs::remove_dir_all(self.shared.graph_path());
        if let Some(f) = &self.shared.full {
            f.remove();
        }
    }

    /// The full vector of a point whose stored form is `stored`: itself, or in a quantised
    /// collection the vector read from disk.
    pub fn vector(&self, iid: u64, stored: &Stored) -> Option<Vec<f32>> {
        self.shared.vector(iid, stored)
    }

    /// How many graph points the frozen search copy lacks (`None`: no copy yet). Searches walk
    /// the copy once it trails by at most a few thousand points.
    pub fn search_copy_lag(&self) -> Option<u64> {
        let graph = self.shared.graph.read();
        graph.flat().map(|_| graph.flat_lag())
    }

    /// Whether `p` is a short, bounded search now, one the HTTP layer runs on its own task rather
    /// than handing it to a blocking thread (at 50k points the hand-off cost as much CPU as the
    /// walk): a walk of the search copy at breadth at most [`QUICK_EF`] over at most
    /// [`QUICK_POINTS`] points, with no filter, no exact scan, no reads from disk (an unquantised
    /// collection) and at most [`QUICK_TAIL`] points outside the copy, which are scanned exactly.
    pub fn quick_search(&self, p: &SearchParams) -> bool {
        if p.exact || p.filter.is_some() || self.shared.config.quantization.vectors_on_disk() {
            return false;
        }
        let graph = self.shared.graph.read().clone();
        let st = self.shared.state.read();
        let Some(flat) = View::of(&graph).flat else {
            return false;
        };
        p.breadth(st.live) <= QUICK_EF
            && st.live <= QUICK_POINTS
            && (st.slots.len() as u64).saturating_sub(flat.watermark()) <= QUICK_TAIL
    }

    /// Info for `GET /collections/{name}`.
    pub fn info(&self) -> CollectionInfo {
        let st = self.shared.state.read();
        let wm = self.shared.graph.read().watermark();
        CollectionInfo {
            name: self.shared.name.clone(),
            config: self.shared.config,
            points: st.live,
            tombstones: st.tombstones() as usize,
            index: 0,
            unindexed: pending(wm, st.slots.len() as u64) as usize,
        }
    }

    /// Heap bytes held by the payload index.
    pub fn payload_index_bytes(&self) -> usize {
        self.shared.state.read().payloads.heap_bytes()
    }

    /// Live point count.
    pub fn len(&self) -> usize {
        self.shared.state.read().live
    }

    /// True when the collection holds no live point.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One point by id; its vector only `with_vector` (empty otherwise: a quantised collection
    /// reads it from disk).
    pub fn get(&self, id: &PointId, with_vector: bool) -> Option<PointRecord> {
        let st = self.shared.state.read();
        let iid = *st.by_ext.get(id)?;
        let slot = &st.slots[iid as usize];
        Some(PointRecord {
            id: id.clone(),
            vector: slot
                .vector
                .as_ref()
                .filter(|_| with_vector)
                .and_then(|v| self.shared.vector(iid, v))
                .unwrap_or_default(),
            payload: slot.payload.as_deref().and_then(parsed),
        })
    }

    /// Nearest neighbours of `p.vector`. Exact when asked, when the collection is small, or when the
    /// filter is selective; otherwise HNSW over the graph plus an exact scan of the unindexed tail.
    pub fn search(&self, p: &SearchParams) -> Vec<Hit> {
        self.search_tagged(p).0
    }

    /// The tag a search would be computed under now ([`ViewTag`]).
    pub fn view_tag(&self) -> ViewTag {
        let graph = self.shared.graph.read().clone();
        let st = self.shared.state.read();
        View::of(&graph).tag(&st, &graph)
    }

    /// [`Collection::search`], with the tag of the state it read when the answer is a function of
    /// that state alone; `None` when it walked hnsw_rs' graph while the indexer may be inserting
    /// into it (a large graph mid-ingest), which no tag pins down.
    pub fn search_tagged(&self, p: &SearchParams) -> (Vec<Hit>, Option<ViewTag>) {
        let metric = self.shared.config.metric;
        let graph = self.shared.graph.read().clone();
        let st = self.shared.state.read();
        let view = View::of(&graph);
        let tag = view.tag(&st, &graph);
        let n = st.slots.len();
        let wm = (view.watermark as usize).min(n);
        let filter = p.filter.as_ref();
        let q = &p.vector[..];
        // A filter the payload index narrows has its candidates (a superset of its matches,
        // sorted): a point outside them is rejected without parsing its payload, and when they
        // are exactly the matches, a point inside them is accepted without parsing it either.
        let (candidates, exact) = match filter.and_then(|f| st.payloads.candidates(f)) {
            Some((c, exact)) => (Some(c), exact),
            None => (None, false),
        };
        let accepts = |iid: usize| {
            candidates
                .as_ref()
                .is_none_or(|c| c.binary_search(&(iid as u64)).is_ok())
                && st.admits(iid, filter, exact)
        };
        // The exact score of a point (a quantised collection reads its vector from disk).
        let buf = std::cell::RefCell::new((Vec::new(), Vec::new()));
        let exact_score = |iid: usize| -> Option<f32> {
            match st.slots[iid].vector.as_ref()? {
                Stored::Full(v) => Some(score(metric, q, v)),
                Stored::Codes(_) => {
                    let full = self.shared.full.as_ref()?;
                    let (bytes, v) = &mut *buf.borrow_mut();
                    full.get_into(iid as u64, bytes, v)
                        .then(|| score(metric, q, v))
                }
            }
        };
        let mut ef = p.breadth(st.live);
        // A quantised collection scans in two phases unless the request asked for `exact`: the
        // codes in memory pick the best few ([`rescored`]), and only those are read from disk and
        // rescored (as the graph's candidates are). A selective filter over 10,000 points read
        // each vector from disk: p99 12.6 ms at 1M instead of about 6.
        let q_code = (graph.quantized() && !p.exact).then(|| encode(q));
        let shortlist = rescored(p.k, ef);
        // Scores the points among `iids` that `keep` accepts, exactly (or, quantised, shortlists
        // them on their codes first).
        let score_ids = |iids: &mut dyn Iterator<Item = usize>,
                         keep: &dyn Fn(usize) -> bool,
                         top: &mut TopK| {
            let Some(qc) = &q_code else {
                for iid in iids.filter(|&i| keep(i)) {
                    if let Some(s) = exact_score(iid) {
                        top.push(Scored(badness(metric, s), iid as u64));
                    }
                }
                return;
            };
            let codes = CodeDistance(metric);
            let mut short = TopK::new(shortlist);
            for iid in iids.filter(|&i| keep(i)) {
                if let Some(Stored::Codes(c)) = &st.slots[iid].vector {
                    short.push(Scored(codes.eval(qc, c), iid as u64));
                }
            }
            for Scored(_, iid) in short.into_sorted() {
                if let Some(s) = exact_score(iid as usize) {
                    top.push(Scored(badness(metric, s), iid));
                }
            }
        };
        // The ids from `from` on, scored exactly. Their vectors lie anywhere in the heap, so each
        // is prefetched two ids ahead and its loads overlap the dot products before it: at 50k
        // points the last incomplete block (80 ids outside the graph) took 10-25 % of a search
        // at ef 16.
        let prefetch_ahead = |iid: usize| {
            if let Some(Some(Stored::Full(v))) = st.slots.get(iid + 2).map(|s| s.vector.as_ref()) {
                prefetch(v.as_ptr().cast(), std::mem::size_of_val(&**v));
            }
        };
        let exact_scan = |from: usize, top: &mut TopK| {
            score_ids(
                &mut (from..n).inspect(|&iid| prefetch_ahead(iid)),
                &accepts,
                top,
            )
        };
        let mut top = TopK::new(p.k);
        let mut use_exact = p.exact || st.live <= self.shared.opts.exact_below || view.empty;
        if let (Some(f), false) = (filter, use_exact) {
            // The share of points the filter matches: counted by the index, or estimated on an
            // even sample when the index cannot narrow the filter.
            let frac = match &candidates {
                Some(cands) => cands.len() as f64 / st.live.max(1) as f64,
                None => {
                    let step = (n / 256).max(1);
                    let (mut seen, mut hit) = (0usize, 0usize);
                    for iid in (0..n).step_by(step) {
                        if st.is_live(iid) {
                            seen += 1;
                            if st.accepts(iid, Some(f)) {
                                hit += 1;
                            }
                        }
                    }
                    if seen == 0 {
                        0.0
                    } else {
                        hit as f64 / seen as f64
                    }
                }
            };
            match filtered_walk_ef(frac, frac * st.live as f64, ef) {
                Some(wider) => ef = wider,
                None => use_exact = true,
            }
        }
        if use_exact {
            match &candidates {
                // Iterating the candidates themselves: no membership test needed.
                Some(cands) => score_ids(
                    &mut cands.iter().map(|&iid| iid as usize),
                    &|iid| st.admits(iid, filter, exact),
                    &mut top,
                ),
                None => exact_scan(0, &mut top),
            }
            return (self.hits(&st, top, p), Some(tag));
        }
        // Merges graph results, rescored exactly, then scans exactly what the graph did not
        // cover (`from`). A graph short of k answers (a selective filter, or many dead points:
        // e.g. an old epoch's graph serving while its rebuild is pending) falls back to the exact
        // answer. A quantised graph's distances are approximate: more than its best k candidates
        // are rescored with the full vectors ([`rescored`]), as are those of a search copy that
        // walks int8 codes of an unquantised collection's vectors.
        let wanted = |approximate: bool| if approximate { rescored(p.k, ef) } else { p.k };
        let finish = |found: Vec<(u64, f32)>, from: usize, top: &mut TopK| {
            if found.len() < p.k.min(st.live) {
                exact_scan(0, top);
                return;
            }
            for (iid, _) in found {
                if let Some(s) = exact_score(iid as usize) {
                    top.push(Scored(badness(metric, s), iid));
                }
            }
            exact_scan(from, top);
        };
        if let Some(flat) = &view.flat {
            // The frozen copy covers ids below its watermark; everything above is scanned exactly.
            let fw = (flat.watermark() as usize).min(n);
            let keep = |iid: u64| (iid as usize) < fw && accepts(iid as usize);
            // Always filter: besides the user's filter, the graph may hold dead points (tombstones,
            // or a whole old epoch while a rebuild is pending).
            let wanted = wanted(flat.approximate());
            finish(
                flat.search(q, q_code.as_deref(), wanted, ef, Some(&keep)),
                fw,
                &mut top,
            );
        } else {
            // No usable frozen copy (a large graph mid-ingest): search hnsw_rs' graph directly.
            let keep = |iid: u64| (iid as usize) < wm && accepts(iid as usize);
            let wanted = wanted(graph.quantized());
            // Plain search first, post-filtered (the ef-wide candidate list comes at no extra cost).
            // Only if that leaves fewer than k do we pay for hnsw_rs' filtered walk (which gives up
            // its early exit).
            let mut found: Vec<(u64, f32)> = graph
                .search(q, q_code.as_deref(), ef, ef, None)
                .into_iter()
                .filter(|(iid, _)| keep(*iid))
                .take(wanted)
                .collect();
            if found.len() < p.k && found.len() < st.live {
                found = graph.search(q, q_code.as_deref(), wanted, ef, Some(&keep));
            }
            finish(found, wm, &mut top);
            return (self.hits(&st, top, p), None);
        }
        (self.hits(&st, top, p), Some(tag))
    }

    /// The answer: hits best first, with what was asked for.
    fn hits(&self, st: &State, top: TopK, p: &SearchParams) -> Vec<Hit> {
        let metric = self.shared.config.metric;
        top.into_sorted()
            .into_iter()
            .filter_map(|Scored(bad, iid)| {
                let s = badness(metric, bad);
                if let Some(t) = p.score_threshold {
                    let pass = if metric.higher_is_better() {
                        s >= t
                    } else {
                        s <= t
                    };
                    if !pass {
                        return None;
                    }
                }
                let slot = &st.slots[iid as usize];
                Some(Hit {
                    id: slot.ext.clone()?,
                    score: s,
                    payload: if p.with_payload {
                        slot.payload.as_deref().and_then(parsed)
                    } else {
                        None
                    },
                    vector: if p.with_vector {
                        slot.vector
                            .as_ref()
                            .and_then(|v| self.shared.vector(iid, v))
                    } else {
                        None
                    },
                })
            })
            .collect()
    }
}

/// The text of a caught panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// What a collection holds for a point's vector `v`: the vector, or (quantised) its code, the
/// vector going to the collection's vector file.
fn keep_vector(
    rows: Option<&mut super::vectors::Rows<'_>>,
    config: &CollectionConfig,
    iid: u64,
    v: Vec<f32>,
) -> Stored {
    if let Some(rows) = rows {
        rows.put(iid, &v);
    }
    Stored::of(v, config.quantization)
}

impl Shared {
    fn graph_path(&self) -> PathBuf {
        self.opts.graph_dir.join(self.id.to_string())
    }

    fn vector(&self, iid: u64, stored: &Stored) -> Option<Vec<f32>> {
        match stored {
            Stored::Full(v) => Some(v.to_vec()),
            Stored::Codes(_) => self.full.as_ref()?.get(iid),
        }
    }

    fn notify_indexer(&self) {
        let _ctl = self.ctl.lock();
        self.wake.notify_all();
    }

    fn rebuild_job(&self, st: &State, since: u64) -> RebuildJob {
        let base = st
            .slots
            .iter()
            .take_while(|(i, _)| (*i as u64) < since)
            .filter(|(_, s)| s.ext.is_some())
            .filter_map(|(i, s)| s.vector.clone().map(|v| (i as u64, v)))
            .collect();
        RebuildJob {
            generation: 0,
            base,
            since,
        }
    }

    /// Queues an epoch's build, replacing one that waited (a newer epoch makes it moot). A build
    /// in flight is left to finish: under a churn that decides epochs faster than a build takes,
    /// abandoning it for each newer one meant that no build ever finished, and the memory of the
    /// dead points was never handed back (issue 10).
    fn submit_rebuild(&self, job: RebuildJob) {
        let mut ctl = self.ctl.lock();
        ctl.job = Some(job);
        ctl.rebuilding = true;
        self.wake.notify_all();
    }

    /// The indexer thread. A failure (a panic inside hnsw_rs, or a bug of ours) never leaves the
    /// collection silently unindexed: it is logged, counted (`quiver_indexer_failures_total`),
    /// reported by `/readyz` until the graph has caught up again, and the graph is rebuilt from
    /// the points in memory (which are the store's) exactly as a restart without a dump would,
    /// after a pause that doubles on each failure in a row (up to 30 s).
    fn run_indexer(self: Arc<Self>) {
        lower_priority();
        let mut pause = Duration::from_millis(100);
        loop {
            let me = self.clone();
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| me.index()));
            let Err(panic) = outcome else {
                return;
            };
            let why = panic_message(&*panic);
            tracing::error!(collection = %self.name, error = %why, "indexer failed; rebuilding the graph from the store");
            metrics::counter!("quiver_indexer_failures_total", "collection" => self.name.clone())
                .increment(1);
            *self.failure.lock() = Some(why);
            self.failures.fetch_add(1, Ordering::AcqRel);
            {
                let mut ctl = self.ctl.lock();
                if !ctl.stop {
                    self.wake.wait_for(&mut ctl, pause);
                }
                if ctl.stop {
                    return;
                }
            }
            pause = (pause * 2).min(Duration::from_secs(30));
            self.reset_graph();
        }
    }

    /// Replaces the graph with an empty one that the indexer fills from the points in memory, in
    /// id order, as `Collection::open` does when there is no dump. Until it catches up, the ids
    /// it lacks are searched exactly, so answers stay complete.
    fn reset_graph(&self) {
        let st = self.state.read();
        let graph = AnyGraph::new(&self.config, st.live, 0, st.epoch_since);
        *self.graph.write() = Arc::new(graph);
        drop(st);
        let mut ctl = self.ctl.lock();
        // A rebuild that was running belonged to the old graph; it is decided again by apply.
        ctl.generation += 1;
        ctl.job = None;
        ctl.built = None;
        ctl.rebuilding = false;
        self.progress.notify_all();
    }

    /// The indexer's work: inserts ids in order, starts rebuilds, swaps finished graphs, dumps
    /// when idle.
    fn index(self: Arc<Self>) {
        let mut dirty: u64 = 0;
        let mut planner = Planner::default();
        loop {
            let (job, built) = {
                let mut ctl = self.ctl.lock();
                loop {
                    let (pending, unfrozen) = {
                        let graph = self.graph.read();
                        let next = self.next_iid.load(Ordering::Acquire);
                        (pending(graph.watermark(), next) > 0, graph.flat_lag() > 0)
                    };
                    // `unfrozen`: a graph loaded from a dump (at start, or from a snapshot) has
                    // no search copy yet; without this the node searched through hnsw_rs, about
                    // 1.6x slower, until new points arrived.
                    let startable = ctl.job.is_some() && !ctl.building;
                    if ctl.stop || startable || ctl.built.is_some() || pending || unfrozen {
                        break;
                    }
                    if std::mem::take(&mut ctl.redump) {
                        dirty = dirty.max(self.opts.dump_after_inserts.max(1));
                    }
                    if dirty >= self.opts.dump_after_inserts {
                        break;
                    }
                    self.wake.wait_for(&mut ctl, Duration::from_secs(1));
                }
                if ctl.stop {
                    let discard = ctl.discard;
                    drop(ctl);
                    if dirty > 0 && !discard {
                        self.dump();
                    }
                    return;
                }
                let mut job = if ctl.building { None } else { ctl.job.take() };
                if let Some(job) = job.as_mut() {
                    ctl.building = true;
                    job.generation = ctl.generation;
                }
                let built = match ctl.built.take() {
                    Some((g, graph)) if g == ctl.generation => Some(graph),
                    _ => None,
                };
                (job, built)
            };
            if let Some(job) = job {
                self.spawn_builder(job);
            }
            if let Some(graph) = built {
                self.swap_in(graph);
                dirty = self.opts.dump_after_inserts.max(1);
                continue;
            }
            let inserted = self.insert_block(&mut planner);
            dirty += inserted;
            let graph = self.graph.read().clone();
            if graph.flat_lag() >= FREEZE_EVERY || (inserted == 0 && graph.flat_lag() > 0) {
                graph.freeze();
                crate::alloc::release_memory();
                crate::alloc::collapse_huge_pages();
            }
            let caught_up = pending(graph.watermark(), self.next_iid.load(Ordering::Acquire)) == 0;
            if caught_up && self.failure.lock().is_some() {
                tracing::info!(collection = %self.name, points = graph.len(), "graph rebuilt after an indexer failure");
                *self.failure.lock() = None;
            }
            {
                let _ctl = self.ctl.lock();
                self.progress.notify_all();
            }
            if dump_due(
                dirty,
                graph.len(),
                inserted == 0,
                self.opts.dump_after_inserts,
            ) {
                self.dump();
                dirty = 0;
            }
        }
    }

    /// Inserts the next block of ids into the current graph, if it is complete; returns how many
    /// ids it handled.
    fn insert_block(&self, planner: &mut Planner) -> u64 {
        let graph = self.graph.read().clone();
        let from = graph.watermark();
        let end = (from / BLOCK + 1) * BLOCK;
        let block: Vec<(u64, Option<Stored>)> = {
            let st = self.state.read();
            if (st.slots.len() as u64) < end {
                return 0;
            }
            (from..end)
                .map(|i| (i, st.slots[i as usize].vector.clone()))
                .collect()
        };
        for (iid, _) in &block {
            if self.faults.load(Ordering::Acquire) > 0 {
                self.faults.fetch_sub(1, Ordering::AcqRel);
                panic!("injected indexer fault at id {iid}");
            }
        }
        let waiting = pending(end, self.next_iid.load(Ordering::Acquire));
        planner.insert_block(&graph, &block, end, waiting);
        end - from
    }

    fn spawn_builder(self: &Arc<Self>, job: RebuildJob) {
        let s = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("rebuild-{}", self.name))
            .spawn(move || {
                lower_priority();
                let started = Instant::now();
                let cancelled = || {
                    s.cancel.load(Ordering::Acquire) || s.ctl.lock().generation != job.generation
                };
                let build = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let g = AnyGraph::new(&s.config, job.base.len(), 0, job.since);
                    // The base in blocks of BLOCK points, by position (the base is the same list
                    // on every node).
                    for block in job.base.chunks(BLOCK as usize) {
                        if cancelled() {
                            return None;
                        }
                        let items: Vec<(u64, Option<Stored>)> =
                            block.iter().map(|(iid, v)| (*iid, Some(v.clone()))).collect();
                        let end = block.last().map_or(0, |(iid, _)| iid + 1);
                        g.insert_block(&items, end, Planning::Behind);
                    }
                    g.advance(job.since);
                    // Catch up with the serving graph here, not in `swap_in` on the indexer's
                    // thread, which meanwhile keeps the tail indexed: under a churn, catching up
                    // there left the indexer behind by `--max-unindexed` and writes waited.
                    // Twice, as the serving graph moves on meanwhile; `swap_in` does the rest.
                    for _ in 0..2 {
                        let target = s.graph.read().watermark();
                        if !s.catch_up(&g, target, &cancelled) {
                            return None;
                        }
                    }
                    Some(g)
                }));
                let g = match build {
                    Ok(g) => g,
                    Err(panic) => {
                        // The old graph keeps serving; the next apply that crosses the ratio
                        // decides a rebuild again.
                        let why = panic_message(&*panic);
                        tracing::error!(collection = %s.name, error = %why, "graph rebuild failed; keeping the current graph");
                        metrics::counter!("quiver_indexer_failures_total", "collection" => s.name.clone()).increment(1);
                        s.failures.fetch_add(1, Ordering::AcqRel);
                        None
                    }
                };
                let mut ctl = s.ctl.lock();
                ctl.building = false;
                match g {
                    Some(g) if ctl.generation == job.generation => {
                        tracing::info!(collection = %s.name, points = job.base.len(), secs = started.elapsed().as_secs_f64(), "graph rebuilt");
                        ctl.built = Some((job.generation, g));
                    }
                    _ => ctl.rebuilding = ctl.job.is_some(),
                }
                // The indexer swaps the graph in, or starts the epoch that waited.
                s.wake.notify_all();
                s.progress.notify_all();
            });
        if spawned.is_err() {
            tracing::error!(collection = %self.name, "cannot spawn rebuild thread");
            let mut ctl = self.ctl.lock();
            ctl.building = false;
            ctl.rebuilding = ctl.job.is_some();
        }
    }

    /// Inserts into the rebuilt graph `g` the ids from its watermark up to `target`, block by block
    /// as the serving graph got them (its watermark is a block's end, or an epoch's start), so
    /// that `g` is the same whichever thread inserts them and wherever it pauses. False when
    /// `stop` said so first.
    fn catch_up(&self, g: &AnyGraph, target: u64, stop: &dyn Fn() -> bool) -> bool {
        loop {
            let from = g.watermark();
            if from >= target {
                return true;
            }
            if stop() {
                return false;
            }
            let end = ((from / BLOCK + 1) * BLOCK).min(target);
            let block: Vec<(u64, Option<Stored>)> = {
                let st = self.state.read();
                (from..end)
                    .map(|i| (i, st.slots[i as usize].vector.clone()))
                    .collect()
            };
            g.insert_block(&block, end, Planning::Behind);
        }
    }

    /// Brings a rebuilt graph up to the current one's watermark, swaps it in, frees dead vectors.
    fn swap_in(&self, new: AnyGraph) {
        // Only the indexer (this thread) moves the serving graph's watermark.
        let target = self.graph.read().watermark();
        self.catch_up(&new, target, &|| false);
        new.freeze();
        let since = new.epoch_since();
        let old = std::mem::replace(&mut *self.graph.write(), Arc::new(new));
        drop(old);
        let mut st = self.state.write();
        let released = st.slots.release_dead(since as usize);
        st.version += 1;
        drop(st);
        if let Some(file) = &self.full {
            released.into_iter().for_each(|ids| file.forget(ids));
        }
        crate::alloc::release_memory();
        self.rebuilds.fetch_add(1, Ordering::AcqRel);
        metrics::counter!("quiver_graph_rebuilds_total", "collection" => self.name.clone())
            .increment(1);
        let mut ctl = self.ctl.lock();
        ctl.rebuilding = ctl.job.is_some() || ctl.building;
        self.progress.notify_all();
    }

    fn dump(&self) {
        let graph = self.graph.read().clone();
        let meta = GraphMeta::new(self.id, graph.watermark(), graph.epoch_since(), self.config);
        let started = Instant::now();
        let destroyed = self.dump_lock.lock();
        if *destroyed {
            return;
        }
        let dumped = graph.dump(&self.graph_path(), &meta);
        // The dump's buffers were the last thing allocated before an idle spell.
        crate::alloc::release_memory();
        match dumped {
            Ok(()) => {
                tracing::debug!(collection = %self.name, points = graph.len(), secs = started.elapsed().as_secs_f64(), "graph dumped")
            }
            Err(e) => {
                tracing::warn!(collection = %self.name, error = %e, "graph dump failed; a restart will rebuild")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{dump_due, sized_ef, PointId, Slot, Slots, Stored, SLOT_CHUNK};

    #[test]
    fn chunks_of_dead_points_below_the_epoch_are_released() {
        let mut slots = Slots::default();
        let n = 3 * SLOT_CHUNK + 10;
        // Chunk 0: all dead; chunk 1: one live point; chunk 2: dead, but partly above `since`.
        let live = |i: usize| i == SLOT_CHUNK + 5 || i >= 3 * SLOT_CHUNK;
        for i in 0..n {
            slots.push(Slot {
                ext: live(i).then_some(PointId::Num(i as u64)),
                vector: Some(Stored::Full(vec![i as f32].into())),
                payload: None,
            });
        }
        let since = 3 * SLOT_CHUNK - 4;
        slots.release_dead(since);
        assert_eq!(slots.len(), n);
        assert!(slots.chunks[0].is_none());
        assert!(slots.chunks[1].is_some() && slots.chunks[2].is_some());
        for i in 0..n {
            let s = &slots[i];
            assert_eq!(s.ext.is_some(), live(i), "{i}");
            // Dead vectors below `since` are dropped; the others stay.
            assert_eq!(s.vector.is_some(), live(i) || i >= since, "{i}");
        }
        assert!(slots.get(n).is_none());
        assert!(
            slots.get_mut(3).is_none(),
            "a released slot is not writable"
        );
        let held: Vec<usize> = slots.iter().map(|(i, _)| i).collect();
        assert_eq!(held.len(), n - SLOT_CHUNK);
        assert_eq!(held[0], SLOT_CHUNK);
        // Pushing goes on after the released chunks.
        slots.push(Slot {
            ext: Some(PointId::Num(1)),
            vector: None,
            payload: None,
        });
        assert_eq!(slots[n].ext, Some(PointId::Num(1)));
    }

    #[test]
    fn the_default_ef_grows_with_the_collection_past_its_threshold() {
        assert_eq!(sized_ef(64, 0), 64);
        assert_eq!(sized_ef(64, 200_000), 64);
        let at = |n| sized_ef(64, n);
        assert!(at(400_000) > 64);
        assert!(at(1_000_000) > at(400_000));
        assert_eq!(at(1_000_000), 112);
        // Never below the configured default, never past the largest ef a request may give.
        assert_eq!(sized_ef(5_000, 10), 5_000);
        assert_eq!(sized_ef(64, usize::MAX), crate::model::MAX_K);
    }

    #[test]
    fn a_busy_indexer_dumps_once_the_dump_trails_by_half_the_graph() {
        // Idle: after `after` inserts.
        assert!(dump_due(10_000, 1_000_000, true, 10_000));
        assert!(!dump_due(9_999, 1_000_000, true, 10_000));
        assert!(!dump_due(0, 0, true, 0));
        // Busy: only once the dump trails by half the graph (and at least `after`).
        assert!(!dump_due(10_000, 1_000_000, false, 10_000));
        assert!(!dump_due(499_999, 1_000_000, false, 10_000));
        assert!(dump_due(500_000, 1_000_000, false, 10_000));
        assert!(dump_due(10_000, 15_000, false, 10_000));
        assert!(!dump_due(5_000, 8_000, false, 10_000));
    }
}

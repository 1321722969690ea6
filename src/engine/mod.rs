//! The engine: quiver's deterministic state machine, with no Raft and no HTTP.
//!
//! Every mutation is a [`Command`] applied by [`Engine::apply`] in log order. Given the same
//! sequence of `(index, Command)`, two engines hold the same data, assign the same internal ids
//! and, once their indexers have caught up, build the same HNSW graphs (hnsw_rs 0.3.5 seeds its
//! level sampling with a constant and we insert serially in id order). Rejections are
//! deterministic too: a command that fails validation at apply time changes nothing, everywhere.
//!
//! Persistence: one atomic sled batch per `apply` call, carrying `last_applied` with the data it
//! covers. `apply` does not fsync; the caller decides when ([`Engine::flush`]), so that one fsync
//! covers a whole group of writes. Graph dumps (see `collection`) only speed up restarts: the
//! store is the source of truth and any missing or stale dump is rebuilt from it.
//!
//! Snapshot installs are crash-safe: [`Engine::install_snapshot_file`] first records a durable
//! marker (`install-in-progress` in the data dir, naming the complete, fsynced snapshot file) and
//! only then clears and re-imports the store. [`Engine::open`] finds the marker after a crash and
//! redoes the whole import from that file before it loads anything, so a half-imported state is
//! never served nor replayed onto. The marker stays until the caller confirms with
//! [`Engine::finish_install`] that it recorded the install on its side (the Raft adapter writes
//! its snapshot metadata first); [`Engine::pending_install`] hands the caller's note back after a
//! redo. An install whose marker or file is unusable makes `open` fail with an explanation rather
//! than start from a partial state.
//!
//! Caveats: after a restart, points deleted before they were indexed are no longer available, so
//! the graph rebuilt or replayed on that node may differ slightly from one that never restarted
//! (searches stay correct; only approximate-result ties can differ).

mod cache;
mod collection;
pub(crate) mod payload_index;
mod vectors;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

pub use cache::{CacheStats, QueryCache};
pub use collection::{Collection, CollectionOptions, SearchParams, ViewTag};

use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::model::{
    ApplyError, CollectionInfo, Command, DeleteSelector, Hit, PointId, PointRecord, Reply,
};
use crate::store::{Store, WriteBatch};

/// The one rule for a vector stored in a collection of `metric`, checked by the API before a
/// write reaches the log and again when it is applied (the collection may have been dropped and
/// re-created with another metric in between; review L4): finite with a bounded norm
/// ([`crate::index::vector_problem`]), and for cosine not zero and of unit length (normalised
/// here when it is not). `Err((position, reason))` names the element at fault, if one is.
/// The dimension is the caller's to check. Deterministic, as apply must be.
pub fn prepare_vector(
    metric: crate::model::Metric,
    v: &mut [f32],
) -> std::result::Result<(), (Option<usize>, &'static str)> {
    if let Some(problem) = crate::index::vector_problem(v) {
        return Err(problem);
    }
    if metric == crate::model::Metric::Cosine {
        let norm2 = crate::index::dot(v, v);
        if norm2 == 0.0 {
            return Err((None, "a zero vector has no direction (cosine metric)"));
        }
        if (norm2 - 1.0).abs() > 1e-4 {
            crate::index::normalize(v);
        }
    }
    Ok(())
}

/// Opens every file of a graph dump folder (`None`: no folder, or no complete dump in it), with
/// `meta.json` last.
fn pin_dump(dir: Option<&Path>) -> Result<Option<Vec<(String, std::fs::File)>>> {
    let Some(dir) = dir else {
        return Ok(None);
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_file() && entry.file_name() != "meta.json" {
            names.push(entry.file_name().to_string_lossy().to_string());
        }
    }
    names.sort();
    names.push("meta.json".to_string());
    let mut files = Vec::with_capacity(names.len());
    for name in names {
        match std::fs::File::open(dir.join(&name)) {
            Ok(f) => files.push((name, f)),
            // No meta.json yet (a dump being written) or a folder replaced meanwhile: no dump.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Some(files))
}

/// The install-in-progress marker, in the data dir.
const INSTALL_MARKER: &str = "install-in-progress";

/// What the install marker records: the snapshot file (relative to the data dir), its length, and
/// the caller's note (the Raft adapter's snapshot metadata).
#[derive(serde::Serialize, serde::Deserialize)]
struct InstallMarker {
    file: String,
    len: u64,
    note: Vec<u8>,
}

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Data directory (sled lives in `db/`, graph dumps in `graphs/`).
    pub data_dir: PathBuf,
    /// sled page cache.
    pub cache_bytes: u64,
    /// Backpressure: most points a collection may hold outside its graph before writes wait.
    pub max_unindexed: u64,
    /// Rebuild when tombstones exceed this fraction of a graph's points.
    pub rebuild_ratio: f64,
    /// Never rebuild graphs smaller than this.
    pub rebuild_min_points: u64,
    /// Dump a graph after this many inserts (when its indexer is idle) and at shutdown.
    pub dump_after_inserts: u64,
    /// Collections with at most this many points are searched exactly.
    pub exact_below: usize,
    /// The query cache's bound in bytes (0: off; `--query-cache-mb`).
    pub query_cache_bytes: u64,
    /// Tests only: a snapshot install pauses this long once, midway through its import (so that a
    /// test can kill the process while the state is half-imported).
    pub install_delay: Duration,
}

impl EngineOptions {
    /// Default sled page cache, in MiB (`--cache-mb`). Points are served from memory, so sled is
    /// read only at start-up (a sequential scan) and for log entries a follower lacks; the cache
    /// fills to its size all the same (255 MB of 256 at a million points, measured with
    /// heaptrack), and a smaller one loaded a million points as fast (issue 10).
    pub const CACHE_MB: u64 = 64;
    /// Default backpressure bound (`--max-unindexed`).
    pub const MAX_UNINDEXED: u64 = 20_000;
    /// Default rebuild threshold (`--rebuild-ratio`).
    pub const REBUILD_RATIO: f64 = 0.2;
    /// Default exact-search bound (`--exact-below`).
    pub const EXACT_BELOW: usize = 1_000;
    /// Default query cache, in MiB (`--query-cache-mb`): about 20,000 answers of 10 hits with
    /// small payloads.
    pub const QUERY_CACHE_MB: u64 = 64;

    /// Defaults for a data directory (the same as `quiver serve`'s).
    pub fn new(data_dir: impl Into<PathBuf>) -> EngineOptions {
        EngineOptions {
            data_dir: data_dir.into(),
            cache_bytes: Self::CACHE_MB << 20,
            max_unindexed: Self::MAX_UNINDEXED,
            rebuild_ratio: Self::REBUILD_RATIO,
            rebuild_min_points: 1_000,
            dump_after_inserts: 10_000,
            exact_below: Self::EXACT_BELOW,
            query_cache_bytes: Self::QUERY_CACHE_MB << 20,
            install_delay: Duration::ZERO,
        }
    }
}

struct ApplyState {
    next_cid: u64,
}

/// The state machine over all collections.
pub struct Engine {
    store: Store,
    opts: EngineOptions,
    collections: RwLock<BTreeMap<String, Arc<Collection>>>,
    apply_state: Mutex<ApplyState>,
    applied: AtomicU64,
    /// The note of an install whose marker is still on disk (see [`Engine::pending_install`]).
    pending_install: Mutex<Option<Vec<u8>>>,
    query_cache: QueryCache,
}

impl Engine {
    /// Opens the data directory, loading every collection and its graph dump.
    pub fn open(opts: EngineOptions) -> Result<Engine> {
        std::fs::create_dir_all(&opts.data_dir)?;
        let store = Store::open(&opts.data_dir.join("db"), opts.cache_bytes)?;
        let copts = Self::collection_options(&opts);
        let pending_install = Self::redo_install(&opts.data_dir, &store, &copts.graph_dir)?;
        let loaded = store.load()?;
        let mut collections = BTreeMap::new();
        let mut known = std::collections::HashSet::new();
        for (cid, meta) in loaded.collections {
            known.insert(cid.to_string());
            let c = Collection::open(cid, &meta, store.points(cid), copts.clone())?;
            collections.insert(meta.name.clone(), Arc::new(c));
        }
        // Dumps and vector files of collections that no longer exist (dropped before a crash)
        // are garbage.
        if let Ok(entries) = std::fs::read_dir(&copts.vector_dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if !known.contains(name.trim_end_matches(".f32")) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(&copts.graph_dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if !known.contains(&name) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(Engine {
            store,
            collections: RwLock::new(collections),
            apply_state: Mutex::new(ApplyState {
                next_cid: loaded.next_cid,
            }),
            applied: AtomicU64::new(loaded.applied),
            pending_install: Mutex::new(pending_install),
            query_cache: QueryCache::new(opts.query_cache_bytes),
            opts,
        })
    }

    /// At open: if an install was interrupted, imports its snapshot file again (the store may
    /// hold any part of it) and returns the install's note; the marker stays until
    /// [`Engine::finish_install`].
    fn redo_install(data_dir: &Path, store: &Store, graph_dir: &Path) -> Result<Option<Vec<u8>>> {
        let marker_path = data_dir.join(INSTALL_MARKER);
        let bytes = match std::fs::read(&marker_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let unusable = |why: String| {
            Error::Corrupt(format!(
                "a snapshot install was interrupted and cannot be redone ({why}); the state may be \
                 half-imported, so this node refuses to start: wipe its data dir (it then joins \
                 with a new id and receives a fresh snapshot)"
            ))
        };
        let marker: InstallMarker = bincode::deserialize(&bytes)
            .map_err(|e| unusable(format!("{}: {e}", marker_path.display())))?;
        let file = data_dir.join(&marker.file);
        let len = std::fs::metadata(&file)
            .map_err(|e| unusable(format!("{}: {e}", file.display())))?
            .len();
        if len != marker.len {
            return Err(unusable(format!(
                "{} holds {len} bytes, not {}",
                file.display(),
                marker.len
            )));
        }
        tracing::warn!(file = %file.display(), "a snapshot install was interrupted; importing the snapshot again");
        let started = std::time::Instant::now();
        Self::remove_graphs(graph_dir)?;
        let f = std::fs::File::open(&file).map_err(|e| unusable(e.to_string()))?;
        store
            .import(
                &mut std::io::BufReader::with_capacity(1 << 20, f),
                graph_dir,
                &mut || {},
            )
            .map_err(|e| {
                Error::Internal(format!(
                    "redoing an interrupted snapshot install from {} failed ({e}); the next \
                     start tries again",
                    file.display()
                ))
            })?;
        tracing::info!(
            secs = started.elapsed().as_secs_f64(),
            "interrupted snapshot install redone"
        );
        Ok(Some(marker.note))
    }

    /// Removes every graph dump (missing is fine).
    fn remove_graphs(graph_dir: &Path) -> Result<()> {
        match std::fs::remove_dir_all(graph_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn collection_options(opts: &EngineOptions) -> CollectionOptions {
        CollectionOptions {
            graph_dir: opts.data_dir.join("graphs"),
            vector_dir: opts.data_dir.join("vectors"),
            rebuild_ratio: opts.rebuild_ratio,
            rebuild_min_points: opts.rebuild_min_points,
            dump_after_inserts: opts.dump_after_inserts,
            exact_below: opts.exact_below,
        }
    }

    /// The engine's options.
    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }

    /// The store (for the Raft log trees, later).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Index of the last applied log entry (0 before any).
    pub fn last_applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Applies entries in order as one atomic store batch; returns one reply per entry.
    /// Entries at or below `last_applied` are skipped (replayed logs are harmless). Readers see
    /// an entry's changes as it is applied, and `last_applied` moves once the batch is committed
    /// to the store: a reader may see a change a moment before the index covers it, never after.
    /// An `Err` is a storage failure: the caller must stop taking writes.
    pub fn apply(&self, entries: &[(u64, Command)]) -> Result<Vec<Reply>> {
        self.apply_with(entries, Vec::new())
    }

    /// [`Engine::apply`], also writing `extra` metadata keys in the same atomic batch (the Raft
    /// adapter's applied log id and membership).
    pub fn apply_with(
        &self,
        entries: &[(u64, Command)],
        extra: Vec<(&[u8], Vec<u8>)>,
    ) -> Result<Vec<Reply>> {
        let mut st = self.apply_state.lock();
        let mut batch = WriteBatch::default();
        let mut replies = Vec::with_capacity(entries.len());
        let mut last = self.last_applied();
        let mut next_cid = st.next_cid;
        for (index, cmd) in entries {
            if *index <= last {
                replies.push(Reply::Rejected(ApplyError::Invalid(format!(
                    "log index {index} already applied"
                ))));
                continue;
            }
            replies.push(self.apply_one(cmd.clone(), &mut batch, &mut next_cid));
            last = *index;
        }
        if next_cid != st.next_cid {
            batch.set_next_cid(next_cid);
            st.next_cid = next_cid;
        }
        for (k, v) in extra {
            batch.put_raw(k, v);
        }
        self.store.commit(batch, last)?;
        self.applied.store(last, Ordering::Release);
        Ok(replies)
    }

    fn apply_one(&self, cmd: Command, batch: &mut WriteBatch, next_cid: &mut u64) -> Reply {
        match cmd {
            Command::CreateCollection { name, config } => {
                if let Err((field, msg)) = config.validate() {
                    return Reply::Rejected(ApplyError::Invalid(format!("{field}: {msg}")));
                }
                if let Err(msg) = crate::model::validate_collection_name(&name) {
                    return Reply::Rejected(ApplyError::Invalid(msg));
                }
                let mut cols = self.collections.write();
                if let Some(c) = cols.get(&name) {
                    return if *c.config() == config {
                        Reply::Created { created: false }
                    } else {
                        Reply::Rejected(ApplyError::CollectionConflict(name))
                    };
                }
                let cid = *next_cid;
                *next_cid += 1;
                let c =
                    Collection::create(cid, &name, config, Self::collection_options(&self.opts));
                batch.put_collection(
                    cid,
                    &crate::store::CollectionMeta {
                        name: name.clone(),
                        config,
                        next_iid: 0,
                        epoch_since: 0,
                        epoch_total: 0,
                    },
                );
                cols.insert(name, Arc::new(c));
                Reply::Created { created: true }
            }
            Command::DeleteCollection { name } => {
                let Some(c) = self.collections.write().remove(&name) else {
                    return Reply::Dropped { existed: false };
                };
                c.remove_all(batch);
                batch.remove_collection(c.id());
                c.destroy();
                Reply::Dropped { existed: true }
            }
            Command::Upsert { collection, points } => match self.get(&collection) {
                Ok(c) => match c.upsert(points, batch) {
                    Ok(count) => Reply::Upserted { count },
                    Err(e) => Reply::Rejected(e),
                },
                Err(_) => Reply::Rejected(ApplyError::CollectionNotFound(collection)),
            },
            Command::Delete {
                collection,
                selector,
            } => {
                let Ok(c) = self.get(&collection) else {
                    return Reply::Rejected(ApplyError::CollectionNotFound(collection));
                };
                let count = match selector {
                    DeleteSelector::Ids(ids) => c.delete_ids(&ids, batch),
                    DeleteSelector::Filter(text) => match serde_json::from_str::<Filter>(&text) {
                        Ok(f) => c.delete_filter(&f, batch),
                        Err(e) => {
                            return Reply::Rejected(ApplyError::Invalid(format!("filter: {e}")))
                        }
                    },
                };
                Reply::Deleted { count }
            }
            Command::Compact { collection } => match self.get(&collection) {
                Ok(c) => Reply::Compacted {
                    tombstones: c.compact(batch),
                },
                Err(_) => Reply::Rejected(ApplyError::CollectionNotFound(collection)),
            },
            Command::Noop => Reply::Noop,
            Command::Batch(cmds) => Reply::Batch(
                cmds.into_iter()
                    .map(|c| self.apply_one(c, batch, next_cid))
                    .collect(),
            ),
        }
    }

    /// Writes a snapshot of the whole state into `w` as it was at one instant between applies, and
    /// returns what `inspect` read from the store at that same instant (the Raft adapter reads its
    /// applied log id and membership).
    pub fn snapshot<T>(
        &self,
        w: &mut impl std::io::Write,
        inspect: impl FnOnce(&Store) -> Result<T>,
    ) -> Result<T> {
        // Each collection's latest graph dump is pinned first (its files opened: a later dump
        // replaces the folder, never these files), then the view is taken. So every shipped dump
        // is of a graph no newer than the shipped points, and the receiver can load it and index
        // only what it lacks. Pinned after the view, the dump was often newer than the points
        // under ingest, and the receiver had to rebuild from scratch (review L10).
        let pinned: BTreeMap<u64, Vec<(String, std::fs::File)>> = {
            let cols: Vec<Arc<Collection>> = self.collections.read().values().cloned().collect();
            let mut pinned = BTreeMap::new();
            for c in cols {
                if let Some(files) = c.with_graph_dump(pin_dump)? {
                    pinned.insert(c.id(), files);
                }
            }
            pinned
        };
        // Under the apply lock only take a consistent view (metadata keys, and shared handles to
        // every point); write it out after releasing the lock, so applies do not stall.
        let (seen, meta, views) = {
            let _st = self.apply_state.lock();
            let seen = inspect(&self.store)?;
            let meta = self.store.meta_entries()?;
            let cols: Vec<Arc<Collection>> = self.collections.read().values().cloned().collect();
            let views: Vec<_> = cols
                .iter()
                .map(|c| (c.clone(), c.snapshot_view()))
                .collect();
            (seen, meta, views)
        };
        Store::write_header(w)?;
        for (k, v) in &meta {
            Store::write_record(w, k, v)?;
        }
        for (c, (cmeta, points)) in &views {
            Store::write_collection(w, c.id(), cmeta)?;
            for (iid, id, stored, payload) in points {
                let vector = c.vector(*iid, stored).ok_or_else(|| {
                    Error::Internal(format!(
                        "cannot read the vector of point {iid} of {}",
                        c.id()
                    ))
                })?;
                let p = crate::store::StoredPoint {
                    id: id.clone(),
                    vector,
                    payload: payload.as_deref().map(str::to_owned),
                };
                Store::write_point(w, c.id(), *iid, &p)?;
            }
        }
        // Ship the pinned dumps, so that a new replica need not rebuild its graphs from scratch.
        // A dump is optional (the receiver rebuilds from the points): `meta.json`, which makes a
        // dump loadable, is shipped last and only when every other file was intact. A
        // collection created after the pinning ships none; one dropped since is not in the view.
        let mut pinned = pinned;
        for (c, (_, points)) in &views {
            let Some(mut files) = pinned.remove(&c.id()) else {
                continue;
            };
            // The dump's data file repeats the vector (or code) of every point shipped above;
            // those are left out (`slim_dump_data`), the receiver's graph shares its points'.
            // The data file names the graph's points by their numbers, whose internal ids the
            // dump's ids file holds; `points` is in internal id order.
            let ids = match files
                .iter_mut()
                .find(|(name, _)| name == crate::index::DUMP_IDS_FILE)
            {
                Some((_, file)) => crate::index::read_dump_ids(file)?,
                None => None,
            };
            let Some(ids) = ids else {
                tracing::warn!(
                    collection = c.id(),
                    "graph dump has no readable ids; not shipped (the receiver rebuilds)"
                );
                continue;
            };
            let shipped = |p: u64| {
                usize::try_from(p)
                    .ok()
                    .and_then(|p| ids.get(p))
                    .is_some_and(|iid| points.binary_search_by_key(iid, |point| point.0).is_ok())
            };
            for (name, mut file) in files {
                let name_in = format!("{}/{name}", c.id());
                let intact = if name == crate::index::DUMP_DATA_FILE {
                    let len = crate::index::slim_dump_data(&mut file, &shipped, None)?;
                    Store::export_generated(w, &name_in, len, |out| {
                        crate::index::slim_dump_data(&mut file, &shipped, Some(out))
                    })?
                } else {
                    Store::export_open_file(w, &name_in, file)?
                };
                if !intact {
                    tracing::warn!(collection = c.id(), file = %name, "graph dump changed during the snapshot; not shipped (the receiver rebuilds)");
                    break;
                }
            }
            tracing::debug!(collection = c.id(), "graph dump shipped in the snapshot");
        }
        // The view (a handle per point) is freed with this frame; hand its pages back.
        drop(views);
        crate::alloc::release_memory();
        Ok(seen)
    }

    /// Replaces the whole state with the snapshot in `path` (written by [`Engine::snapshot`]; a
    /// complete, fsynced file inside the data dir that stays there until the install is
    /// finished), crash-safely: records the install marker with `note`, then drops every
    /// collection, imports the store and the shipped graph dumps, and reloads collections (each
    /// loads its dump when it matches, and indexes only what the dump lacks).
    ///
    /// The marker stays until [`Engine::finish_install`]: a crash before that redoes the import at
    /// the next [`Engine::open`]. An `Err` after the marker was written leaves it in place too, so
    /// the caller must stop (as it must after any storage error).
    pub fn install_snapshot_file(&self, path: &Path, note: Vec<u8>) -> Result<()> {
        let rel = path
            .strip_prefix(&self.opts.data_dir)
            .map_err(|_| Error::Internal(format!("{} is outside the data dir", path.display())))?;
        let mut f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        // Refuse a foreign file before the marker exists (a redo could never succeed).
        let mut magic = [0u8; crate::store::SNAPSHOT_MAGIC.len()];
        std::io::Read::read_exact(&mut f, &mut magic)?;
        if &magic != crate::store::SNAPSHOT_MAGIC {
            return Err(Error::Corrupt(
                "not a snapshot of this quiver version (bad header)".into(),
            ));
        }
        let marker = InstallMarker {
            file: rel.to_string_lossy().to_string(),
            len,
            note: note.clone(),
        };
        let bytes =
            bincode::serialize(&marker).map_err(|e| Error::Internal(format!("marker: {e}")))?;
        crate::store::write_durable(&self.opts.data_dir.join(INSTALL_MARKER), &bytes)?;
        *self.pending_install.lock() = Some(note);
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0))?;
        self.install_stream(&mut std::io::BufReader::with_capacity(1 << 20, f), path)
    }

    /// The note of an install whose marker is still on disk: one redone by [`Engine::open`] after
    /// a crash, or one not yet confirmed with [`Engine::finish_install`].
    pub fn pending_install(&self) -> Option<Vec<u8>> {
        self.pending_install.lock().clone()
    }

    /// Confirms an install: removes its marker durably.
    pub fn finish_install(&self) -> Result<()> {
        let mut pending = self.pending_install.lock();
        match std::fs::remove_file(self.opts.data_dir.join(INSTALL_MARKER)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        crate::store::sync_dir(&self.opts.data_dir)?;
        *pending = None;
        Ok(())
    }

    /// The install proper: `r` reads the snapshot file at `path`.
    fn install_stream(&self, r: &mut impl std::io::Read, path: &Path) -> Result<()> {
        let mut st = self.apply_state.lock();
        let old: Vec<Arc<Collection>> = std::mem::take(&mut *self.collections.write())
            .into_values()
            .collect();
        // `destroy` waits for a snapshot export of the same collection to finish with its dump
        // (dump lock) and marks it gone, so no later export reads the folder that is re-imported
        // under the same collection id below.
        for c in old {
            c.destroy();
        }
        let copts = Self::collection_options(&self.opts);
        Self::remove_graphs(&copts.graph_dir)?;
        let mut delay = self.opts.install_delay;
        let mut pause = || {
            if !delay.is_zero() {
                tracing::warn!(
                    ms = delay.as_millis() as u64,
                    "test delay inside a snapshot install"
                );
                std::thread::sleep(delay);
                delay = Duration::ZERO;
            }
        };
        let started = std::time::Instant::now();
        let imported = self.store.import_indexed(r, &copts.graph_dir, &mut pause)?;
        tracing::info!(
            records = imported.records,
            secs = started.elapsed().as_secs_f64(),
            "snapshot imported into the store"
        );
        let loaded = self.store.load()?;
        let mut cols = BTreeMap::new();
        for (cid, meta) in loaded.collections {
            // The points are read back from the file just imported rather than from sled.
            let c = match imported.points.get(&cid) {
                Some(range) => {
                    let points = Store::exported_points(path, cid, *range)?;
                    Collection::open(cid, &meta, points, copts.clone())?
                }
                None => Collection::open(cid, &meta, self.store.points(cid), copts.clone())?,
            };
            // The received dump lacks the shipped points' data: replace it with a whole one.
            c.dump_when_idle();
            cols.insert(meta.name.clone(), Arc::new(c));
        }
        tracing::info!(
            collections = cols.len(),
            secs = started.elapsed().as_secs_f64(),
            "collections opened from the snapshot"
        );
        *self.collections.write() = cols;
        st.next_cid = loaded.next_cid;
        self.applied.store(loaded.applied, Ordering::Release);
        Ok(())
    }

    /// Makes every applied write durable (one fsync for everything since the last flush).
    pub fn flush(&self) -> Result<()> {
        self.store.flush()
    }

    /// A collection by name.
    pub fn get(&self, name: &str) -> Result<Arc<Collection>> {
        self.collections
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::CollectionNotFound(name.to_string()))
    }

    /// Every collection's info, by name.
    pub fn list(&self) -> Vec<CollectionInfo> {
        self.each(Collection::info)
    }

    /// `f` of every collection, by name; the collection map is not held while `f` runs.
    pub fn each<T>(&self, f: impl Fn(&Collection) -> T) -> Vec<T> {
        let cols: Vec<Arc<Collection>> = self.collections.read().values().cloned().collect();
        cols.iter().map(|c| f(c)).collect()
    }

    /// Collections whose indexer failed and whose graph is being rebuilt: (name, why).
    pub fn indexer_failures(&self) -> Vec<(String, String)> {
        self.collections
            .read()
            .iter()
            .filter_map(|(name, c)| c.indexer_failure().map(|why| (name.clone(), why)))
            .collect()
    }

    /// One collection's info.
    pub fn info(&self, name: &str) -> Result<CollectionInfo> {
        Ok(self.get(name)?.info())
    }

    /// Nearest-neighbour search in one collection, through the query cache.
    pub fn search(&self, name: &str, params: &SearchParams) -> Result<Vec<Hit>> {
        Ok(self.query_cache.search(&*self.get(name)?, params, true))
    }

    /// The node's query cache.
    pub fn query_cache(&self) -> &QueryCache {
        &self.query_cache
    }

    /// One point.
    pub fn get_point(&self, name: &str, id: &PointId) -> Result<PointRecord> {
        self.get(name)?
            .get(id, true)
            .ok_or_else(|| Error::PointNotFound(id.to_string()))
    }

    /// Backpressure before applying `cmd`: waits while any collection it writes to has more than
    /// `max_unindexed` points outside its graph. Returns false on timeout (the write proceeds).
    pub fn wait_for_room(&self, cmd: &Command, timeout: Duration) -> bool {
        match cmd {
            Command::Upsert { collection, .. } => match self.get(collection) {
                Ok(c) => c.wait_for_room(self.opts.max_unindexed, timeout),
                Err(_) => true,
            },
            Command::Batch(cmds) => cmds.iter().all(|c| self.wait_for_room(c, timeout)),
            _ => true,
        }
    }

    /// Waits until every collection's graph holds all applied points (tests and benchmarks).
    pub fn wait_indexed(&self, timeout: Duration) -> bool {
        let cols: Vec<Arc<Collection>> = self.collections.read().values().cloned().collect();
        cols.iter().all(|c| c.wait_indexed(timeout))
    }

    /// Stops indexers (dumping graphs) and flushes the store.
    pub fn close(&self) -> Result<()> {
        let cols: Vec<Arc<Collection>> = self.collections.read().values().cloned().collect();
        for c in cols {
            c.close();
        }
        self.store.flush()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let cols: Vec<Arc<Collection>> = self.collections.read().values().cloned().collect();
        for c in cols {
            c.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CollectionConfig, Metric, PointWrite, Quantization};
    use std::time::Instant;

    fn opts(dir: &Path) -> EngineOptions {
        let mut o = EngineOptions::new(dir);
        o.cache_bytes = 4 << 20;
        o.exact_below = 0;
        o.dump_after_inserts = 50;
        o
    }

    fn fill(e: &Engine, name: &str, from: u64, n: u64, index: u64) {
        fill_as(e, name, from, n, index, Quantization::None)
    }

    fn fill_as(e: &Engine, name: &str, from: u64, n: u64, index: u64, q: Quantization) {
        let config = CollectionConfig {
            quantization: q,
            ..CollectionConfig::new(4, Metric::L2)
        };
        let points = (0..n)
            .map(|i| PointWrite {
                id: PointId::Num(from + i),
                vector: vec![i as f32, (i % 7) as f32, 1.0, 0.5],
                payload: None,
            })
            .collect();
        let cmds = [
            (
                index,
                Command::CreateCollection {
                    name: name.into(),
                    config,
                },
            ),
            (
                index + 1,
                Command::Upsert {
                    collection: name.into(),
                    points,
                },
            ),
        ];
        e.apply(&cmds).unwrap();
    }

    /// Issue 10: an epoch decided while a rebuild is in flight waits for that rebuild instead of
    /// abandoning it. Under a churn that decides epochs faster than a build takes, abandoning
    /// meant that no build finished and the dead points' memory was never handed back.
    #[test]
    fn a_rebuild_in_flight_finishes_when_a_newer_epoch_is_decided() {
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open(opts(dir.path())).unwrap();
        fill(&e, "c", 0, 6_000, 1);
        assert!(e.wait_indexed(Duration::from_secs(120)));
        let c = e.get("c").unwrap();
        // Each round replaces a third of the points: past `rebuild_ratio`, a new epoch.
        let replace = |round: u64, index: u64| {
            let points = (0..2_000)
                .map(|i| PointWrite {
                    id: PointId::Num(round * 2_000 + i),
                    vector: vec![i as f32, round as f32, 2.0, 0.5],
                    payload: None,
                })
                .collect();
            let cmd = Command::Upsert {
                collection: "c".into(),
                points,
            };
            e.apply(&[(index, cmd)]).unwrap();
        };
        replace(0, 3);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !c.rebuild_in_flight() {
            assert!(Instant::now() < deadline, "the first rebuild never started");
            std::thread::sleep(Duration::from_millis(1));
        }
        replace(1, 4);
        assert_eq!(c.info().tombstones, 0, "the second round decided an epoch");
        assert!(e.wait_indexed(Duration::from_secs(120)));
        assert_eq!(c.rebuilds(), 2, "both epochs were built and swapped in");
        assert_eq!(c.info().points, 6_000);
    }

    /// Issue 10: once a rebuild no longer needs the vectors of a chunk of dead points, an int8
    /// collection's vector file gives their disk space back (it grew with every write until
    /// the next start), and the live points' rows still read back.
    #[test]
    fn released_chunks_give_their_vector_file_space_back() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open(opts(dir.path())).unwrap();
        fill_as(&e, "c", 0, 3 * 1_024, 1, Quantization::Int8);
        assert!(e.wait_indexed(Duration::from_secs(60)));
        let c = e.get("c").unwrap();
        let file = dir.path().join(format!("vectors/{}.f32", c.id()));
        let used = || std::fs::metadata(&file).unwrap().blocks() * 512;
        // 3,072 rows of 4 floats: 48 KiB.
        assert!(used() >= 48 << 10, "{}", used());
        // Two thirds dead: past `rebuild_ratio`, a rebuild; it releases the two dead chunks.
        let selector = DeleteSelector::Ids((0..2 * 1_024).map(PointId::Num).collect());
        let cmd = Command::Delete {
            collection: "c".into(),
            selector,
        };
        e.apply(&[(3, cmd)]).unwrap();
        assert!(e.wait_indexed(Duration::from_secs(60)));
        assert_eq!(c.rebuilds(), 1);
        assert!(used() <= 16 << 10, "{}", used());
        let got = c.get(&PointId::Num(2_500), true).unwrap();
        assert_eq!(got.vector, vec![2_500.0, 1.0, 1.0, 0.5]);
    }

    /// Issue 10: after a restart with a complete graph dump, searches walk the frozen search copy
    /// again at once (they went through hnsw_rs, 1.6x slower, until new points arrived).
    #[test]
    fn a_reloaded_graph_gets_its_search_copy_without_new_points() {
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open(opts(dir.path())).unwrap();
        fill(&e, "c", 0, 2_000, 1);
        let c = e.get("c").unwrap();
        assert!(c.wait_indexed(Duration::from_secs(30)));
        c.close();
        drop(c);
        drop(e);
        let e = Engine::open(opts(dir.path())).unwrap();
        let c = e.get("c").unwrap();
        wait_for_search_copy(&c);
    }

    /// Waits (up to 30 s) until the collection's frozen search copy covers its whole graph.
    fn wait_for_search_copy(c: &Collection) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while c.search_copy_lag() != Some(0) {
            assert!(
                std::time::Instant::now() < deadline,
                "no search copy: {:?}",
                c.search_copy_lag()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Issue 11: the HTTP layer runs a search on its own task only when it is a short walk of
    /// the search copy; anything that may scan, filter or read from disk goes to a blocking thread.
    #[test]
    fn only_short_walks_of_the_search_copy_are_quick() {
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open(opts(dir.path())).unwrap();
        fill(&e, "c", 0, 2_000, 1);
        let c = e.get("c").unwrap();
        assert!(c.wait_indexed(Duration::from_secs(30)));
        wait_for_search_copy(&c);
        let plain = SearchParams::nearest(vec![1.0, 2.0, 1.0, 0.5], 10, 32);
        assert!(c.quick_search(&plain));
        let wide = SearchParams::nearest(vec![1.0, 2.0, 1.0, 0.5], 10, collection::QUICK_EF + 1);
        assert!(!c.quick_search(&wide));
        let many = SearchParams::nearest(vec![1.0, 2.0, 1.0, 0.5], collection::QUICK_EF + 1, 16);
        assert!(!c.quick_search(&many));
        let exact = SearchParams {
            exact: true,
            ..plain.clone()
        };
        assert!(!c.quick_search(&exact));
        let filtered = SearchParams {
            filter: Some(
                serde_json::from_str(r#"{"must": [{"key": "a", "match": {"value": 1}}]}"#).unwrap(),
            ),
            ..plain.clone()
        };
        assert!(!c.quick_search(&filtered));
        let mut config = CollectionConfig::new(4, Metric::L2);
        config.quantization = crate::model::Quantization::Int8;
        e.apply(&[(
            3,
            Command::CreateCollection {
                name: "q".into(),
                config,
            },
        )])
        .unwrap();
        let q = e.get("q").unwrap();
        assert!(
            !q.quick_search(&plain),
            "a quantised collection reads vectors from disk"
        );
    }

    /// Review L4: apply holds a vector to its collection's rule even when the API checked it
    /// against another collection of the same name (dropped and re-created in between).
    #[test]
    fn apply_normalises_cosine_vectors_and_refuses_zero_ones() {
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open(opts(dir.path())).unwrap();
        let config = CollectionConfig::new(2, Metric::Cosine);
        let write = |id: u64, vector: Vec<f32>| Command::Upsert {
            collection: "c".into(),
            points: vec![PointWrite {
                id: PointId::Num(id),
                vector,
                payload: None,
            }],
        };
        let replies = e
            .apply(&[
                (
                    1,
                    Command::CreateCollection {
                        name: "c".into(),
                        config,
                    },
                ),
                (2, write(1, vec![3.0, 4.0])),
                (3, write(2, vec![0.0, 0.0])),
            ])
            .unwrap();
        assert_eq!(replies[1], Reply::Upserted { count: 1 });
        assert!(matches!(
            replies[2],
            Reply::Rejected(ApplyError::Invalid(_))
        ));
        let stored = e.get("c").unwrap().get(&PointId::Num(1), true).unwrap();
        let v = stored.vector;
        assert!(
            (v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6,
            "{v:?}"
        );
        assert!(e.get("c").unwrap().get(&PointId::Num(2), true).is_none());
    }

    /// Review L10: a snapshot ships a graph dump no newer than its points, even when the indexer
    /// dumps a newer graph while the snapshot is being written out (under ingest, the old order
    /// shipped the newer dump, which the receiver had to reject and rebuild from scratch).
    #[test]
    fn a_snapshot_ships_a_graph_dump_no_newer_than_its_points() {
        let src = tempfile::tempdir().unwrap();
        let a = Engine::open(opts(src.path())).unwrap();
        // Whole blocks of ids (index::BLOCK), so that every point gets into the graph.
        fill(&a, "c", 0, 1_024, 1);
        let c = a.get("c").unwrap();
        assert!(c.wait_indexed(Duration::from_secs(30)));
        let meta_path = src.path().join(format!("graphs/{}/meta.json", c.id()));
        let watermark = |path: &Path| -> u64 {
            let meta: serde_json::Value =
                serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
            meta["watermark"].as_u64().unwrap()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !meta_path.exists() || watermark(&meta_path) < 1_024 {
            assert!(std::time::Instant::now() < deadline, "no idle dump");
            std::thread::sleep(Duration::from_millis(10));
        }

        /// Grows the collection and dumps it at the first write, i.e. after the view was taken.
        struct Hook<'a> {
            engine: &'a Engine,
            out: Vec<u8>,
            fired: bool,
        }
        impl std::io::Write for Hook<'_> {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                if !self.fired {
                    self.fired = true;
                    let points = (1_024..2_048)
                        .map(|i| PointWrite {
                            id: PointId::Num(i),
                            vector: vec![i as f32, 1.0, 0.5, 0.25],
                            payload: None,
                        })
                        .collect();
                    let cmd = Command::Upsert {
                        collection: "c".into(),
                        points,
                    };
                    self.engine.apply(&[(3, cmd)]).unwrap();
                    let c = self.engine.get("c").unwrap();
                    assert!(c.wait_indexed(Duration::from_secs(30)));
                    c.close(); // the final dump: watermark 2,048
                }
                self.out.extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut hook = Hook {
            engine: &a,
            out: Vec::new(),
            fired: false,
        };
        a.snapshot(&mut hook, |_| Ok(())).unwrap();
        assert_eq!(
            watermark(&meta_path),
            2_048,
            "the newer dump was written meanwhile"
        );

        let dst = tempfile::tempdir().unwrap();
        let b = Engine::open(opts(dst.path())).unwrap();
        let files = dst.path().join("shipped");
        b.store()
            .import(&mut &hook.out[..], &files, &mut || {})
            .unwrap();
        let shipped = files.join(format!("{}/meta.json", c.id()));
        assert!(shipped.exists(), "no dump shipped");
        assert_eq!(watermark(&shipped), 1_024);
    }

    /// The length of the side file `name` in an export stream (its record's announced length).
    fn side_file_len(stream: &[u8], name: &str) -> Option<u64> {
        let key = [crate::store::FILE_PREFIX, name.as_bytes()].concat();
        let at = stream.windows(key.len()).position(|w| w == key)? + key.len();
        Some(u64::from_le_bytes(stream[at..at + 8].try_into().ok()?))
    }

    /// Issue 10: a snapshot leaves out the dumped data of the points it ships whole, yet the
    /// receiver loads the shipped graph at once (no rebuild) and answers as the sender does; it
    /// then writes a whole dump of its own, so that a restart after later deletes still loads.
    #[test]
    fn a_snapshot_ships_each_vector_once_and_the_receiver_loads_its_graph() {
        snapshot_ships_each_vector_once_and_the_receiver_loads_its_graph(Quantization::None);
    }

    /// The same for a collection whose walk reads int8 codes: the codes are made from the
    /// shipped vectors, so leader, receiver and restarted receiver answer alike.
    #[test]
    fn an_int8_ram_snapshot_receiver_answers_as_the_leader_before_and_after_a_restart() {
        snapshot_ships_each_vector_once_and_the_receiver_loads_its_graph(Quantization::Int8Ram);
    }

    fn snapshot_ships_each_vector_once_and_the_receiver_loads_its_graph(q: Quantization) {
        let src = tempfile::tempdir().unwrap();
        let a = Engine::open(opts(src.path())).unwrap();
        fill_as(&a, "c", 0, 1_024, 1, q);
        let c = a.get("c").unwrap();
        assert!(c.wait_indexed(Duration::from_secs(30)));
        let graph = |dir: &Path, file: &str| dir.join(format!("graphs/{}/{file}", c.id()));
        let wait_for = |what: &str, ok: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !ok() {
                assert!(std::time::Instant::now() < deadline, "{what}");
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        let data_len = |dir: &Path| {
            std::fs::metadata(graph(dir, crate::index::DUMP_DATA_FILE)).map_or(0, |m| m.len())
        };
        let watermark = |dir: &Path| -> u64 {
            std::fs::read(graph(dir, "meta.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|m| m["watermark"].as_u64())
                .unwrap_or(0)
        };
        wait_for("no whole dump", &|| watermark(src.path()) == 1_024);
        let whole = data_len(src.path());
        // Deleted after the dump: the graph still routes through them, the snapshot does not
        // carry them, so their dumped data must travel.
        let delete = |e: &Engine, ids: std::ops::Range<u64>, index: u64| {
            let selector = DeleteSelector::Ids(ids.map(PointId::Num).collect());
            let cmd = Command::Delete {
                collection: "c".into(),
                selector,
            };
            e.apply(&[(index, cmd)]).unwrap();
        };
        delete(&a, 0..100, 3);
        // A second collection: the receiver opens each from its own records of the file.
        fill(&a, "d", 10_000, 300, 10);
        let mut stream = Vec::new();
        a.snapshot(&mut stream, |_| Ok(())).unwrap();
        let shipped = side_file_len(
            &stream,
            &format!("{}/{}", c.id(), crate::index::DUMP_DATA_FILE),
        )
        .unwrap();
        assert_eq!(
            whole - shipped,
            924 * 4 * 4,
            "the 924 live vectors left out"
        );

        let dst = tempfile::tempdir().unwrap();
        let b = Engine::open(opts(dst.path())).unwrap();
        std::fs::create_dir_all(dst.path().join("snapshots")).unwrap();
        let file = dst.path().join("snapshots/snap-x.data");
        std::fs::write(&file, &stream).unwrap();
        b.install_snapshot_file(&file, Vec::new()).unwrap();
        b.finish_install().unwrap();
        let cb = b.get("c").unwrap();
        assert_eq!(cb.info().unindexed, 0, "the shipped graph was not loaded");
        assert_eq!(cb.info().config.quantization, q);
        assert_eq!(cb.len(), 924);
        let (da, db) = (a.get("d").unwrap(), b.get("d").unwrap());
        assert_eq!(db.len(), 300);
        for id in [10_000, 10_150, 10_299] {
            assert_eq!(
                da.get(&PointId::Num(id), true),
                db.get(&PointId::Num(id), true)
            );
        }
        let query =
            |i: u64| SearchParams::nearest(vec![i as f32 * 0.37, (i % 5) as f32, 0.5, 1.0], 10, 16);
        let same = |x: &Engine, y: &Engine| {
            for i in 0..50 {
                let (p, q) = (x.get("c").unwrap(), y.get("c").unwrap());
                assert_eq!(p.search(&query(i)), q.search(&query(i)), "query {i}");
            }
        };
        same(&a, &b);
        // The receiver replaces the slim dump with a whole one of its own...
        wait_for("no whole dump on the receiver", &|| {
            data_len(dst.path()) == whole
        });
        drop(cb);
        delete(&a, 100..200, 12);
        delete(&b, 100..200, 12);
        drop(b);
        // ... so that after more deletes a restart still loads the graph.
        let b = Engine::open(opts(dst.path())).unwrap();
        assert_eq!(b.get("c").unwrap().info().unindexed, 0, "dump not loaded");
        same(&a, &b);
    }

    /// A crash in the middle of an install (marker written, store half-imported) is undone at
    /// the next open: the import is redone from the retained file before anything loads.
    #[test]
    fn an_interrupted_install_is_redone_at_open() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let a = Engine::open(opts(src.path())).unwrap();
        fill(&a, "c", 0, 5_000, 1);
        std::fs::create_dir_all(dst.path().join("snapshots")).unwrap();
        let file = dst.path().join("snapshots/snap-x.data");
        let mut stream = Vec::new();
        a.snapshot(&mut stream, |_| Ok(())).unwrap();
        std::fs::write(&file, &stream).unwrap();
        drop(a);

        {
            let b = Engine::open(opts(dst.path())).unwrap();
            fill(&b, "old", 100_000, 10, 1);
            // What install_snapshot_file leaves when the process dies midway: the marker, and a
            // store cleared and partly rewritten.
            let marker = InstallMarker {
                file: "snapshots/snap-x.data".into(),
                len: stream.len() as u64,
                note: b"note".to_vec(),
            };
            crate::store::write_durable(
                &dst.path().join(INSTALL_MARKER),
                &bincode::serialize(&marker).unwrap(),
            )
            .unwrap();
            let cut = &stream[..stream.len() / 2];
            assert!(b
                .store()
                .import(&mut &cut[..], &dst.path().join("graphs"), &mut || {})
                .is_err());
            b.store().flush().unwrap();
        }
        let b = Engine::open(opts(dst.path())).unwrap();
        assert_eq!(b.pending_install(), Some(b"note".to_vec()));
        assert!(b.get("old").is_err());
        assert_eq!(b.get("c").unwrap().len(), 5_000);
        assert_eq!(b.last_applied(), 2);
        b.finish_install().unwrap();
        assert!(!dst.path().join(INSTALL_MARKER).exists());
        drop(b);
        let b = Engine::open(opts(dst.path())).unwrap();
        assert_eq!(b.pending_install(), None);
        assert_eq!(b.get("c").unwrap().len(), 5_000);
    }

    #[test]
    fn an_install_marker_without_its_file_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(Engine::open(opts(dir.path())).unwrap());
        let marker = InstallMarker {
            file: "snapshots/snap-gone.data".into(),
            len: 10,
            note: Vec::new(),
        };
        std::fs::write(
            dir.path().join(INSTALL_MARKER),
            bincode::serialize(&marker).unwrap(),
        )
        .unwrap();
        let err = Engine::open(opts(dir.path())).err().unwrap();
        assert!(err.to_string().contains("refuses to start"), "{err}");
    }

    /// Blocks the snapshot export at its first side file while another thread drops the
    /// collection whose dump is being exported.
    struct Racer {
        engine: Arc<Engine>,
        dropped: Option<std::thread::JoinHandle<()>>,
    }

    impl std::io::Write for Racer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.dropped.is_none() && buf.starts_with(b"\xfffile/") {
                let (e, (tx, rx)) = (self.engine.clone(), std::sync::mpsc::channel());
                self.dropped = Some(std::thread::spawn(move || {
                    e.apply(&[(10, Command::DeleteCollection { name: "c".into() })])
                        .unwrap();
                    let _ = tx.send(());
                }));
                // Before the fix the drop removed the dump folder here, under the export.
                let _ = rx.recv_timeout(Duration::from_millis(500));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn dropping_a_collection_during_a_dump_export_does_not_fail_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let e = Arc::new(Engine::open(opts(dir.path())).unwrap());
        fill(&e, "c", 0, 300, 1);
        assert!(e.wait_indexed(Duration::from_secs(30)));
        let meta = dir.path().join("graphs/1/meta.json");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !meta.exists() {
            assert!(std::time::Instant::now() < deadline, "no graph dump");
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut w = Racer {
            engine: e.clone(),
            dropped: None,
        };
        e.snapshot(&mut w, |_| Ok(())).unwrap();
        w.dropped.take().unwrap().join().unwrap();
        assert!(e.get("c").is_err());
        assert!(!dir.path().join("graphs/1").exists());
    }
}

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
//! Caveats: after a restart, points deleted before they were indexed are no longer available, so
//! the graph rebuilt or replayed on that node may differ slightly from one that never restarted
//! (searches stay correct; only approximate-result ties can differ).

mod collection;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

pub use collection::{Collection, CollectionOptions, SearchParams};

use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::model::{
    ApplyError, CollectionInfo, Command, DeleteSelector, Hit, PointId, PointRecord, Reply,
};
use crate::store::{Store, WriteBatch};

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
}

impl EngineOptions {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> EngineOptions {
        EngineOptions {
            data_dir: data_dir.into(),
            cache_bytes: 256 << 20,
            max_unindexed: 20_000,
            rebuild_ratio: 0.2,
            rebuild_min_points: 1_000,
            dump_after_inserts: 10_000,
            exact_below: 1_000,
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
}

impl Engine {
    /// Opens the data directory, loading every collection and its graph dump.
    pub fn open(opts: EngineOptions) -> Result<Engine> {
        std::fs::create_dir_all(&opts.data_dir)?;
        let store = Store::open(&opts.data_dir.join("db"), opts.cache_bytes)?;
        let loaded = store.load()?;
        let copts = Self::collection_options(&opts);
        let mut collections = BTreeMap::new();
        let mut known = std::collections::HashSet::new();
        for (cid, meta, points) in loaded.collections {
            known.insert(cid.to_string());
            let c = Collection::open(cid, &meta, points, copts.clone());
            collections.insert(meta.name.clone(), Arc::new(c));
        }
        // Dumps of collections that no longer exist (dropped before a crash) are garbage.
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
            opts,
            collections: RwLock::new(collections),
            apply_state: Mutex::new(ApplyState {
                next_cid: loaded.next_cid,
            }),
            applied: AtomicU64::new(loaded.applied),
        })
    }

    fn collection_options(opts: &EngineOptions) -> CollectionOptions {
        CollectionOptions {
            graph_dir: opts.data_dir.join("graphs"),
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
    /// Entries at or below `last_applied` are skipped (replayed logs are harmless).
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
        for (k, v) in &meta {
            Store::write_record(w, k, v)?;
        }
        for (c, (cmeta, points)) in &views {
            Store::write_collection(w, c.id(), cmeta)?;
            for (iid, id, vector, payload) in points {
                let p = crate::store::StoredPoint {
                    id: id.clone(),
                    vector: vector.to_vec(),
                    payload: payload.as_ref().map(|v| v.to_string()),
                };
                Store::write_point(w, c.id(), *iid, &p)?;
            }
        }
        // Ship each collection's latest graph dump, so that a new replica need not rebuild its
        // graphs from scratch: it loads the dump and inserts only the points the dump lacks.
        for (c, _) in &views {
            c.with_graph_dump(|dir| -> Result<()> {
                if !dir.join("meta.json").exists() {
                    return Ok(());
                }
                for entry in std::fs::read_dir(dir)? {
                    let entry = entry?;
                    let name = entry.file_name().to_string_lossy().to_string();
                    Store::export_file(w, &format!("{}/{name}", c.id()), &entry.path())?;
                }
                tracing::debug!(collection = c.id(), "graph dump shipped in the snapshot");
                Ok(())
            })?;
        }
        Ok(seen)
    }

    /// Replaces the whole state with a snapshot written by [`Engine::snapshot`]: drops every
    /// collection, imports the store and the shipped graph dumps, reloads collections (each loads
    /// its dump when it matches, and indexes only what the dump lacks).
    pub fn install_snapshot(&self, r: &mut impl std::io::Read) -> Result<()> {
        let mut st = self.apply_state.lock();
        let old: Vec<Arc<Collection>> = std::mem::take(&mut *self.collections.write())
            .into_values()
            .collect();
        for c in old {
            c.destroy();
        }
        let copts = Self::collection_options(&self.opts);
        let _ = std::fs::remove_dir_all(&copts.graph_dir);
        self.store.import(r, &copts.graph_dir)?;
        let loaded = self.store.load()?;
        let mut cols = BTreeMap::new();
        for (cid, meta, points) in loaded.collections {
            cols.insert(
                meta.name.clone(),
                Arc::new(Collection::open(cid, &meta, points, copts.clone())),
            );
        }
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
        let cols: Vec<Arc<Collection>> = self.collections.read().values().cloned().collect();
        cols.iter().map(|c| c.info()).collect()
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

    /// Nearest-neighbour search in one collection.
    pub fn search(&self, name: &str, params: &SearchParams) -> Result<Vec<Hit>> {
        Ok(self.get(name)?.search(params))
    }

    /// One point.
    pub fn get_point(&self, name: &str, id: &PointId) -> Result<PointRecord> {
        self.get(name)?
            .get(id)
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

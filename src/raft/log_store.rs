//! The Raft log in sled: tree `raft_log` maps big-endian index → bincode entry; tree `raft_meta`
//! holds the vote, the committed log id and the last purged log id. On a voter an append is
//! reported to openraft only after `flush_async` (fsync) returns. A read replica (a learner)
//! reports it once written: it takes no part in any commit, so an entry it loses in a crash was
//! never counted towards one, and the leader sends it again (openraft's
//! `loosen-follower-log-revert` lets the leader accept that its log moved back). Waiting for the
//! fsync held each learner's one replication request in flight for the length of a flush, and
//! the commit index that lets it apply a write waited behind it (issue 11: replica lag p99
//! 29 ms at 400 writes/s, 7.9 ms with the data on tmpfs). [`Durability`] says which it is.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use parking_lot::Mutex;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{EntryPayload, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};

use super::typ::{Entry, LogId};
use super::{decode, encode, NodeId, TypeConfig};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"last_purged";

/// Whether this node's appends must be fsynced before they are acknowledged: yes unless the
/// node is known to be a learner. Decided by the membership entries the log store appends
/// itself (before any later entry is acknowledged), and at start or after a snapshot by the
/// membership openraft reports ([`Durability::observe`]); a decision is only ever replaced by
/// one from a later membership, so a late report cannot undo a promotion to voter. Any doubt
/// (a start, a truncation) means durable.
#[derive(Clone, Default)]
pub struct Durability(Arc<Mutex<(u64, bool)>>);

impl Durability {
    /// Records that the membership at log index `index` makes this node a learner or not.
    pub fn observe(&self, index: u64, learner: bool) {
        let mut d = self.0.lock();
        if index > d.0 {
            *d = (index, learner);
        }
    }

    /// True when appends may be acknowledged before they are fsynced.
    pub fn learner(&self) -> bool {
        self.0.lock().1
    }

    fn doubt(&self) {
        self.0.lock().1 = false;
    }
}

/// The log store (cheap to clone; clones share the trees).
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    id: NodeId,
    durability: Durability,
    /// Held by the purge that is removing entries ([`LogStore::purge`]).
    purging: Arc<Mutex<()>>,
}

/// [`LogStore::remove_indexes`] on `log`.
fn remove_indexes(log: &sled::Tree, from: u64, to: u64) -> sled::Result<()> {
    const PER_BATCH: u64 = 8;
    for at in (from..=to).step_by(PER_BATCH as usize) {
        let mut batch = sled::Batch::default();
        for i in at..=to.min(at.saturating_add(PER_BATCH - 1)) {
            batch.remove(&i.to_be_bytes());
        }
        log.apply_batch(batch)?;
    }
    Ok(())
}

/// The log index a key holds (big-endian), or `None` for a key that is not 8 bytes.
fn index_of(key: &[u8]) -> Option<u64> {
    key.try_into().ok().map(u64::from_be_bytes)
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_logs(&e).into()
}
fn write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_logs(&e).into()
}

impl LogStore {
    /// Opens the log trees in `db` (the same database as the state machine: one fsync covers both).
    /// `id` is this node's: membership entries naming it a voter make appends durable.
    pub fn open(db: &sled::Db, id: NodeId) -> Result<LogStore, sled::Error> {
        Ok(LogStore {
            db: db.clone(),
            log: db.open_tree("raft_log")?,
            meta: db.open_tree("raft_meta")?,
            id,
            durability: Durability::default(),
            purging: Arc::new(Mutex::new(())),
        })
    }

    /// Whether appends are fsynced before they are acknowledged (shared with the store's clones).
    pub fn durability(&self) -> Durability {
        self.durability.clone()
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError<NodeId>> {
        match self.meta.get(key).map_err(read_err)? {
            Some(v) => Ok(Some(decode(&v).map_err(|e| read_err(*e))?)),
            None => Ok(None),
        }
    }

    async fn put_meta<T: serde::Serialize>(
        &self,
        key: &[u8],
        v: &T,
    ) -> Result<(), StorageError<NodeId>> {
        self.meta.insert(key, encode(v)).map_err(write_err)?;
        self.db.flush_async().await.map_err(write_err)?;
        Ok(())
    }

    /// Removes the entries `from..=to` by key (the log's indexes are contiguous), a few per
    /// batch. sled reads a leaf, values and all, to remove a key from it, and an entry holds up
    /// to 4,096 points: one batch removing the 1,000 entries a snapshot purges (half a million
    /// points) held them all at once and raised the resident size by 600 MB for seconds; small
    /// batches let the page cache drop each leaf before the next is read (issue 10).
    fn remove_indexes(&self, from: u64, to: u64) -> Result<(), StorageError<NodeId>> {
        remove_indexes(&self.log, from, to).map_err(write_err)
    }

    /// The index of the entry `first()` or `last()` found.
    fn edge(
        found: sled::Result<Option<(sled::IVec, sled::IVec)>>,
    ) -> Result<Option<u64>, StorageError<NodeId>> {
        Ok(found.map_err(read_err)?.and_then(|(k, _)| index_of(&k)))
    }

    /// True when this node has never voted nor logged anything (a fresh data dir).
    pub fn is_pristine(&self) -> bool {
        self.log.is_empty() && self.meta.get(VOTE).ok().flatten().is_none()
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        for kv in self.log.range(start.to_be_bytes()..) {
            let (k, v) = kv.map_err(read_err)?;
            let idx = index_of(&k).unwrap_or(u64::MAX);
            if !range.contains(&idx) {
                break;
            }
            out.push(decode::<Entry>(&v).map_err(|e| read_err(*e))?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged: Option<LogId> = self.get_meta(PURGED)?;
        let last = match self.log.last().map_err(read_err)? {
            Some((_, v)) => Some(decode::<Entry>(&v).map_err(|e| read_err(*e))?.log_id),
            None => None,
        };
        // Entries at or below the purge point are gone as far as Raft is concerned, even where
        // a purge that a crash interrupted left some behind ([`LogStore::purge`]).
        let last = last
            .filter(|l| last_purged.is_none_or(|p| l.index > p.index))
            .or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.put_meta(VOTE, vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.get_meta(VOTE)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId>,
    ) -> Result<(), StorageError<NodeId>> {
        // Not flushed on its own: losing it only means re-applying already committed entries.
        self.meta
            .insert(COMMITTED, encode(&committed))
            .map_err(write_err)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError<NodeId>> {
        Ok(self.get_meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        // A batch that changes the membership is always fsynced, and decides for the next ones.
        let mut membership = false;
        for e in entries {
            if let EntryPayload::Membership(m) = &e.payload {
                membership = true;
                let voter = m.voter_ids().any(|v| v == self.id);
                self.durability.observe(e.log_id.index, !voter);
            }
            batch.insert(&e.log_id.index.to_be_bytes(), encode(&e));
        }
        self.log.apply_batch(batch).map_err(write_err)?;
        if !membership && self.durability.learner() {
            // Written, not yet fsynced: sled's background flush makes it durable within a second.
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        let flushed = self.db.flush_async().await;
        match flushed {
            Ok(_) => callback.log_io_completed(Ok(())),
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                return Err(write_err(e));
            }
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError<NodeId>> {
        // The membership that made this node a learner may be among the removed entries.
        self.durability.doubt();
        if let Some(last) = Self::edge(self.log.last())? {
            self.remove_indexes(log_id.index, last)?;
        }
        self.db.flush_async().await.map_err(write_err)?;
        Ok(())
    }

    /// Records the purge point and returns; the entries are removed on a blocking thread at
    /// nice 19. openraft awaits a purge on its core task, so no append, heartbeat or commit moved
    /// while it ran: removing the 900 entries that follow each snapshot (sled reads each one's
    /// leaf) and the fsync took 13-19 ms on every node, and the replicas' worst probes of the lag
    /// benchmark were those. Nothing needs the removal to be prompt or durable: the entries are
    /// in a durable snapshot, Raft never reads at or below the purge point, and the marker is
    /// written before the removals (sled recovers a prefix of its writes), so a crash leaves at
    /// most entries below the marker, which [`LogStore::get_log_state`] ignores and the next
    /// purge removes. Purges run one at a time, in order.
    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError<NodeId>> {
        self.meta
            .insert(PURGED, encode(&log_id))
            .map_err(write_err)?;
        let (log, purging, upto) = (self.log.clone(), self.purging.clone(), log_id.index);
        tokio::task::spawn_blocking(move || {
            let _one = purging.lock();
            crate::priority::in_background(|| {
                let first = match LogStore::edge(log.first()) {
                    Ok(first) => first,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the log to purge it; the next purge retries");
                        None
                    }
                };
                if let Some(first) = first.filter(|f| *f <= upto) {
                    if let Err(e) = remove_indexes(&log, first, upto) {
                        tracing::warn!(error = %e, upto, "log purge failed; the next purge retries");
                    }
                }
            })
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    /// A store whose log holds blank entries `1..=n`, written directly.
    fn store_with(dir: &std::path::Path, n: u64) -> LogStore {
        let db = sled::open(dir).unwrap();
        let store = LogStore::open(&db, 1).unwrap();
        for i in 1..=n {
            let entry = Entry {
                log_id: log_id(i),
                payload: EntryPayload::Blank,
            };
            store.log.insert(i.to_be_bytes(), encode(&entry)).unwrap();
        }
        store
    }

    /// Waits until the log's first entry is `first` (None: empty); false after 10 s.
    fn first_becomes(store: &LogStore, first: Option<u64>) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if LogStore::edge(store.log.first()).unwrap() == first {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        false
    }

    /// A purge returns at once with its point recorded; the entries go in the background, and
    /// the log's state is the same before and after they have gone.
    #[tokio::test]
    async fn a_purge_removes_its_entries_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store_with(dir.path(), 10);
        store.purge(log_id(6)).await.unwrap();
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(6)));
        assert_eq!(state.last_log_id, Some(log_id(10)));
        assert!(first_becomes(&store, Some(7)));
        let after = store.get_log_state().await.unwrap();
        assert_eq!(after.last_purged_log_id, Some(log_id(6)));
        assert_eq!(after.last_log_id, Some(log_id(10)));
        let entries = store.try_get_log_entries(7..11).await.unwrap();
        assert_eq!(entries.len(), 4);
        // Everything, as after a snapshot install on a replica.
        store.purge(log_id(12)).await.unwrap();
        assert!(first_becomes(&store, None));
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(12)));
    }

    /// Entries at or below the purge point that a crash left behind are not the log's last
    /// entry (Raft would see a log ending before its purge point), and the next purge removes
    /// them.
    #[tokio::test]
    async fn entries_a_crash_left_below_the_purge_point_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store_with(dir.path(), 5);
        store.meta.insert(PURGED, encode(&log_id(8))).unwrap();
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(8)));
        assert_eq!(state.last_log_id, Some(log_id(8)));
        store.purge(log_id(9)).await.unwrap();
        assert!(first_becomes(&store, None));
    }

    #[test]
    fn durability_follows_the_latest_membership_and_doubts_towards_fsync() {
        let d = Durability::default();
        assert!(!d.learner(), "durable until a membership says otherwise");
        d.observe(5, true);
        assert!(d.learner());
        // A promotion at a later index wins; a late report of the older membership does not.
        d.observe(9, false);
        d.observe(5, true);
        assert!(!d.learner());
        d.observe(12, true);
        assert!(d.learner());
        // A truncation may have removed that membership: durable until a later one decides.
        d.doubt();
        assert!(!d.learner());
        d.observe(12, true);
        assert!(!d.learner());
        d.observe(13, true);
        assert!(d.learner());
    }
}

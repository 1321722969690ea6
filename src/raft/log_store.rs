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
        const PER_BATCH: u64 = 8;
        for at in (from..=to).step_by(PER_BATCH as usize) {
            let mut batch = sled::Batch::default();
            for i in at..=to.min(at.saturating_add(PER_BATCH - 1)) {
                batch.remove(&i.to_be_bytes());
            }
            self.log.apply_batch(batch).map_err(write_err)?;
        }
        Ok(())
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
            None => last_purged,
        };
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

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError<NodeId>> {
        self.meta
            .insert(PURGED, encode(&log_id))
            .map_err(write_err)?;
        if let Some(first) = Self::edge(self.log.first())? {
            self.remove_indexes(first, log_id.index)?;
        }
        self.db.flush_async().await.map_err(write_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Durability;

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

//! The sled layout. One tree, `state`, holds everything the engine applies, so that one
//! `apply_batch` is atomic and `last_applied` always lands together with the data it covers:
//!
//! | key | value |
//! |---|---|
//! | `m:applied` | last applied log index, u64 BE |
//! | `m:next_cid` | next collection id, u64 BE |
//! | `c:` cid (u64 BE) | bincode [`CollectionMeta`] |
//! | `p:` cid (u64 BE) iid (u64 BE) | bincode [`StoredPoint`] |
//!
//! Big-endian numbers keep keys in numeric order, so a collection's points load in internal-id
//! order. Nothing here knows about HNSW. Writes become durable only at [`Store::flush`].

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{CollectionConfig, PointId};

const APPLIED: &[u8] = b"m:applied";
const NEXT_CID: &[u8] = b"m:next_cid";
/// Export-stream keys with this prefix are side files, not state.
const FILE_PREFIX: &[u8] = b"\xfffile/";

/// A collection as persisted.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CollectionMeta {
    /// Name.
    pub name: String,
    /// Configuration.
    pub config: CollectionConfig,
    /// Next internal id to assign.
    pub next_iid: u64,
    /// First internal id of the current graph epoch (see `engine`).
    pub epoch_since: u64,
    /// Points that belong to the current graph epoch, live or tombstoned.
    pub epoch_total: u64,
}

/// A point as persisted (payload as JSON text).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StoredPoint {
    /// External id.
    pub id: PointId,
    /// Vector (normalised for cosine).
    pub vector: Vec<f32>,
    /// Payload JSON text.
    pub payload: Option<String>,
}

/// A collection as loaded: its id, metadata and points in internal-id order.
pub type LoadedCollection = (u64, CollectionMeta, Vec<(u64, StoredPoint)>);

/// Everything persisted, as read at start-up.
pub struct Loaded {
    /// Last applied log index.
    pub applied: u64,
    /// Next collection id.
    pub next_cid: u64,
    /// Collections with their points in internal-id order.
    pub collections: Vec<LoadedCollection>,
}

/// Handle to the sled database (cheap to clone).
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    state: sled::Tree,
}

fn collection_key(cid: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[..2].copy_from_slice(b"c:");
    k[2..].copy_from_slice(&cid.to_be_bytes());
    k
}

fn point_key(cid: u64, iid: u64) -> [u8; 18] {
    let mut k = [0u8; 18];
    k[..2].copy_from_slice(b"p:");
    k[2..10].copy_from_slice(&cid.to_be_bytes());
    k[10..].copy_from_slice(&iid.to_be_bytes());
    k
}

fn be_u64(bytes: &[u8]) -> Result<u64> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| Error::Corrupt("bad integer in store".into()))?;
    Ok(u64::from_be_bytes(arr))
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T> {
    bincode::deserialize(bytes).map_err(|e| Error::Corrupt(format!("undecodable record: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // bincode cannot fail on these plain types (no maps with non-string keys, no unsized seqs).
    bincode::serialize(v).unwrap_or_default()
}

/// A set of writes applied atomically by [`Store::commit`].
#[derive(Default)]
pub struct WriteBatch {
    batch: sled::Batch,
    ops: usize,
}

impl WriteBatch {
    /// Records a collection's metadata.
    pub fn put_collection(&mut self, cid: u64, meta: &CollectionMeta) {
        self.batch.insert(&collection_key(cid)[..], encode(meta));
        self.ops += 1;
    }
    /// Removes a collection's metadata.
    pub fn remove_collection(&mut self, cid: u64) {
        self.batch.remove(&collection_key(cid)[..]);
        self.ops += 1;
    }
    /// Records a point.
    pub fn put_point(&mut self, cid: u64, iid: u64, p: &StoredPoint) {
        self.batch.insert(&point_key(cid, iid)[..], encode(p));
        self.ops += 1;
    }
    /// Removes a point.
    pub fn remove_point(&mut self, cid: u64, iid: u64) {
        self.batch.remove(&point_key(cid, iid)[..]);
        self.ops += 1;
    }
    /// Records an arbitrary metadata key (used by the Raft adapter for its applied log id and
    /// membership, so that they land atomically with the data).
    pub fn put_raw(&mut self, key: &[u8], value: Vec<u8>) {
        self.batch.insert(key, value);
        self.ops += 1;
    }
    /// Records the next collection id.
    pub fn set_next_cid(&mut self, next: u64) {
        self.batch.insert(NEXT_CID, &next.to_be_bytes());
    }
    /// Number of writes recorded.
    pub fn len(&self) -> usize {
        self.ops
    }
    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.ops == 0
    }
}

impl Store {
    /// Opens (or creates) the database under `dir` with a page cache of `cache_bytes`.
    ///
    /// sled's background flusher holds the directory lock for a moment after the last handle is
    /// dropped, so a lock conflict is retried for up to `LOCK_WAIT` before giving up.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Store> {
        const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
        let started = std::time::Instant::now();
        let db = loop {
            let opened = sled::Config::new()
                .path(dir)
                .cache_capacity(cache_bytes)
                .mode(sled::Mode::HighThroughput)
                .flush_every_ms(Some(1000))
                .open();
            match opened {
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && started.elapsed() < LOCK_WAIT =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other?,
            }
        };
        let state = db.open_tree("state")?;
        Ok(Store { db, state })
    }

    /// The underlying database, for other trees (the Raft log).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Applies `batch` and sets `last_applied = applied` in the same atomic step (not yet durable).
    pub fn commit(&self, mut batch: WriteBatch, applied: u64) -> Result<()> {
        batch.batch.insert(APPLIED, &applied.to_be_bytes());
        self.state.apply_batch(batch.batch)?;
        Ok(())
    }

    /// Makes everything written so far durable (fsync).
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// Reads the whole state at start-up.
    pub fn load(&self) -> Result<Loaded> {
        let applied = match self.state.get(APPLIED)? {
            Some(v) => be_u64(&v)?,
            None => 0,
        };
        let next_cid = match self.state.get(NEXT_CID)? {
            Some(v) => be_u64(&v)?,
            None => 1,
        };
        let mut collections = Vec::new();
        for kv in self.state.scan_prefix(b"c:") {
            let (k, v) = kv?;
            let cid = be_u64(&k[2..])?;
            let meta: CollectionMeta = decode(&v)?;
            let mut points = Vec::new();
            let mut prefix = [0u8; 10];
            prefix[..2].copy_from_slice(b"p:");
            prefix[2..].copy_from_slice(&cid.to_be_bytes());
            for kv in self.state.scan_prefix(prefix) {
                let (k, v) = kv?;
                points.push((be_u64(&k[10..])?, decode::<StoredPoint>(&v)?));
            }
            collections.push((cid, meta, points));
        }
        Ok(Loaded {
            applied,
            next_cid,
            collections,
        })
    }

    /// Reads a metadata key written with [`WriteBatch::put_raw`].
    pub fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.state.get(key)?.map(|v| v.to_vec()))
    }

    /// Every metadata key (`m:` prefix) and its value.
    pub fn meta_entries(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        for kv in self.state.scan_prefix(b"m:") {
            let (k, v) = kv?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Writes one record of the export (snapshot) format: a u32 key length, the key, a u32 value
    /// length, the value (little-endian).
    pub fn write_record(w: &mut impl std::io::Write, key: &[u8], value: &[u8]) -> Result<()> {
        w.write_all(&(key.len() as u32).to_le_bytes())?;
        w.write_all(key)?;
        w.write_all(&(value.len() as u32).to_le_bytes())?;
        w.write_all(value)?;
        Ok(())
    }

    /// Writes a collection's metadata record in the export format.
    pub fn write_collection(
        w: &mut impl std::io::Write,
        cid: u64,
        meta: &CollectionMeta,
    ) -> Result<()> {
        Self::write_record(w, &collection_key(cid), &encode(meta))
    }

    /// Writes a point record in the export format.
    pub fn write_point(
        w: &mut impl std::io::Write,
        cid: u64,
        iid: u64,
        p: &StoredPoint,
    ) -> Result<()> {
        Self::write_record(w, &point_key(cid, iid), &encode(p))
    }

    /// Appends a side file to an export stream: the key `\xfffile/` + `name` with the file's bytes
    /// (streamed, never held in memory), restored by [`Store::import`] under its `files_dir`.
    pub fn export_file(w: &mut impl std::io::Write, name: &str, path: &Path) -> Result<()> {
        let mut f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        let len32 = u32::try_from(len)
            .map_err(|_| Error::Internal(format!("{} is over 4 GiB", path.display())))?;
        let key = [FILE_PREFIX, name.as_bytes()].concat();
        w.write_all(&(key.len() as u32).to_le_bytes())?;
        w.write_all(&key)?;
        w.write_all(&len32.to_le_bytes())?;
        let copied = std::io::copy(&mut f, w)?;
        if copied != len {
            return Err(Error::Internal(format!(
                "{} changed while being exported",
                path.display()
            )));
        }
        Ok(())
    }

    /// Replaces the whole state tree with what the export format wrote (side files go under
    /// `files_dir`), then flushes. Not atomic: the caller relies on the applied-id key, which a
    /// crash mid-import leaves missing, to know the state is incomplete.
    pub fn import(&self, r: &mut impl std::io::Read, files_dir: &Path) -> Result<u64> {
        self.state.clear()?;
        let mut batch = sled::Batch::default();
        let mut meta: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let (mut n, mut pending) = (0u64, 0usize);
        let mut len = [0u8; 4];
        loop {
            match r.read_exact(&mut len) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e.into()),
            }
            let mut k = vec![0u8; u32::from_le_bytes(len) as usize];
            r.read_exact(&mut k)?;
            r.read_exact(&mut len)?;
            let vlen = u32::from_le_bytes(len) as u64;
            if let Some(name) = k.strip_prefix(FILE_PREFIX) {
                let name = String::from_utf8_lossy(name).to_string();
                if name.split('/').any(|part| part.is_empty() || part == "..") {
                    return Err(Error::Corrupt(format!("bad side file name {name:?}")));
                }
                let path = files_dir.join(&name);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let mut f = std::fs::File::create(&path)?;
                let copied = std::io::copy(&mut std::io::Read::take(&mut *r, vlen), &mut f)?;
                if copied != vlen {
                    return Err(Error::Corrupt(format!("side file {name} truncated")));
                }
                continue;
            }
            let mut v = vec![0u8; vlen as usize];
            r.read_exact(&mut v)?;
            if k.starts_with(b"m:") {
                // Metadata (applied index, Raft's applied id) lands last: a crash mid-import
                // leaves it absent, never claiming data that was not written.
                meta.push((k, v));
                continue;
            }
            batch.insert(k, v);
            n += 1;
            pending += 1;
            if pending >= 2_000 {
                self.state.apply_batch(std::mem::take(&mut batch))?;
                pending = 0;
            }
        }
        self.state.apply_batch(batch)?;
        self.db.flush()?;
        let mut last = sled::Batch::default();
        for (k, v) in meta {
            last.insert(k, v);
            n += 1;
        }
        self.state.apply_batch(last)?;
        self.db.flush()?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HnswConfig, Metric};

    #[test]
    fn batch_is_atomic_with_applied_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let config = CollectionConfig {
            dim: 2,
            metric: Metric::L2,
            hnsw: HnswConfig::default(),
        };
        let meta = CollectionMeta {
            name: "a".into(),
            config,
            next_iid: 2,
            epoch_since: 0,
            epoch_total: 2,
        };
        {
            let s = Store::open(dir.path(), 1 << 20).unwrap();
            let mut b = WriteBatch::default();
            b.put_collection(1, &meta);
            b.set_next_cid(2);
            for i in 0..2u64 {
                let p = StoredPoint {
                    id: PointId::Num(i),
                    vector: vec![i as f32, 1.0],
                    payload: None,
                };
                b.put_point(1, i, &p);
            }
            s.commit(b, 7).unwrap();
            s.flush().unwrap();
        }
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        let l = s.load().unwrap();
        assert_eq!(l.applied, 7);
        assert_eq!(l.next_cid, 2);
        assert_eq!(l.collections.len(), 1);
        assert_eq!(l.collections[0].1, meta);
        assert_eq!(l.collections[0].2.len(), 2);
        assert_eq!(l.collections[0].2[1].1.vector, vec![1.0, 1.0]);
    }
}

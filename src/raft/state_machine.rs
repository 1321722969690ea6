//! The state machine adapter: applies committed entries to the engine, builds and installs
//! snapshots. Engine work (HNSW-bound backpressure, sled batches, snapshot I/O) runs on the
//! blocking pool so that it never stalls tokio workers.
//!
//! Snapshots are streamed to and from files (`snapshots/` in the data dir), never built in
//! memory: the engine exports its sled state tree key by key while no apply runs.

use std::io::{BufReader, BufWriter};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageError, StorageIOError};

use super::typ::{Entry, LogId, SnapshotMeta, StoredMembership};
use super::{decode, encode, NodeId, TypeConfig};
use crate::engine::Engine;
use crate::model::{Command, Reply};
use crate::store::Store;

/// Store key of the last applied Raft log id.
pub const APPLIED_KEY: &[u8] = b"m:raft_applied";
/// Store key of the last applied membership.
pub const MEMBERSHIP_KEY: &[u8] = b"m:raft_membership";
/// How long an apply waits for the indexer before going ahead past the backpressure bound.
const BACKPRESSURE_TIMEOUT: Duration = Duration::from_secs(30);

fn sm_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&std::io::Error::other(e.to_string())).into()
}
fn snap_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::read_snapshot(None, &std::io::Error::other(e.to_string())).into()
}

/// Reads the applied log id and membership the engine's store holds.
fn applied_in(store: &Store) -> crate::Result<(Option<LogId>, StoredMembership)> {
    let applied = match store.get_raw(APPLIED_KEY)? {
        Some(v) => decode::<Option<LogId>>(&v).map_err(|e| crate::Error::Corrupt(e.to_string()))?,
        None => None,
    };
    let membership = match store.get_raw(MEMBERSHIP_KEY)? {
        Some(v) => {
            decode::<StoredMembership>(&v).map_err(|e| crate::Error::Corrupt(e.to_string()))?
        }
        None => StoredMembership::default(),
    };
    Ok((applied, membership))
}

/// The state machine: a thin adapter over the shared engine.
pub struct StateMachine {
    engine: Arc<Engine>,
    dir: PathBuf,
    incoming: Option<PathBuf>,
}

/// Builds a snapshot file from the engine.
pub struct SnapshotBuilder {
    engine: Arc<Engine>,
    dir: PathBuf,
}

fn unique() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Makes `id`'s files the current snapshot and deletes the others.
fn promote(dir: &std::path::Path, id: &str) -> std::io::Result<()> {
    let tmp = dir.join("current.tmp");
    std::fs::write(&tmp, id)?;
    std::fs::rename(&tmp, dir.join("current"))?;
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with("snap-") && !name.starts_with(&format!("snap-{id}.")) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}

async fn open_current(
    dir: &std::path::Path,
) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
    let Ok(id) = tokio::fs::read_to_string(dir.join("current")).await else {
        return Ok(None);
    };
    let meta_bytes = tokio::fs::read(dir.join(format!("snap-{id}.meta")))
        .await
        .map_err(snap_err)?;
    let meta: SnapshotMeta = decode(&meta_bytes).map_err(snap_err)?;
    let file = tokio::fs::File::open(dir.join(format!("snap-{id}.data")))
        .await
        .map_err(snap_err)?;
    Ok(Some(Snapshot {
        meta,
        snapshot: Box::new(file),
    }))
}

impl StateMachine {
    /// An adapter over `engine`, keeping snapshot files under `data_dir/snapshots`.
    pub fn new(engine: Arc<Engine>) -> std::io::Result<StateMachine> {
        let dir = engine.options().data_dir.join("snapshots");
        std::fs::create_dir_all(&dir)?;
        Ok(StateMachine {
            engine,
            dir,
            incoming: None,
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let (engine, dir) = (self.engine.clone(), self.dir.clone());
        let meta =
            tokio::task::spawn_blocking(move || -> Result<SnapshotMeta, StorageError<NodeId>> {
                let tmp = dir.join(format!("building-{}", unique()));
                let file = std::fs::File::create(&tmp).map_err(snap_err)?;
                let mut w = BufWriter::with_capacity(1 << 20, file);
                let (applied, membership) =
                    engine.snapshot(&mut w, applied_in).map_err(snap_err)?;
                let file = w.into_inner().map_err(snap_err)?;
                file.sync_all().map_err(snap_err)?;
                let id = format!(
                    "{}-{}-{}",
                    applied.map(|l| l.leader_id.term).unwrap_or(0),
                    applied.map(|l| l.index).unwrap_or(0),
                    unique()
                );
                let meta = SnapshotMeta {
                    last_log_id: applied,
                    last_membership: membership,
                    snapshot_id: id.clone(),
                };
                std::fs::write(dir.join(format!("snap-{id}.meta")), encode(&meta))
                    .map_err(snap_err)?;
                std::fs::rename(&tmp, dir.join(format!("snap-{id}.data"))).map_err(snap_err)?;
                promote(&dir, &id).map_err(snap_err)?;
                Ok(meta)
            })
            .await
            .map_err(snap_err)??;
        tracing::info!(snapshot = %meta.snapshot_id, "snapshot built");
        let file = tokio::fs::File::open(self.dir.join(format!("snap-{}.data", meta.snapshot_id)))
            .await
            .map_err(snap_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership), StorageError<NodeId>> {
        applied_in(self.engine.store()).map_err(sm_err)
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || {
            let mut last: Option<LogId> = None;
            let mut membership: Option<StoredMembership> = None;
            let cmds: Vec<(u64, Command)> = entries
                .into_iter()
                .map(|e| {
                    last = Some(e.log_id);
                    let cmd = match e.payload {
                        EntryPayload::Normal(cmd) => cmd,
                        EntryPayload::Blank => Command::Noop,
                        EntryPayload::Membership(m) => {
                            membership = Some(StoredMembership::new(Some(e.log_id), m));
                            Command::Noop
                        }
                    };
                    (e.log_id.index, cmd)
                })
                .collect();
            for (_, c) in &cmds {
                if !engine.wait_for_room(c, BACKPRESSURE_TIMEOUT) {
                    tracing::warn!("indexer is behind; applying past the backpressure bound");
                }
            }
            let mut extra: Vec<(&[u8], Vec<u8>)> = vec![(APPLIED_KEY, encode(&last))];
            if let Some(m) = membership {
                extra.push((MEMBERSHIP_KEY, encode(&m)));
            }
            engine.apply_with(&cmds, extra)
        })
        .await
        .map_err(sm_err)?
        .map_err(sm_err)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            engine: self.engine.clone(),
            dir: self.dir.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<tokio::fs::File>, StorageError<NodeId>> {
        let path = self.dir.join(format!("incoming-{}", unique()));
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .await
            .map_err(snap_err)?;
        self.incoming = Some(path);
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError<NodeId>> {
        use tokio::io::AsyncSeekExt;
        // The data is in the handle we are given (normally the file `begin_receiving_snapshot`
        // made, but any readable file will do): copy it into place as the current snapshot.
        let id = meta.snapshot_id.clone();
        let data_path = self.dir.join(format!("snap-{id}.data"));
        let mut src = *snapshot;
        src.seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(snap_err)?;
        let mut dst = tokio::fs::File::create(&data_path)
            .await
            .map_err(snap_err)?;
        tokio::io::copy(&mut src, &mut dst)
            .await
            .map_err(snap_err)?;
        dst.sync_all().await.map_err(snap_err)?;
        drop((src, dst));
        if let Some(incoming) = self.incoming.take() {
            let _ = tokio::fs::remove_file(incoming).await;
        }
        let (engine, dir, meta) = (self.engine.clone(), self.dir.clone(), meta.clone());
        tokio::task::spawn_blocking(move || -> Result<(), StorageError<NodeId>> {
            let started = std::time::Instant::now();
            let file = std::fs::File::open(&data_path).map_err(snap_err)?;
            engine.install_snapshot(&mut BufReader::with_capacity(1 << 20, file)).map_err(snap_err)?;
            // The snapshot carries the sender's applied id and membership keys; they must match
            // the metadata openraft gave us.
            let (applied, _) = applied_in(engine.store()).map_err(snap_err)?;
            if applied != meta.last_log_id {
                return Err(snap_err(format!("snapshot applied id {applied:?} != meta {:?}", meta.last_log_id)));
            }
            std::fs::write(dir.join(format!("snap-{id}.meta")), encode(&meta)).map_err(snap_err)?;
            promote(&dir, &id).map_err(snap_err)?;
            tracing::info!(snapshot = %id, secs = started.elapsed().as_secs_f64(), "snapshot installed");
            Ok(())
        })
        .await
        .map_err(snap_err)?
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        open_current(&self.dir).await
    }
}

//! The state machine adapter: applies committed entries to the engine, builds and installs
//! snapshots. Engine work (HNSW-bound backpressure, sled batches, snapshot I/O) runs on the
//! blocking pool so that it never stalls tokio workers.
//!
//! Snapshots are streamed to and from files, never built in memory: the engine exports its sled
//! state tree key by key while no apply runs. `snapshots/` in the data dir holds `current` (the
//! file id of the current snapshot), and per snapshot `snap-{fid}.meta` (bincode
//! `SnapshotMeta`) and `snap-{fid}.data` (the engine's export stream). The file id is the
//! snapshot id reduced to `[A-Za-z0-9_-]` (a leader-supplied id never reaches a path as is).
//! Temporary files are `building-*` (a build), `incoming-*` (a transfer), `installing-*` (an
//! install's copy) and `*.tmp`; stale ones are removed when the state machine opens, a new
//! transfer removes the previous incoming file, and a failed build removes its own.
//!
//! # Durability of snapshot files
//! Meta files and `current` are written to a temp file, fsynced, renamed and the directory
//! fsynced; data files are fsynced before they are renamed into place. `current` moves only
//! forward (a build that finishes after a newer install never replaces it), and older snapshot
//! files are deleted only once the new `current` is durable. A missing or corrupt `current` or
//! meta file, or a data file of another format version (left from before an upgrade), reads as
//! "no snapshot" (with a warning): openraft then builds one.
//!
//! # Building never fails
//! openraft 0.9 treats an error from `build_snapshot` as fatal: the node's Raft stops, and at
//! start-up (no snapshot but a purged log) the node cannot start. So a build does not return
//! errors for recoverable reasons: the stream has u64 lengths (no size limit), a graph dump that
//! vanishes or changes is skipped (the receiver rebuilds that graph from the points), and a
//! collection dropped or replaced by an install during the export waits for, or skips, its dump
//! (see `Engine::snapshot`). A build that still fails (I/O: disk full, EIO) is retried with
//! exponential backoff inside `build_snapshot`; after a few failures it answers with the current
//! snapshot if there is one (openraft ignores a snapshot no newer than its current one, so
//! nothing is purged and the policy simply tries again later). With no snapshot at all there is
//! nothing safe to answer, so it keeps retrying (backoff capped at a minute) with a warning per
//! attempt: the node stays alive and replicates, it just cannot compact its log meanwhile.
//!
//! # Crash during an install
//! `install_snapshot` first makes the received data a complete, fsynced `snap-{fid}.data`, then
//! calls `Engine::install_snapshot_file`, which persists an install-in-progress marker (fsynced
//! file and directory) naming that file and carrying the snapshot meta, and only then clears and
//! re-imports the store. Once the engine holds the new state, the meta and `current` are made
//! durable and the marker is removed. After a crash with the marker present, `Engine::open`
//! redoes the whole import from the retained file before loading anything, and
//! [`StateMachine::new`] completes the install (meta, `current`, marker removal). openraft then
//! starts from a state machine exactly at the snapshot's last log id, with the snapshot's
//! membership, as if the install had finished before the crash:
//! - `get_initial_state` raises `committed` to `last_applied` and re-applies only entries after
//!   it (entries the leader appended after the snapshot are in the log; none before it are
//!   replayed onto the imported state), and purges the log up to `last_applied` when the log ends
//!   before it (storage/helper.rs);
//! - the local log is left alone, which is what keeps this safe: the leader's replication
//!   progress never sees this follower's log go backwards (openraft 0.9 forbids that without
//!   `loosen-follower-log-revert`). Clearing the state and the log instead would trip that check,
//!   and clearing only the state would make openraft re-apply from index 1, entries a lagging
//!   replica has usually purged.
//!
//! A crash before the marker exists leaves the old state intact (the leader resends the
//! snapshot). A marker whose file is missing or the wrong size (only possible if something else
//! removed or damaged it: the file is fsynced before the marker is written) makes `Engine::open`
//! refuse to start with an explanation instead of serving a half-imported state.

use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageError, StorageIOError};
use parking_lot::Mutex;

use super::typ::{Entry, LogId, SnapshotMeta, StoredMembership};
use super::{decode, encode, NodeId, TypeConfig};
use crate::engine::Engine;
use crate::model::{Command, Reply};
use crate::store::{sync_dir, write_durable, Store};

/// Store key of the last applied Raft log id.
pub const APPLIED_KEY: &[u8] = b"m:raft_applied";
/// Store key of the last applied membership.
pub const MEMBERSHIP_KEY: &[u8] = b"m:raft_membership";
/// How long an apply waits for the indexer before going ahead past the backpressure bound.
const BACKPRESSURE_TIMEOUT: Duration = Duration::from_secs(30);
/// The file naming the current snapshot.
const CURRENT: &str = "current";
/// First wait after a failed snapshot build; doubles up to `BUILD_RETRY_MAX`.
const BUILD_RETRY_FIRST: Duration = Duration::from_secs(1);
const BUILD_RETRY_MAX: Duration = Duration::from_secs(60);
/// Failed builds after which the current snapshot (if any) is answered instead.
const BUILD_FALLBACK_AFTER: u32 = 5;
/// Prefixes of temporary files in `snapshots/`.
const TEMP_PREFIXES: [&str; 3] = ["building-", "incoming-", "installing-"];

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

/// Snapshot file bookkeeping shared by the state machine and its builders.
#[derive(Default)]
struct Files {
    /// File id of an install under way: its files are not another snapshot's garbage.
    installing: Option<String>,
}

/// The state machine: a thin adapter over the shared engine.
pub struct StateMachine {
    engine: Arc<Engine>,
    dir: PathBuf,
    incoming: Option<PathBuf>,
    files: Arc<Mutex<Files>>,
}

/// Whether `file` is the file at `path` (same device and inode).
async fn same_file(file: &tokio::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata().await, tokio::fs::metadata(path).await) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Builds a snapshot file from the engine.
pub struct SnapshotBuilder {
    engine: Arc<Engine>,
    dir: PathBuf,
    files: Arc<Mutex<Files>>,
    /// First wait after a failed build (`BUILD_RETRY_FIRST`; shorter in tests).
    retry: Duration,
}

fn unique() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// The file id for a snapshot id: only `[A-Za-z0-9_-]`, at most 100 of them. An id that had to
/// be changed gets a hash of the original, so that two ids never share files.
fn file_id(snapshot_id: &str) -> String {
    let safe: String = snapshot_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(100)
        .collect();
    if safe == snapshot_id && !safe.is_empty() {
        return safe;
    }
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    snapshot_id.hash(&mut h);
    format!("{safe}-x{:016x}", h.finish())
}

fn meta_path(dir: &Path, fid: &str) -> PathBuf {
    dir.join(format!("snap-{fid}.meta"))
}
fn data_path(dir: &Path, fid: &str) -> PathBuf {
    dir.join(format!("snap-{fid}.data"))
}

/// The file id `current` names, if it is readable and well-formed.
fn current_id(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(CURRENT)).ok()?;
    let id = text.trim();
    (!id.is_empty() && file_id(id) == id).then(|| id.to_string())
}

fn read_meta(dir: &Path, fid: &str) -> std::io::Result<SnapshotMeta> {
    let bytes = std::fs::read(meta_path(dir, fid))?;
    decode(&bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Deletes a snapshot's files.
fn remove_snapshot(dir: &Path, fid: &str) {
    let _ = std::fs::remove_file(meta_path(dir, fid));
    let _ = std::fs::remove_file(data_path(dir, fid));
}

/// Makes `fid` (whose meta and data files are durable) the current snapshot, unless the current
/// one covers a later log id (`current` never moves backwards, M1). Once the new `current` is
/// durable, deletes the files of every other snapshot except an install under way. Returns
/// whether `fid` became current.
fn promote(
    dir: &Path,
    files: &Mutex<Files>,
    fid: &str,
    last: Option<LogId>,
) -> std::io::Result<bool> {
    let files = files.lock();
    if let Some(cur) = current_id(dir).filter(|cur| cur != fid) {
        if let Ok(m) = read_meta(dir, &cur) {
            if m.last_log_id > last {
                return Ok(false);
            }
        }
    }
    write_durable(&dir.join(CURRENT), fid.as_bytes())?;
    let keep = |name: &str| {
        let is = |id: &str| name == format!("snap-{id}.meta") || name == format!("snap-{id}.data");
        is(fid) || files.installing.as_deref().is_some_and(is)
    };
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with("snap-") && !keep(&name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    sync_dir(dir)?;
    Ok(true)
}

/// The current snapshot: `None` when there is none, or (with a warning) when `current` or its
/// files are missing or unreadable, so that openraft builds a new one instead of failing.
async fn open_current(dir: &Path) -> Option<Snapshot<TypeConfig>> {
    match tokio::fs::read_to_string(dir.join(CURRENT)).await {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the current snapshot's name; treating it as absent");
            return None;
        }
        Ok(_) => {}
    }
    let Some(fid) = current_id(dir) else {
        tracing::warn!("the current snapshot's name is corrupt; treating it as absent");
        return None;
    };
    let meta = match read_meta(dir, &fid) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(snapshot = %fid, error = %e, "snapshot meta missing or corrupt; treating the snapshot as absent");
            return None;
        }
    };
    // A data file of another format (left by an older version before an upgrade) would be
    // refused by every receiver: treat it as absent, so that a new one is built.
    let opened = async {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let mut file = tokio::fs::File::open(data_path(dir, &fid)).await?;
        let mut magic = [0u8; crate::store::SNAPSHOT_MAGIC.len()];
        file.read_exact(&mut magic).await?;
        if &magic != crate::store::SNAPSHOT_MAGIC {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not this version's snapshot format",
            ));
        }
        file.seek(std::io::SeekFrom::Start(0)).await?;
        Ok(file)
    };
    match opened.await {
        Ok(file) => Some(Snapshot {
            meta,
            snapshot: Box::new(file),
        }),
        Err(e) => {
            tracing::warn!(snapshot = %fid, error = %e, "snapshot data missing or unusable; treating the snapshot as absent");
            None
        }
    }
}

/// Removes temporary files and snapshot files that are not the current snapshot's (leftovers of
/// builds, transfers and installs a crash interrupted).
fn remove_stale(dir: &Path) -> std::io::Result<()> {
    let current = current_id(dir);
    let mut removed = 0usize;
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let temp = TEMP_PREFIXES.iter().any(|p| name.starts_with(p)) || name.ends_with(".tmp");
        // Without a readable `current` nothing is known to be stale: the next promote cleans up.
        let stale_snap = name.starts_with("snap-")
            && current.as_deref().is_some_and(|c| {
                name != format!("snap-{c}.meta") && name != format!("snap-{c}.data")
            });
        if (temp || stale_snap) && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(removed, "removed stale snapshot files");
        sync_dir(dir)?;
    }
    Ok(())
}

impl StateMachine {
    /// An adapter over `engine`, keeping snapshot files under `data_dir/snapshots`. Completes an
    /// install that a crash interrupted (the engine redid its import when it opened) and removes
    /// stale temporary files.
    pub fn new(engine: Arc<Engine>) -> std::io::Result<StateMachine> {
        let dir = engine.options().data_dir.join("snapshots");
        std::fs::create_dir_all(&dir)?;
        let files = Arc::new(Mutex::new(Files::default()));
        if let Some(note) = engine.pending_install() {
            finish_redone_install(&engine, &dir, &files, &note)?;
        }
        remove_stale(&dir)?;
        Ok(StateMachine {
            engine,
            dir,
            incoming: None,
            files,
        })
    }
}

/// Records an install the engine redid at open: its meta, `current`, then removes the marker.
fn finish_redone_install(
    engine: &Engine,
    dir: &Path,
    files: &Mutex<Files>,
    note: &[u8],
) -> std::io::Result<()> {
    let meta: SnapshotMeta = decode(note).map_err(std::io::Error::other)?;
    let (applied, _) = applied_in(engine.store()).map_err(std::io::Error::other)?;
    if applied != meta.last_log_id {
        return Err(std::io::Error::other(format!(
            "the redone snapshot install holds applied id {applied:?}, its meta says {:?}",
            meta.last_log_id
        )));
    }
    let fid = file_id(&meta.snapshot_id);
    write_durable(&meta_path(dir, &fid), &encode(&meta))?;
    promote(dir, files, &fid, meta.last_log_id)?;
    engine.finish_install().map_err(std::io::Error::other)?;
    tracing::warn!(snapshot = %meta.snapshot_id, "finished a snapshot install that a crash had interrupted");
    Ok(())
}

/// One build attempt: exports the engine into a `building-*` file (removed on failure), makes it
/// a durable snapshot and promotes it. Returns the meta and an open handle to the data (valid
/// even if a newer current snapshot made this one garbage).
fn build_once(
    engine: &Engine,
    dir: &Path,
    files: &Mutex<Files>,
) -> crate::Result<(SnapshotMeta, std::fs::File)> {
    let tmp = dir.join(format!("building-{}", unique()));
    let built = (|| -> crate::Result<(SnapshotMeta, std::fs::File)> {
        let file = WriteBehind::new(std::fs::File::create(&tmp)?);
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let (applied, membership) = engine.snapshot(&mut w, applied_in)?;
        let file = w.into_inner().map_err(|e| e.into_error())?.file;
        file.sync_all()?;
        drop(file);
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
        let fid = file_id(&id);
        write_durable(&meta_path(dir, &fid), &encode(&meta))?;
        std::fs::rename(&tmp, data_path(dir, &fid))?;
        sync_dir(dir)?;
        let data = std::fs::File::open(data_path(dir, &fid))?;
        if !promote(dir, files, &fid, applied)? {
            tracing::info!(snapshot = %id, "built snapshot is older than the current one; discarded");
            remove_snapshot(dir, &fid);
        }
        Ok((meta, data))
    })();
    if built.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    built
}

/// A snapshot file being written, handed to the disk as it grows: every [`WRITE_BEHIND`] bytes
/// it asks the kernel to start writing out what came before (`sync_file_range`, which does not
/// wait), so the `fsync` at the end finds little left. Written whole and fsynced at the end, a
/// snapshot's data reached the disk in one burst that the log's own fsyncs queued behind
/// (replica lag at 400 writes/s: worst probes 5-21 ms with a snapshot in the run, 4-7 ms
/// without).
struct WriteBehind {
    file: std::fs::File,
    /// Bytes written, and the offset up to which writeback was asked for.
    written: u64,
    flushed: u64,
}

/// How much a snapshot file grows between two writebacks ([`WriteBehind`]).
const WRITE_BEHIND: u64 = 4 << 20;

impl WriteBehind {
    fn new(file: std::fs::File) -> WriteBehind {
        WriteBehind {
            file,
            written: 0,
            flushed: 0,
        }
    }
}

impl std::io::Write for WriteBehind {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.flushed >= WRITE_BEHIND {
            #[cfg(target_os = "linux")]
            {
                use std::os::fd::AsRawFd;
                // SAFETY: sync_file_range on our own open file descriptor with plain integers;
                // it only starts writeback of the range and touches no memory of ours. A failure
                // is harmless (the final fsync writes everything).
                unsafe {
                    libc::sync_file_range(
                        self.file.as_raw_fd(),
                        self.flushed as libc::off64_t,
                        (self.written - self.flushed) as libc::off64_t,
                        libc::SYNC_FILE_RANGE_WRITE,
                    );
                }
            }
            self.flushed = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        // Never returns an error: see the module doc ("Building never fails").
        let mut delay = self.retry;
        let mut failures = 0u32;
        loop {
            let (engine, dir, files) = (self.engine.clone(), self.dir.clone(), self.files.clone());
            let error = match tokio::task::spawn_blocking(move || {
                crate::priority::in_background(|| build_once(&engine, &dir, &files))
            })
            .await
            {
                Ok(Ok((meta, file))) => {
                    tracing::info!(snapshot = %meta.snapshot_id, "snapshot built");
                    return Ok(Snapshot {
                        meta,
                        snapshot: Box::new(tokio::fs::File::from_std(file)),
                    });
                }
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            };
            failures += 1;
            if failures >= BUILD_FALLBACK_AFTER {
                if let Some(current) = open_current(&self.dir).await {
                    tracing::error!(%error, failures, snapshot = %current.meta.snapshot_id, "snapshot build keeps failing; keeping the current snapshot (the log is not compacted)");
                    return Ok(current);
                }
            }
            tracing::warn!(%error, failures, retry_in_ms = delay.as_millis() as u64, "snapshot build failed; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(BUILD_RETRY_MAX);
        }
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
            files: self.files.clone(),
            retry: BUILD_RETRY_FIRST,
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<tokio::fs::File>, StorageError<NodeId>> {
        // A new transfer supersedes the previous one: its file is garbage (an open handle to it
        // stays usable).
        if let Some(previous) = self.incoming.take() {
            let _ = tokio::fs::remove_file(previous).await;
        }
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
        // made, but any readable file will do): copy it into place, durably, under a name the
        // install marker can point at (see the module doc).
        let fid = file_id(&meta.snapshot_id);
        let data = data_path(&self.dir, &fid);
        let tmp = self.dir.join(format!("installing-{}", unique()));
        let received = std::time::Instant::now();
        let mut src = *snapshot;
        // The file `begin_receiving_snapshot` made is fsynced and renamed into place; at 1M
        // points copying it took as long as receiving it. Any other file is copied.
        let ours = match &self.incoming {
            Some(incoming) => same_file(&src, incoming).await,
            None => false,
        };
        let moved = async {
            if ours {
                src.sync_all().await?;
                let incoming = self.incoming.take().unwrap_or_default();
                return tokio::fs::rename(incoming, &tmp).await;
            }
            src.seek(std::io::SeekFrom::Start(0)).await?;
            let mut dst = tokio::fs::File::create(&tmp).await?;
            tokio::io::copy(&mut src, &mut dst).await?;
            dst.sync_all().await
        }
        .await;
        if let Err(e) = moved {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(snap_err(e));
        }
        drop(src);
        tracing::info!(snapshot = %meta.snapshot_id, moved = ours, secs = received.elapsed().as_secs_f64(), "received snapshot made durable");
        self.files.lock().installing = Some(fid.clone());
        if let Some(incoming) = self.incoming.take() {
            let _ = tokio::fs::remove_file(incoming).await;
        }
        let (engine, dir, files, meta) = (
            self.engine.clone(),
            self.dir.clone(),
            self.files.clone(),
            meta.clone(),
        );
        tokio::task::spawn_blocking(move || -> Result<(), StorageError<NodeId>> {
            let started = std::time::Instant::now();
            std::fs::rename(&tmp, &data).map_err(snap_err)?;
            sync_dir(&dir).map_err(snap_err)?;
            engine
                .install_snapshot_file(&data, encode(&meta))
                .map_err(snap_err)?;
            // The snapshot carries the sender's applied id and membership keys; they must match
            // the metadata openraft gave us.
            let (applied, _) = applied_in(engine.store()).map_err(snap_err)?;
            if applied != meta.last_log_id {
                return Err(snap_err(format!(
                    "snapshot applied id {applied:?} != meta {:?}",
                    meta.last_log_id
                )));
            }
            write_durable(&meta_path(&dir, &fid), &encode(&meta)).map_err(snap_err)?;
            promote(&dir, &files, &fid, meta.last_log_id).map_err(snap_err)?;
            engine.finish_install().map_err(snap_err)?;
            files.lock().installing = None;
            tracing::info!(snapshot = %meta.snapshot_id, secs = started.elapsed().as_secs_f64(), "snapshot installed");
            Ok(())
        })
        .await
        .map_err(snap_err)?
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(open_current(&self.dir).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, Membership};

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn meta(id: &str, last: Option<LogId>) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: last,
            last_membership: StoredMembership::new(
                None,
                Membership::new(vec![[1u64].into_iter().collect()], None),
            ),
            snapshot_id: id.to_string(),
        }
    }

    /// Writes a complete snapshot's files (not promoted).
    fn put(dir: &Path, m: &SnapshotMeta) -> String {
        let fid = file_id(&m.snapshot_id);
        std::fs::write(meta_path(dir, &fid), encode(m)).unwrap();
        std::fs::write(
            data_path(dir, &fid),
            [&crate::store::SNAPSHOT_MAGIC[..], b"data"].concat(),
        )
        .unwrap();
        fid
    }

    fn engine(dir: &Path) -> Arc<Engine> {
        let mut o = crate::engine::EngineOptions::new(dir);
        o.cache_bytes = 4 << 20;
        Arc::new(Engine::open(o).unwrap())
    }

    #[test]
    fn promote_never_moves_current_backwards() {
        let dir = tempfile::tempdir().unwrap();
        let files = Mutex::new(Files::default());
        let newer = put(dir.path(), &meta("2-50-1", Some(log_id(2, 50))));
        assert!(promote(dir.path(), &files, &newer, Some(log_id(2, 50))).unwrap());
        // A build from an older view finishes after the install of the newer snapshot.
        let older = put(dir.path(), &meta("2-40-2", Some(log_id(2, 40))));
        assert!(!promote(dir.path(), &files, &older, Some(log_id(2, 40))).unwrap());
        assert_eq!(current_id(dir.path()).as_deref(), Some(newer.as_str()));
        assert!(meta_path(dir.path(), &newer).exists());
        // A newer one replaces it, and only then are the old files deleted.
        let newest = put(dir.path(), &meta("3-60-3", Some(log_id(3, 60))));
        assert!(promote(dir.path(), &files, &newest, Some(log_id(3, 60))).unwrap());
        assert_eq!(current_id(dir.path()).as_deref(), Some(newest.as_str()));
        assert!(!data_path(dir.path(), &newer).exists());
        assert!(!data_path(dir.path(), &older).exists());
        assert!(!dir.path().join("current.tmp").exists());
    }

    #[test]
    fn promote_keeps_the_files_of_an_install_under_way() {
        let dir = tempfile::tempdir().unwrap();
        let files = Mutex::new(Files::default());
        std::fs::write(data_path(dir.path(), "3-90-9"), b"x").unwrap();
        files.lock().installing = Some("3-90-9".into());
        let built = put(dir.path(), &meta("2-50-1", Some(log_id(2, 50))));
        assert!(promote(dir.path(), &files, &built, Some(log_id(2, 50))).unwrap());
        assert!(data_path(dir.path(), "3-90-9").exists());
    }

    #[tokio::test]
    async fn missing_or_corrupt_meta_reads_as_no_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(open_current(d).await.is_none());
        let fid = put(d, &meta("1-5-1", Some(log_id(1, 5))));
        let files = Mutex::new(Files::default());
        promote(d, &files, &fid, Some(log_id(1, 5))).unwrap();
        let found = open_current(d).await.unwrap();
        assert_eq!(found.meta.last_log_id, Some(log_id(1, 5)));
        // A data file in an older format (before an upgrade) is not offered to replicas.
        std::fs::write(data_path(d, &fid), b"\x05\0\0\0old").unwrap();
        assert!(open_current(d).await.is_none());
        // Power loss: a zero-length meta, then a garbled one, then none.
        std::fs::write(meta_path(d, &fid), b"").unwrap();
        assert!(open_current(d).await.is_none());
        std::fs::write(meta_path(d, &fid), [0xffu8; 7]).unwrap();
        assert!(open_current(d).await.is_none());
        std::fs::remove_file(meta_path(d, &fid)).unwrap();
        assert!(open_current(d).await.is_none());
        // A garbled `current`.
        std::fs::write(d.join(CURRENT), b"../../etc").unwrap();
        assert!(open_current(d).await.is_none());
    }

    #[test]
    fn snapshot_ids_are_sanitised_for_file_names() {
        assert_eq!(file_id("3-120-1700000000"), "3-120-1700000000");
        for evil in ["../../x", "a/b", "", "snap\0", "é"] {
            let f = file_id(evil);
            assert!(!f.is_empty());
            assert!(f
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        }
        assert_ne!(file_id("a/b"), file_id("ab"));
    }

    #[test]
    fn stale_temp_files_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = dir.path().join("snapshots");
        std::fs::create_dir_all(&snaps).unwrap();
        let files = Mutex::new(Files::default());
        let cur = put(&snaps, &meta("1-5-1", Some(log_id(1, 5))));
        promote(&snaps, &files, &cur, Some(log_id(1, 5))).unwrap();
        let stale = [
            "incoming-1",
            "building-2",
            "installing-3",
            "current.tmp",
            "snap-1-9-9.meta.tmp",
            "snap-0-1-1.data",
        ];
        for name in stale {
            std::fs::write(snaps.join(name), b"x").unwrap();
        }
        let _sm = StateMachine::new(engine(dir.path())).unwrap();
        for name in stale {
            assert!(!snaps.join(name).exists(), "{name} left behind");
        }
        assert!(data_path(&snaps, &cur).exists());
        assert_eq!(current_id(&snaps).as_deref(), Some(cur.as_str()));
    }

    /// A build that fails (here: its folder is gone) is retried instead of returning the error
    /// openraft would treat as fatal, and succeeds once the cause is fixed.
    #[tokio::test]
    async fn a_failing_build_is_retried_not_returned() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::new(engine(dir.path())).unwrap();
        sm.apply([Entry {
            log_id: log_id(1, 1),
            payload: EntryPayload::Blank,
        }])
        .await
        .unwrap();
        let mut builder = sm.get_snapshot_builder().await;
        builder.retry = Duration::from_millis(5);
        std::fs::remove_dir_all(&sm.dir).unwrap();
        let build = tokio::spawn(async move { builder.build_snapshot().await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!build.is_finished(), "the build gave up");
        std::fs::create_dir_all(&sm.dir).unwrap();
        let snap = tokio::time::timeout(Duration::from_secs(10), build)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(snap.meta.last_log_id, Some(log_id(1, 1)));
        assert_eq!(
            sm.get_current_snapshot().await.unwrap().unwrap().meta,
            snap.meta
        );
        let leftovers: Vec<_> = std::fs::read_dir(&sm.dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with("building-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[tokio::test]
    async fn a_new_transfer_removes_the_previous_incoming_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::new(engine(dir.path())).unwrap();
        let _first = sm.begin_receiving_snapshot().await.unwrap();
        let first = sm.incoming.clone().unwrap();
        assert!(first.exists());
        let _second = sm.begin_receiving_snapshot().await.unwrap();
        assert!(!first.exists());
        assert!(sm.incoming.as_ref().unwrap().exists());
    }
}

//! The write path: group commit into Raft.
//!
//! Handlers send `Command`s to one writer task. It takes whatever has queued up (up to a point
//! budget and [`ENTRY_BYTES`]) and proposes it as one Raft entry (a `Command::Batch` when
//! several), so that one log fsync and one replication round cover many requests. A few entries
//! may be in flight at once. Each request is answered once its entry is committed and applied,
//! with the entry's index. An upsert larger than [`ENTRY_BYTES`] is written as several entries,
//! one after another, and answered with the last one's index.
//!
//! Nothing waits without bound: a full queue answers 503 at once (load shedding, the request was
//! not proposed), and a proposal that cannot commit, because this leader lost its quorum or the
//! deadline passed, answers 503 saying the write may or may not have been applied.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::error::{Error, Result};
use crate::model::{split_points, Command, Reply, ENTRY_BYTES};
use crate::raft::Raft;

/// Entries proposed concurrently by one writer.
const IN_FLIGHT: usize = 4;
/// Requests that may wait for the writer; more are shed with a 503.
const QUEUE: usize = 1024;
/// Longest a request waits for its entry to commit and apply (an apply may wait for the indexer
/// under backpressure, so this is generous; a lost quorum is noticed much sooner).
const COMMIT_DEADLINE: Duration = Duration::from_secs(60);

struct Pending {
    cmd: Command,
    reply: oneshot::Sender<Result<(u64, Reply)>>,
}

/// Handle to the writer task (cheap to clone).
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Pending>,
}

impl Writer {
    /// Starts the writer task proposing to `raft`.
    pub fn start(raft: Raft, max_batch_points: usize) -> Writer {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(raft, rx, max_batch_points));
        Writer { tx }
    }

    /// Submits a command; resolves once it is committed and applied, with its index and reply.
    pub async fn write(&self, cmd: Command) -> Result<(u64, Reply)> {
        match cmd {
            Command::Upsert { collection, points } if cmd_bytes(&points) > ENTRY_BYTES => {
                self.write_in_parts(collection, points).await
            }
            cmd => self.write_entry(cmd).await,
        }
    }

    /// A large upsert, as several entries in order: readers may see its first parts before the
    /// rest, and the answer's index covers all of it. A failure after the first part says that
    /// part of the request was applied.
    async fn write_in_parts(
        &self,
        collection: String,
        points: Vec<crate::model::PointWrite>,
    ) -> Result<(u64, Reply)> {
        let parts = split_points(points, ENTRY_BYTES);
        let n = parts.len();
        let (mut index, mut count) = (0, 0);
        for (k, points) in parts.into_iter().enumerate() {
            let cmd = Command::Upsert {
                collection: collection.clone(),
                points,
            };
            match self.write_entry(cmd).await {
                Ok((i, Reply::Upserted { count: c })) => {
                    index = i;
                    count += c;
                }
                // Rejected at apply (the collection was dropped meanwhile): nothing of this part
                // changed, and the rejection is the answer.
                Ok(rejected) => return Ok(rejected),
                Err(e) if k == 0 => return Err(e),
                Err(e) => {
                    return Err(Error::Unavailable(format!(
                        "part {} of {n} of this upsert failed after the earlier parts were \
                         applied (up to index {index}); upserts by id may be resent: {e}",
                        k + 1
                    )))
                }
            }
        }
        Ok((index, Reply::Upserted { count }))
    }

    /// Submits one log entry's command.
    async fn write_entry(&self, cmd: Command) -> Result<(u64, Reply)> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Pending { cmd, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => Error::Unavailable(format!(
                    "{QUEUE} writes are already waiting; this one was not proposed, retry later"
                )),
                mpsc::error::TrySendError::Closed(_) => Error::Unavailable("writer stopped".into()),
            })?;
        match tokio::time::timeout(COMMIT_DEADLINE, rx).await {
            Ok(r) => r.map_err(|_| Error::Unavailable("writer stopped".into()))?,
            Err(_) => Err(Error::Unavailable(format!(
                "not committed within {} s; the write may or may not have been applied",
                COMMIT_DEADLINE.as_secs()
            ))),
        }
    }
}

async fn run(raft: Raft, mut rx: mpsc::Receiver<Pending>, max_batch_points: usize) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        // Whatever queued while we waited for a slot joins this entry.
        let mut group = vec![first];
        let mut weight = group[0].cmd.weight();
        let mut bytes = group[0].cmd.size_hint();
        while weight < max_batch_points && bytes < ENTRY_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    weight += p.cmd.weight();
                    bytes += p.cmd.size_hint();
                    group.push(p);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let (cmds, replies): (Vec<Command>, Vec<_>) =
                group.into_iter().map(|p| (p.cmd, p.reply)).unzip();
            let batched = cmds.len() > 1;
            let cmd = if batched {
                Command::Batch(cmds)
            } else {
                cmds.into_iter().next().unwrap_or(Command::Noop)
            };
            let outcome = tokio::select! {
                r = raft.client_write(cmd) => r,
                why = quorum_lost(&raft) => {
                    let err = Error::Unavailable(format!(
                        "{why}; the write may or may not have been applied"
                    ));
                    for tx in replies {
                        let _ = tx.send(Err(err.clone_for_reply()));
                    }
                    drop(permit);
                    return;
                }
            };
            match outcome {
                Ok(resp) => {
                    let index = resp.log_id.index;
                    let parts = match resp.data {
                        Reply::Batch(parts) if batched => parts,
                        single => vec![single],
                    };
                    if parts.len() == replies.len() {
                        for (tx, r) in replies.into_iter().zip(parts) {
                            let _ = tx.send(Ok((index, r)));
                        }
                    } else {
                        // An entry skipped at apply (already applied before a restart) has no
                        // per-request replies: say so to every request, not only the first
                        // (review L13).
                        let err = Error::Unavailable(format!(
                            "the entry at index {index} was committed but its replies are \
                             unknown; the write may or may not have been applied"
                        ));
                        for tx in replies {
                            let _ = tx.send(Err(err.clone_for_reply()));
                        }
                    }
                }
                Err(e) => {
                    let err = crate::raft::client_write_error(e);
                    for tx in replies {
                        let _ = tx.send(Err(err.clone_for_reply()));
                    }
                }
            }
            drop(permit);
        });
    }
}

fn cmd_bytes(points: &[crate::model::PointWrite]) -> usize {
    points.iter().map(crate::model::PointWrite::size_hint).sum()
}

/// Resolves when this node leads but no quorum acknowledged it for an election timeout: its
/// pending proposals may never commit here (another node may lead by now).
async fn quorum_lost(raft: &Raft) -> String {
    let limit = Duration::from_millis(raft.config().election_timeout_max);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        let metrics = raft.metrics();
        let m = metrics.borrow();
        if m.current_leader == Some(m.id) && crate::cluster::quorum_fresh(&m, limit) == Some(false)
        {
            return format!(
                "this leader has not heard from a quorum for {} ms",
                m.millis_since_quorum_ack.unwrap_or_default()
            );
        }
    }
}

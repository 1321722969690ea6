//! The write path: group commit into Raft.
//!
//! Handlers send `Command`s to one writer task. It takes whatever has queued up (up to a point
//! budget) and proposes it as one Raft entry (a `Command::Batch` when several), so that one log
//! fsync and one replication round cover many requests. A few entries may be in flight at once.
//! Each request is answered once its entry is committed and applied, with the entry's index.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::error::{Error, Result};
use crate::model::{Command, Reply};
use crate::raft::Raft;

/// Entries proposed concurrently by one writer.
const IN_FLIGHT: usize = 4;

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
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(run(raft, rx, max_batch_points));
        Writer { tx }
    }

    /// Submits a command; resolves once it is committed and applied, with its index and reply.
    pub async fn write(&self, cmd: Command) -> Result<(u64, Reply)> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { cmd, reply })
            .await
            .map_err(|_| Error::Unavailable("writer stopped".into()))?;
        rx.await
            .map_err(|_| Error::Unavailable("writer stopped".into()))?
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
        while weight < max_batch_points {
            match rx.try_recv() {
                Ok(p) => {
                    weight += p.cmd.weight();
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
            match raft.client_write(cmd).await {
                Ok(resp) => {
                    let index = resp.log_id.index;
                    let parts = match resp.data {
                        Reply::Batch(parts) if batched => parts,
                        single => vec![single],
                    };
                    for (tx, r) in replies.into_iter().zip(parts) {
                        let _ = tx.send(Ok((index, r)));
                    }
                }
                Err(e) => {
                    let err = crate::cluster::client_write_error(e);
                    for tx in replies {
                        let _ = tx.send(Err(err.clone_for_reply()));
                    }
                }
            }
            drop(permit);
        });
    }
}

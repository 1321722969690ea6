//! The write path on a single node: group commit.
//!
//! Handlers send `Command`s to one writer task. It takes whatever has queued up (up to a point
//! budget), applies it as one log entry (a `Command::Batch` when several), fsyncs once, and only
//! then answers every request with the entry's index. Under load, the requests that arrive during
//! one fsync share the next one. Replication (Raft) will take this task's place: the same batch
//! becomes one Raft entry.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::model::{Command, Reply};

/// How long a write waits for the indexer to make room before applying anyway.
const BACKPRESSURE_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// Starts the writer task over `engine`.
    pub fn start(engine: Arc<Engine>, max_batch_points: usize) -> Writer {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(run(engine, rx, max_batch_points));
        Writer { tx }
    }

    /// Submits a command; resolves once it is applied and durable, with its log index and reply.
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

async fn run(engine: Arc<Engine>, mut rx: mpsc::Receiver<Pending>, max_batch_points: usize) {
    let mut failed: Option<String> = None;
    while let Some(first) = rx.recv().await {
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
        if let Some(why) = &failed {
            for p in group {
                let _ = p.reply.send(Err(Error::Unavailable(format!(
                    "writes disabled after a storage failure: {why}"
                ))));
            }
            continue;
        }
        let (cmds, replies): (Vec<Command>, Vec<_>) =
            group.into_iter().map(|p| (p.cmd, p.reply)).unzip();
        let eng = engine.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let cmd = if cmds.len() == 1 {
                cmds.into_iter()
                    .next()
                    .unwrap_or(Command::Batch(Vec::new()))
            } else {
                Command::Batch(cmds)
            };
            if !eng.wait_for_room(&cmd, BACKPRESSURE_TIMEOUT) {
                tracing::warn!("indexer is behind; applying a write past the backpressure bound");
            }
            let index = eng.last_applied() + 1;
            let mut out = eng.apply(&[(index, cmd)])?;
            eng.flush()?;
            Ok::<_, Error>((index, out.pop()))
        })
        .await;
        match outcome {
            Ok(Ok((index, Some(reply)))) => {
                let parts = match reply {
                    Reply::Batch(parts) if replies.len() > 1 => parts,
                    single => vec![single],
                };
                for (tx, r) in replies.into_iter().zip(parts) {
                    let _ = tx.send(Ok((index, r)));
                }
            }
            Ok(Ok((_, None))) => {
                for tx in replies {
                    let _ = tx.send(Err(Error::Internal("no reply from apply".into())));
                }
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "storage failure; refusing further writes");
                failed = Some(e.to_string());
                for tx in replies {
                    let _ = tx.send(Err(Error::Unavailable(format!("storage failure: {e}"))));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "writer task panicked; refusing further writes");
                failed = Some("apply panicked".into());
                for tx in replies {
                    let _ = tx.send(Err(Error::Internal("apply panicked".into())));
                }
            }
        }
    }
}

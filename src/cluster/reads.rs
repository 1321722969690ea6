//! Read consistency: a read waits for an index, checks its staleness, or confirms the leader's
//! read index (linearizable) before the engine serves it.

use openraft::error::RaftError;

use super::{Cluster, IndexResponse};
use crate::error::{Error, Result};
use crate::model::{Consistency, ConsistencyLevel};

impl Cluster {
    /// The commit index: the leader's own, or the last the leader told us.
    pub fn committed(&self) -> u64 {
        let m = self.metrics();
        if m.current_leader == Some(self.id) {
            // On the leader, applied trails commit by at most the entries in flight.
            m.last_applied.map_or(0, |l| l.index)
        } else {
            self.contact.lock().map_or(0, |(_, i)| i)
        }
    }

    async fn wait_applied(&self, index: u64) -> Result<u64> {
        match self
            .raft
            .wait(Some(self.read_wait))
            .applied_index_at_least(Some(index), "read")
            .await
        {
            Ok(m) => Ok(m.last_applied.map_or(0, |l| l.index)),
            Err(_) => Err(Error::ReadTimeout {
                wanted: index,
                applied: self.applied(),
            }),
        }
    }

    /// Makes a read meet `c`; returns the applied index it may be served at.
    pub async fn ensure_read(&self, c: &Consistency) -> Result<u64> {
        match c {
            Consistency::Level(ConsistencyLevel::Eventual) => Ok(self.applied()),
            Consistency::MinIndex { min_index } => self.wait_applied(*min_index).await,
            Consistency::MaxLag { max_lag_ms } => {
                let m = self.metrics();
                if m.current_leader == Some(self.id) {
                    match m.millis_since_quorum_ack {
                        Some(ms) if ms <= *max_lag_ms => Ok(self.applied()),
                        other => Err(Error::Stale(format!(
                            "leader has not heard from a quorum for {} ms (max_lag_ms {max_lag_ms})",
                            other.map_or("ever".to_string(), |v| v.to_string())
                        ))),
                    }
                } else {
                    let applied = self.applied();
                    match *self.contact.lock() {
                        Some((at, commit)) if at.elapsed().as_millis() as u64 <= *max_lag_ms && applied >= commit => Ok(applied),
                        Some((at, commit)) => Err(Error::Stale(format!(
                            "last heard from the leader {} ms ago, applied {applied} of commit {commit} (max_lag_ms {max_lag_ms})",
                            at.elapsed().as_millis()
                        ))),
                        None => Err(Error::Stale("this node has not heard from a leader".into())),
                    }
                }
            }
            Consistency::Level(ConsistencyLevel::Linearizable) => {
                let index = if self.is_leader() {
                    self.read_index().await?
                } else {
                    let (_, addr) = self.leader().ok_or(Error::NotLeader(None))?;
                    let req = self.peer.post(&addr, "/cluster/read_index");
                    let resp = req
                        .send()
                        .await
                        .map_err(|e| Error::Unavailable(format!("leader unreachable: {e}")))?;
                    if !resp.status().is_success() {
                        return Err(Error::Unavailable(format!(
                            "leader answered {} to read_index",
                            resp.status()
                        )));
                    }
                    resp.json::<IndexResponse>()
                        .await
                        .map_err(|e| Error::Unavailable(e.to_string()))?
                        .index
                };
                self.wait_applied(index).await
            }
        }
    }

    /// Leader only: confirms leadership with a quorum and returns the read index.
    pub async fn read_index(&self) -> Result<u64> {
        match self.raft.ensure_linearizable().await {
            Ok(id) => Ok(id.map_or(0, |l| l.index)),
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(Error::NotLeader(f.leader_node.map(|n| n.addr)))
            }
            Err(RaftError::APIError(e)) => Err(Error::Unavailable(e.to_string())),
            Err(RaftError::Fatal(f)) => Err(Error::Unavailable(format!("raft stopped: {f}"))),
        }
    }
}

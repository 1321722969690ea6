//! Background duties: logging leader changes, expiring learners that vanished (leader only),
//! and the snapshot policy.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Cluster;
use crate::raft::NodeId;

impl Cluster {
    /// Logs each change of leader (or of term) as this node sees it, once: the line an operator
    /// looks for first, which openraft itself prints only inside its state dumps.
    pub fn spawn_leader_log(self: &Arc<Self>) {
        let mut watch = self.raft.metrics();
        let id = self.id;
        tokio::spawn(async move {
            let mut seen: Option<(u64, Option<NodeId>)> = None;
            loop {
                let now = {
                    let m = watch.borrow_and_update();
                    (m.current_term, m.current_leader)
                };
                if seen != Some(now) && now.1.is_some() {
                    let (term, leader) = now;
                    if leader == Some(id) {
                        tracing::info!(term, "this node is the leader");
                    } else {
                        tracing::info!(term, leader, "leader changed");
                    }
                    seen = Some(now);
                }
                if watch.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Leader duty: removes learners that have not answered for `expiry` (a replica that died
    /// without leaving), so that scaling down leaves a clean membership.
    pub fn spawn_learner_expiry(self: &Arc<Self>, expiry: Duration) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1).min(expiry));
            let mut led_term: Option<u64> = None;
            loop {
                tick.tick().await;
                let Some(c) = me.upgrade() else { return };
                if !c.is_leader() {
                    led_term = None;
                    continue;
                }
                let m = c.metrics();
                if led_term != Some(m.current_term) {
                    // Leadership (re)gained: silence from an earlier term does not count.
                    c.health.reset();
                    led_term = Some(m.current_term);
                }
                let membership = m.membership_config.membership();
                let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
                let learners: Vec<NodeId> = membership
                    .nodes()
                    .map(|(id, _)| *id)
                    .filter(|id| !voters.contains(id))
                    .collect();
                for id in learners {
                    c.health.touch(id);
                    if c.health.silent_for(id).is_some_and(|d| d > expiry) {
                        tracing::warn!(id, "learner unreachable past the expiry; removing it");
                        if let Err(e) = c.leave(id).await {
                            tracing::warn!(id, error = %e, "could not remove an expired learner");
                        }
                    }
                }
            }
        });
    }

    /// Snapshot policy: once `logs` entries have been applied since the last snapshot, build one,
    /// but not more often than every `min_interval` (a snapshot writes the whole state, so with
    /// small entries a per-count policy alone would rewrite it many times a second).
    pub fn spawn_snapshot_policy(self: &Arc<Self>, logs: u64, min_interval: Duration) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            let mut last: Option<Instant> = None;
            loop {
                tick.tick().await;
                let Some(c) = me.upgrade() else { return };
                let m = c.metrics();
                let applied = m.last_applied.map_or(0, |l| l.index);
                let snap = m.snapshot.map_or(0, |l| l.index);
                let due = applied.saturating_sub(snap) >= logs
                    && last.is_none_or(|t| t.elapsed() >= min_interval);
                if due {
                    last = Some(Instant::now());
                    if let Err(e) = c.raft.trigger().snapshot().await {
                        tracing::warn!(error = %e, "could not trigger a snapshot");
                    }
                }
            }
        });
    }
}

//! Background duties: logging leader changes, expiring learners that vanished and compacting
//! idle collections (leader only), and the snapshot policy.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Cluster;
use crate::engine::Engine;
use crate::model::{Command, Reply};
use crate::raft::NodeId;
use crate::writer::Writer;

/// When the leader compacts a collection: once it has held tombstones of at least `ratio` of its
/// graph epoch's points (and at least one) without a write for `idle`.
#[derive(Clone, Copy, Debug)]
pub struct CompactionPolicy {
    /// How long a collection must go without a write.
    pub idle: Duration,
    /// Least share of tombstones in the graph epoch's points.
    pub ratio: f64,
}

/// What the compaction duty remembers between its ticks: each collection's version and since
/// when it has held it.
#[derive(Default)]
struct IdleSince(HashMap<String, (u64, Instant)>);

impl IdleSince {
    /// The collections due for compaction at `now`, given each one's name, version, tombstones
    /// and epoch points ([`crate::engine::Collection::churn`]). Forgets collections that are
    /// gone.
    fn due(
        &mut self,
        now: Instant,
        collections: Vec<(String, (u64, u64, u64))>,
        policy: CompactionPolicy,
    ) -> Vec<String> {
        let mut seen = HashMap::with_capacity(collections.len());
        let mut due = Vec::new();
        for (name, (version, tombstones, epoch)) in collections {
            let since = match self.0.get(&name) {
                Some(&(v, t)) if v == version => t,
                _ => now,
            };
            if now.duration_since(since) >= policy.idle
                && tombstones > 0
                && tombstones as f64 >= policy.ratio * epoch as f64
            {
                due.push(name.clone());
            }
            seen.insert(name, (version, since));
        }
        self.0 = seen;
        due
    }
}

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

    /// Leader duty: proposes `Command::Compact` for each collection the policy finds idle with
    /// tombstones, so that the memory of deleted and replaced points is handed back once a
    /// churn stops, and not only when tombstones pass `--rebuild-ratio`. Through the log, so
    /// that every node rebuilds at the same index and builds the same graph. Off when
    /// `policy.idle` is zero.
    pub fn spawn_compaction(
        self: &Arc<Self>,
        engine: &Arc<Engine>,
        writer: Writer,
        policy: CompactionPolicy,
    ) {
        if policy.idle.is_zero() {
            return;
        }
        let me = Arc::downgrade(self);
        let engine = Arc::downgrade(engine);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1).min(policy.idle));
            let mut idle = IdleSince::default();
            loop {
                tick.tick().await;
                let Some(c) = me.upgrade() else { return };
                if !c.is_leader() {
                    // A new leader's clock starts afresh: it saw none of the writes before.
                    idle = IdleSince::default();
                    continue;
                }
                let Some(states) = engine
                    .upgrade()
                    .map(|e| e.each(|col| (col.name().to_string(), col.churn())))
                else {
                    return;
                };
                for name in idle.due(Instant::now(), states, policy) {
                    let cmd = Command::Compact {
                        collection: name.clone(),
                    };
                    match writer.write(cmd).await {
                        Ok((index, Reply::Compacted { tombstones })) if tombstones > 0 => {
                            tracing::info!(collection = %name, tombstones, index, "idle collection compacted");
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(collection = %name, error = %e, "could not propose a compaction")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_collection_is_compacted_once_idle_with_enough_tombstones() {
        let policy = CompactionPolicy {
            idle: Duration::from_secs(30),
            ratio: 0.05,
        };
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut idle = IdleSince::default();
        let state = |v, tomb, epoch| vec![("a".to_string(), (v, tomb, epoch))];
        assert!(idle.due(at(0), state(1, 10, 100), policy).is_empty());
        assert!(idle.due(at(29), state(1, 10, 100), policy).is_empty());
        assert_eq!(idle.due(at(30), state(1, 10, 100), policy), ["a"]);
        // A write restarts the clock.
        assert!(idle.due(at(31), state(2, 11, 100), policy).is_empty());
        assert!(idle.due(at(60), state(2, 11, 100), policy).is_empty());
        assert_eq!(idle.due(at(61), state(2, 11, 100), policy), ["a"]);
        // Too few tombstones, or none, never.
        assert!(idle.due(at(200), state(2, 4, 100), policy).is_empty());
        let none = CompactionPolicy {
            ratio: 0.0,
            ..policy
        };
        assert!(idle.due(at(300), state(2, 0, 100), none).is_empty());
        assert_eq!(idle.due(at(300), state(2, 1, 100), none), ["a"]);
        // A collection that is gone is forgotten; one created again under its name starts anew.
        assert!(idle.due(at(301), vec![], policy).is_empty());
        assert!(idle.due(at(302), state(2, 50, 100), policy).is_empty());
    }
}

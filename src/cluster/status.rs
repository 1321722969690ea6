//! `GET /cluster` and readiness: what this node reports about itself and the cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::{BasicNode, RaftMetrics, ServerState};

use super::Cluster;
use crate::model::{ClusterStatus, MemberInfo};
use crate::raft::NodeId;

/// Whether a leader may take writes, given its metrics: it heard from a quorum within `limit`.
/// `None` while it has not been acknowledged yet (just elected).
pub fn quorum_fresh(m: &RaftMetrics<NodeId, BasicNode>, limit: Duration) -> Option<bool> {
    m.millis_since_quorum_ack
        .map(|ms| ms <= limit.as_millis() as u64)
}

/// Why Raft stopped, from its metrics.
pub fn fatal_of(m: &RaftMetrics<NodeId, BasicNode>) -> Option<String> {
    match (&m.running_state, m.state) {
        (Err(e), _) => Some(e.to_string()),
        (Ok(()), ServerState::Shutdown) => Some("raft has shut down".into()),
        _ => None,
    }
}

fn role_of(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Learner => "learner",
        ServerState::Candidate => "candidate",
        ServerState::Shutdown => "shutdown",
    }
}

impl Cluster {
    /// `GET /cluster`.
    pub fn status(&self) -> ClusterStatus {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let last_log = m.last_log_index.unwrap_or(0);
        let matched: BTreeMap<NodeId, u64> = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, l)| (*id, l.map_or(0, |l| l.index)))
                    .collect()
            })
            .unwrap_or_default();
        let mut members: Vec<MemberInfo> = membership
            .nodes()
            .map(|(id, node)| {
                let mm = matched.get(id).copied();
                MemberInfo {
                    id: *id,
                    addr: node.addr.clone(),
                    role: if voters.contains(id) {
                        "voter"
                    } else {
                        "learner"
                    }
                    .to_string(),
                    matched: mm,
                    lag: mm.map(|x| last_log.saturating_sub(x)),
                }
            })
            .collect();
        members.sort_by_key(|x| (x.role != "voter", x.id));
        let leader_addr = m
            .current_leader
            .and_then(|l| membership.get_node(&l))
            .map(|n| n.addr.clone());
        let leads = m.current_leader == Some(self.id);
        let fatal = fatal_of(&m);
        ClusterStatus {
            writable: leads
                && fatal.is_none()
                && quorum_fresh(&m, self.election_timeout()) == Some(true),
            quorum_ack_ms: if leads {
                m.millis_since_quorum_ack
            } else {
                None
            },
            fatal,
            id: self.id,
            role: role_of(m.state).to_string(),
            term: m.current_term,
            leader_id: m.current_leader,
            leader_addr,
            applied_index: m.last_applied.map_or(0, |l| l.index),
            committed_index: self.committed(),
            last_log_index: last_log,
            members,
        }
    }

    /// `/readyz`: a member that has applied the leader's commit index within the allowed lag.
    pub fn ready(&self) -> std::result::Result<u64, String> {
        let m = self.metrics();
        if let Some(why) = fatal_of(&m) {
            return Err(format!("raft stopped: {why}"));
        }
        let applied = m.last_applied.map_or(0, |l| l.index);
        if m.membership_config
            .membership()
            .get_node(&self.id)
            .is_none()
        {
            return Err("not a member of the cluster yet".into());
        }
        if m.current_leader == Some(self.id) {
            return Ok(applied);
        }
        let Some((at, commit)) = *self.contact.lock() else {
            return Err("has not heard from a leader".into());
        };
        if at.elapsed() > Duration::from_secs(5) {
            return Err(format!(
                "last heard from the leader {} ms ago",
                at.elapsed().as_millis()
            ));
        }
        if applied + self.ready_max_lag < commit {
            return Err(format!("catching up: applied {applied} of {commit}"));
        }
        Ok(applied)
    }
}

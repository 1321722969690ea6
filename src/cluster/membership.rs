//! Membership: join, leave and promote, serialised on the leader, and the calls a node makes
//! to ask for them.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Cluster, IndexResponse};
use crate::error::{Error, Result};
use crate::raft::{client_write_error, typ, NodeId};

/// A learner is made a voter only once it trails the leader's log by at most this many entries.
const PROMOTE_MAX_LAG: u64 = 100;
/// ... waiting at most this long for it to get there.
const PROMOTE_WAIT: Duration = Duration::from_secs(600);

/// A join request (`POST /cluster/join`).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The joining node's id.
    pub id: NodeId,
    /// Its advertised URL.
    pub addr: String,
    /// Join as a voter (default: learner, i.e. a read replica).
    #[serde(default)]
    pub voter: bool,
}

/// Names a member (`POST /cluster/leave`, `/cluster/promote`).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberRequest {
    /// The member's id.
    pub id: NodeId,
}

impl Cluster {
    /// Retries a membership change while another is in progress (joins arrive together).
    async fn change<F, Fut>(&self, f: F) -> Result<u64>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<
            Output = std::result::Result<
                openraft::raft::ClientWriteResponse<crate::raft::TypeConfig>,
                typ::ClientWriteError,
            >,
        >,
    {
        let _guard = self.membership_lock.lock().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match f().await {
                Ok(r) => return Ok(r.log_id.index),
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(_),
                ))) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(client_write_error(e)),
            }
        }
    }

    /// Leader only: adds a node as a learner (not blocking on its catch-up), then as a voter if asked.
    pub async fn join(&self, req: &JoinRequest) -> Result<u64> {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        if let Some(existing) = membership.get_node(&req.id) {
            if existing.addr != req.addr {
                return Err(Error::Conflict(format!(
                    "node {} is already a member at {}",
                    req.id, existing.addr
                )));
            }
            let is_voter = membership.voter_ids().any(|v| v == req.id);
            if is_voter || !req.voter {
                // A restarted member asking again: nothing to change.
                return Ok(m.last_applied.map_or(0, |l| l.index));
            }
        }
        // Another member at the same address is an earlier life of this node whose state was
        // lost: it can never answer again, so it goes (a dead voter would weaken the quorum).
        // It goes first: while both are members the leader runs two replication streams (and a
        // candidate asks for two votes) at one address, and the new node would answer for the
        // old one (a vote or an acknowledgement it never gave).
        let stale: BTreeSet<NodeId> = membership
            .nodes()
            .filter(|(id, n)| **id != req.id && n.addr == req.addr)
            .map(|(id, _)| *id)
            .collect();
        if stale.contains(&self.id) {
            return Err(Error::invalid(
                "addr",
                "this is the leader's own address; give the joining node its own --advertise",
            ));
        }
        if !stale.is_empty() {
            tracing::warn!(?stale, addr = %req.addr, "removing earlier members at the joining node's address");
            let voters: BTreeSet<NodeId> = stale
                .iter()
                .filter(|id| membership.voter_ids().any(|v| v == **id))
                .copied()
                .collect();
            if !voters.is_empty() {
                self.change(|| {
                    self.raft
                        .change_membership(ChangeMembers::RemoveVoters(voters.clone()), false)
                })
                .await?;
            }
            let m = self.metrics();
            let left: BTreeSet<NodeId> = stale
                .iter()
                .filter(|id| m.membership_config.membership().get_node(id).is_some())
                .copied()
                .collect();
            if !left.is_empty() {
                self.change(|| {
                    self.raft
                        .change_membership(ChangeMembers::RemoveNodes(left.clone()), false)
                })
                .await?;
            }
            for id in &stale {
                self.health.forget(*id);
            }
        }
        self.health.touch(req.id);
        self.fresh_snapshot().await;
        let node = BasicNode {
            addr: req.addr.clone(),
        };
        let mut index = self
            .change(|| self.raft.add_learner(req.id, node.clone(), false))
            .await?;
        if req.voter && !membership.voter_ids().any(|v| v == req.id) {
            self.wait_caught_up(req.id).await?;
            index = self
                .change(|| {
                    self.raft.change_membership(
                        ChangeMembers::AddVoterIds(BTreeSet::from([req.id])),
                        false,
                    )
                })
                .await?;
        }
        tracing::info!(id = req.id, addr = %req.addr, voter = req.voter, index, "node joined");
        Ok(index)
    }

    /// Before adding a replica: make the snapshot it will be sent current (it carries the latest
    /// graph dumps), so that it replays little log and rebuilds little graph. Best effort.
    async fn fresh_snapshot(&self) {
        let m = self.metrics();
        let applied = m.last_applied.map_or(0, |l| l.index);
        if applied == 0
            || m.snapshot
                .is_some_and(|s| applied.saturating_sub(s.index) < 64)
        {
            return;
        }
        if self.raft.trigger().snapshot().await.is_err() {
            return;
        }
        let _ = self
            .raft
            .wait(Some(Duration::from_secs(60)))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= applied),
                "snapshot for a joining replica",
            )
            .await;
    }

    /// Leader only: removes a member (a learner, or a voter leaving the voter set).
    pub async fn leave(&self, id: NodeId) -> Result<u64> {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        if membership.get_node(&id).is_none() {
            return Err(Error::invalid("id", format!("node {id} is not a member")));
        }
        let is_voter = membership.voter_ids().any(|v| v == id);
        let index = if is_voter {
            self.change(|| {
                self.raft
                    .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
            })
            .await?;
            self.change(|| {
                self.raft
                    .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
            })
            .await?
        } else {
            self.change(|| {
                self.raft
                    .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
            })
            .await?
        };
        self.health.forget(id);
        tracing::info!(id, index, "node left");
        Ok(index)
    }

    /// Leader only: turns a learner into a voter.
    pub async fn promote(&self, id: NodeId) -> Result<u64> {
        let m = self.metrics();
        if m.membership_config.membership().get_node(&id).is_none() {
            return Err(Error::invalid("id", format!("node {id} is not a member")));
        }
        self.wait_caught_up(id).await?;
        self.change(|| {
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
        })
        .await
    }

    /// Waits until learner `id` has replicated this leader's log up to the last
    /// [`PROMOTE_MAX_LAG`] entries, so that making it a voter does not stall every commit behind
    /// its snapshot transfer and catch-up (review M4). Bounded by [`PROMOTE_WAIT`].
    async fn wait_caught_up(&self, id: NodeId) -> Result<()> {
        let caught_up = self
            .raft
            .wait(Some(PROMOTE_WAIT))
            .metrics(
                |m| {
                    let last = m.last_log_index.unwrap_or(0);
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&id))
                        .is_some_and(|l| l.map_or(0, |l| l.index) + PROMOTE_MAX_LAG >= last)
                },
                "learner caught up",
            )
            .await;
        caught_up.map(|_| ()).map_err(|_| {
            Error::Unavailable(format!(
                "node {id} did not catch up with the leader's log within {} s; not promoted",
                PROMOTE_WAIT.as_secs()
            ))
        })
    }

    /// Asks the cluster to add this node, retrying until it succeeds or `deadline`; `urls` (any
    /// members) are tried in turn, so that one member being down does not stop a join.
    pub async fn request_join(
        &self,
        urls: &[String],
        voter: bool,
        deadline: Duration,
    ) -> Result<u64> {
        if urls.is_empty() {
            return Err(Error::invalid("join", "no URL to join"));
        }
        let started = Instant::now();
        let body = JoinRequest {
            id: self.id,
            addr: self.advertise.clone(),
            voter,
        };
        let mut delay = Duration::from_millis(100);
        let mut attempt = 0usize;
        loop {
            let url = &urls[attempt % urls.len()];
            attempt += 1;
            let req = self.peer.post(url, "/cluster/join").json(&body);
            let outcome = match req.send().await {
                Ok(r) if r.status().is_success() => match r.json::<IndexResponse>().await {
                    Ok(ix) => return Ok(ix.index),
                    Err(e) => e.to_string(),
                },
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    if status.is_client_error() && status != reqwest::StatusCode::NOT_FOUND {
                        return Err(Error::Unavailable(format!("join refused: {status} {text}")));
                    }
                    format!("{status} {text}")
                }
                Err(e) => e.to_string(),
            };
            if started.elapsed() > deadline {
                return Err(Error::Unavailable(format!(
                    "could not join {url}: {outcome}"
                )));
            }
            tracing::info!(url, %outcome, "join not accepted yet; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// A learner that is stopping asks the leader to remove it, so that scaling down leaves a
    /// clean membership without waiting for the learner expiry. Voters stay (removing one is an
    /// operator's decision); without a known leader there is no one to ask.
    pub async fn request_leave(&self) {
        let m = self.metrics();
        let is_voter = m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == self.id);
        if is_voter {
            return;
        }
        let Some((_, leader)) = self.leader() else {
            return;
        };
        let req = self
            .peer
            .post(&leader, "/cluster/leave")
            .timeout(Duration::from_secs(5))
            .json(&MemberRequest { id: self.id });
        match req.send().await {
            Ok(r) if r.status().is_success() => tracing::info!("left the cluster"),
            Ok(r) => tracing::warn!(status = %r.status(), "leaving the cluster failed"),
            Err(e) => tracing::warn!(error = %e, "leaving the cluster failed"),
        }
    }
}

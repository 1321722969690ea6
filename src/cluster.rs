//! This node's view of the cluster: the Raft handle plus what the API needs around it:
//! read consistency (min_index, bounded staleness, linearizable), membership changes (join,
//! leave, promote, serialised on the leader), readiness, and expiry of learners that vanished.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, RaftMetrics, ServerState};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{Error, Result};
pub use crate::model::{ClusterStatus, MemberInfo};
use crate::model::{Consistency, ConsistencyLevel};
use crate::raft::{typ, NodeId, PeerHealth, Raft, SECRET_HEADER};

/// A learner is made a voter only once it trails the leader's log by at most this many entries.
const PROMOTE_MAX_LAG: u64 = 100;
/// ... waiting at most this long for it to get there.
const PROMOTE_WAIT: Duration = Duration::from_secs(600);

/// Where a write received by this node should go.
#[derive(Debug, PartialEq)]
pub enum WriteTarget {
    /// This node leads with a quorum: propose it here.
    Here,
    /// Forward it to the leader at this URL.
    Leader(String),
}

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

/// Answer to membership calls and `/cluster/read_index`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct IndexResponse {
    /// The log index of the change (or the read index).
    pub index: u64,
}

/// The cluster as this node sees it.
pub struct Cluster {
    /// The Raft handle.
    pub raft: Raft,
    /// This node's id.
    pub id: NodeId,
    /// This node's URL.
    pub advertise: String,
    /// The cluster secret (sent on every internal call; see [`crate::config::Config::secret`]).
    pub secret: String,
    /// When peers last answered (leader side).
    pub health: PeerHealth,
    http: reqwest::Client,
    /// When the leader last reached us, and the commit index it told us then.
    contact: Mutex<Option<(Instant, u64)>>,
    membership_lock: tokio::sync::Mutex<()>,
    read_wait: Duration,
    ready_max_lag: u64,
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

/// Maps a failed proposal to the crate's error.
pub fn client_write_error(e: typ::ClientWriteError) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            Error::NotLeader(f.leader_node.map(|n| n.addr))
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => match c {
            ChangeMembershipError::InProgress(_) => {
                Error::Unavailable(format!("membership change in progress: {c}"))
            }
            other => Error::invalid("id", other.to_string()),
        },
        RaftError::Fatal(f) => Error::Unavailable(format!("raft stopped: {f}")),
    }
}

impl Cluster {
    /// Wraps a started Raft.
    pub fn new(
        raft: Raft,
        id: NodeId,
        advertise: String,
        secret: String,
        health: PeerHealth,
        read_wait: Duration,
        ready_max_lag: u64,
    ) -> Cluster {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default();
        Cluster {
            raft,
            id,
            advertise,
            secret,
            health,
            http,
            contact: Mutex::new(None),
            membership_lock: tokio::sync::Mutex::new(()),
            read_wait,
            ready_max_lag,
        }
    }

    /// Fault injection for tests: while set, this node refuses all inbound Raft RPC and its own
    /// RPCs fail, as if a network partition cut it off from its peers (client HTTP still
    /// reaches it).
    pub fn set_isolated(&self, on: bool) {
        self.health.set_isolated(on);
    }

    /// Whether [`Cluster::set_isolated`] is on.
    pub fn is_isolated(&self) -> bool {
        self.health.is_isolated()
    }

    /// A snapshot of Raft's metrics.
    pub fn metrics(&self) -> RaftMetrics<NodeId, BasicNode> {
        self.raft.metrics().borrow().clone()
    }

    /// The longest election timeout: a leader not acknowledged by a quorum for this long may have
    /// been replaced, so it stops taking writes.
    pub fn election_timeout(&self) -> Duration {
        Duration::from_millis(self.raft.config().election_timeout_max)
    }

    /// Whether this node leads and no other node can have been elected since: a quorum
    /// acknowledged it within half the shortest election timeout. Its log then holds every
    /// acknowledged write, so a read token past its end is a client error.
    pub fn leads_surely(&self) -> bool {
        let limit = Duration::from_millis(self.raft.config().election_timeout_min / 2);
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.current_leader == Some(self.id) && quorum_fresh(&m, limit) == Some(true)
    }

    /// Why Raft stopped on this node, if it did (probes fail then).
    pub fn fatal(&self) -> Option<String> {
        fatal_of(&self.raft.metrics().borrow())
    }

    /// Where a write should go. Waits, for at most two election timeouts, while no leader is
    /// known or this node was just elected and not yet acknowledged by a quorum (a fresh node, an
    /// election under way); then answers `not_leader`. A leader that has not heard from a quorum
    /// for an election timeout answers `not_leader` at once: another node may lead by now, and
    /// the write was not proposed, so a client may safely send it elsewhere.
    pub async fn write_target(&self) -> Result<WriteTarget> {
        let limit = self.election_timeout();
        let deadline = Instant::now() + limit * 2;
        let mut watch = self.raft.metrics();
        loop {
            {
                let m = watch.borrow_and_update();
                if let Some(why) = fatal_of(&m) {
                    return Err(Error::Unavailable(format!("raft stopped: {why}")));
                }
                match m.current_leader {
                    Some(l) if l == self.id => match quorum_fresh(&m, limit) {
                        Some(true) => return Ok(WriteTarget::Here),
                        Some(false) => {
                            return Err(Error::NotLeader(None));
                        }
                        None => {}
                    },
                    Some(l) => {
                        if let Some(n) = m.membership_config.membership().get_node(&l) {
                            return Ok(WriteTarget::Leader(n.addr.clone()));
                        }
                    }
                    None => {}
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::NotLeader(None));
            }
            // Metrics change on elections; the quorum acknowledgement of a new leader may not
            // publish a change, so look again at least every 20 ms.
            let _ = tokio::time::timeout(
                (deadline - now).min(Duration::from_millis(20)),
                watch.changed(),
            )
            .await;
        }
    }

    /// Whether this node leads.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// The leader's id and URL, if known.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.metrics();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?;
        Some((id, node.addr.clone()))
    }

    /// Last applied log index.
    pub fn applied(&self) -> u64 {
        // Borrow, not clone: this runs on every read.
        self.raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index)
    }

    /// The HTTP client for calls to peers.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// When a leader last reached this node, if one ever did.
    pub fn last_contact(&self) -> Option<Instant> {
        self.contact.lock().map(|(at, _)| at)
    }

    /// Called on every AppendEntries from the leader (heartbeats included).
    pub fn record_contact(&self, leader_commit: Option<u64>) {
        let mut c = self.contact.lock();
        let prev = c.map_or(0, |(_, i)| i);
        *c = Some((Instant::now(), prev.max(leader_commit.unwrap_or(0))));
    }

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
                    let req = self
                        .http
                        .post(format!("{addr}/cluster/read_index"))
                        .header(SECRET_HEADER, &self.secret);
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
            let req = self
                .http
                .post(format!("{}/cluster/join", url.trim_end_matches('/')))
                .header(SECRET_HEADER, &self.secret)
                .json(&body);
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
}

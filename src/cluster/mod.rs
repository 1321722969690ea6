//! This node's view of the cluster: the Raft handle plus what the API needs around it. In parts:
//!
//! - here: the handle, who leads, and where a write goes ([`Cluster::write_target`]);
//! - [`status`]: `GET /cluster` and readiness;
//! - [`reads`]: read consistency (min_index, bounded staleness, linearizable);
//! - [`membership`]: join, leave, promote (serialised on the leader) and the calls that ask
//!   for them;
//! - [`duties`]: background work (leader log, learner expiry, compaction, snapshot policy).
//!
//! Every outbound call that carries the cluster secret goes through one [`PeerClient`].

mod duties;
mod membership;
mod reads;
mod status;

use std::time::{Duration, Instant};

use openraft::{BasicNode, RaftMetrics};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{Error, Result};
use crate::raft::{NodeId, PeerClient, PeerHealth, Raft};

pub use crate::model::{ClusterStatus, MemberInfo};
pub use duties::CompactionPolicy;
pub use membership::{JoinRequest, MemberRequest};
pub use status::{fatal_of, quorum_fresh};

/// Where a write received by this node should go.
#[derive(Debug, PartialEq)]
pub enum WriteTarget {
    /// This node leads with a quorum: propose it here.
    Here,
    /// Forward it to the leader at this URL.
    Leader(String),
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
    /// When peers last answered (leader side).
    pub health: PeerHealth,
    /// Calls to peers, with the cluster secret.
    peer: PeerClient,
    /// When the leader last reached us, and the commit index it told us then.
    contact: Mutex<Option<(Instant, u64)>>,
    membership_lock: tokio::sync::Mutex<()>,
    read_wait: Duration,
    ready_max_lag: u64,
}

impl Cluster {
    /// Wraps a started Raft; `peer` carries the cluster secret on every call to a peer.
    pub fn new(
        raft: Raft,
        id: NodeId,
        advertise: String,
        peer: PeerClient,
        health: PeerHealth,
        read_wait: Duration,
        ready_max_lag: u64,
    ) -> Cluster {
        Cluster {
            raft,
            id,
            advertise,
            health,
            peer,
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

    /// The HTTP client for calls to peers (forwarding a caller's request uses its headers).
    pub fn http(&self) -> &reqwest::Client {
        self.peer.http()
    }

    /// The one client for calls to peers, carrying the cluster secret.
    pub fn peer(&self) -> &PeerClient {
        &self.peer
    }

    /// The cluster secret (see [`crate::config::Config::cluster_secret`]).
    pub fn secret(&self) -> &str {
        self.peer.secret()
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
}

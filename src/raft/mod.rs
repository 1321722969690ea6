//! Replication: openraft glue over the engine.
//!
//! The primary is the Raft leader; read replicas are learners. Every node applies the same
//! committed log to its own engine (sled + HNSW), so the engine's determinism is what makes the
//! replicas identical. This module owns the type config, the sled-backed log store, the state
//! machine adapter, snapshots, and the HTTP network client; `api::cluster` serves the RPCs.
//!
//! Invariants:
//! - A log append is acknowledged to openraft only after sled has flushed it.
//! - `apply` writes the applied log id and membership in the same sled batch as the data, so a
//!   restart resumes exactly after the last applied entry (openraft replays the rest of the log).
//! - A learner may serve reads at any applied index; the `consistency` of a request decides how
//!   fresh that must be (see `api`).

// openraft's trait signatures fix `StorageError` (over 200 bytes) as the error type.
#![allow(clippy::result_large_err)]

mod log_store;
mod network;
mod peer;
mod state_machine;

pub use log_store::{Durability, LogStore};
pub use network::{decode_chunk, encode_chunk, Network, PeerHealth, SECRET_HEADER, TARGET_HEADER};
pub use peer::PeerClient;

use crate::error::Error;
pub use state_machine::StateMachine;

use crate::model::{Command, Reply};

openraft::declare_raft_types!(
    /// quiver's Raft types: log entries carry `Command`s, applying one yields a `Reply`.
    pub TypeConfig:
        D = Command,
        R = Reply,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
);

/// A node id: random, kept in the data dir, never reused.
pub type NodeId = u64;
/// The Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;

/// Aliases for openraft's generic types, specialised to ours.
pub mod typ {
    use super::{NodeId, TypeConfig};
    use openraft::BasicNode;

    /// A client write's error.
    pub type ClientWriteError =
        openraft::error::RaftError<NodeId, openraft::error::ClientWriteError<NodeId, BasicNode>>;
    /// Log entry.
    pub type Entry = openraft::Entry<TypeConfig>;
    /// Snapshot metadata.
    pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, BasicNode>;
    /// Membership as stored.
    pub type StoredMembership = openraft::StoredMembership<NodeId, BasicNode>;
    /// Log id.
    pub type LogId = openraft::LogId<NodeId>;
}

pub use crate::codec::{decode, encode};

/// Maps a failed proposal to the crate's error.
pub fn client_write_error(e: typ::ClientWriteError) -> Error {
    use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
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

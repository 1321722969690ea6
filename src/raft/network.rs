//! Raft RPC over HTTP: one reqwest client per peer, bincode bodies (decoded with a size limit),
//! the cluster secret in a header. A connection failure maps to `Unreachable` (openraft backs off),
//! a 413 to `PayloadTooLarge` (the leader sends fewer entries). Each successful RPC is recorded in
//! [`PeerHealth`], which the leader uses to expire learners that have disappeared.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, SnapshotMeta, Vote};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{decode, encode, NodeId, PeerClient, TypeConfig};

/// An AppendEntries body above this is split (openraft is told to send fewer entries), so that
/// one RPC fits in its timeout (the heartbeat interval).
const APPEND_BODY_SOFT_LIMIT: usize = 4 << 20;

/// Header carrying the cluster secret on `/raft/*` and `/cluster/*` calls.
pub const SECRET_HEADER: &str = "x-quiver-cluster-secret";
/// Header naming the node id a Raft RPC is meant for: a node never answers for another (a new
/// node at a dead member's address would otherwise vote and acknowledge as that member).
pub const TARGET_HEADER: &str = "x-quiver-target-node";

/// Everything of a snapshot chunk but its data.
#[derive(Serialize, Deserialize)]
struct ChunkHead {
    vote: Vote<NodeId>,
    meta: SnapshotMeta<NodeId, BasicNode>,
    offset: u64,
    done: bool,
}

/// The body of `POST /raft/snapshot`: the length of the chunk's head (u64, little endian), the
/// head in bincode, then the chunk's data as it is. bincode writes and reads a `Vec<u8>` one
/// element at a time, which made sending a snapshot cost about 20 ns per byte: a 2.4 GB snapshot
/// took 47 s to cross loopback.
pub fn encode_chunk(rpc: &InstallSnapshotRequest<TypeConfig>) -> Vec<u8> {
    let head = encode(&ChunkHead {
        vote: rpc.vote,
        meta: rpc.meta.clone(),
        offset: rpc.offset,
        done: rpc.done,
    });
    let mut body = Vec::with_capacity(8 + head.len() + rpc.data.len());
    body.extend_from_slice(&(head.len() as u64).to_le_bytes());
    body.extend_from_slice(&head);
    body.extend_from_slice(&rpc.data);
    body
}

/// Reads what [`encode_chunk`] wrote.
pub fn decode_chunk(body: &[u8]) -> Result<InstallSnapshotRequest<TypeConfig>, bincode::Error> {
    let malformed = || -> bincode::Error {
        Box::new(bincode::ErrorKind::Custom(
            "a snapshot chunk shorter than its head".into(),
        ))
    };
    let len = body
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or_else(malformed)?;
    let end = usize::try_from(len)
        .ok()
        .and_then(|l| l.checked_add(8))
        .filter(|&e| e <= body.len())
        .ok_or_else(malformed)?;
    let head: ChunkHead = decode(&body[8..end])?;
    Ok(InstallSnapshotRequest {
        vote: head.vote,
        meta: head.meta,
        offset: head.offset,
        data: body[end..].to_vec(),
        done: head.done,
    })
}

/// When each peer last answered a Raft RPC (any HTTP answer counts: a slow but live peer is not
/// silent), and the fault-injection switch that cuts this node off from its peers.
#[derive(Clone, Default)]
pub struct PeerHealth {
    seen: Arc<Mutex<HashMap<NodeId, Instant>>>,
    isolated: Arc<std::sync::atomic::AtomicBool>,
}

impl PeerHealth {
    fn ok(&self, id: NodeId) {
        self.seen.lock().insert(id, Instant::now());
    }
    /// Time since `id` last answered, if it ever did.
    pub fn silent_for(&self, id: NodeId) -> Option<Duration> {
        self.seen.lock().get(&id).map(|t| t.elapsed())
    }
    /// Starts the clock for `id` (a member just added), so that one that never answers expires too.
    pub fn touch(&self, id: NodeId) {
        self.seen.lock().entry(id).or_insert_with(Instant::now);
    }
    /// Restarts every peer's clock (this node just became leader: what it saw in an earlier term
    /// says nothing about the peers now).
    pub fn reset(&self) {
        let now = Instant::now();
        self.seen.lock().values_mut().for_each(|t| *t = now);
    }
    /// Forgets `id`.
    pub fn forget(&self, id: NodeId) {
        self.seen.lock().remove(&id);
    }
    /// Fault injection: while on, Raft RPC in both directions fails as if the network were cut.
    pub fn set_isolated(&self, on: bool) {
        self.isolated.store(on, std::sync::atomic::Ordering::SeqCst);
    }
    /// Whether [`PeerHealth::set_isolated`] is on.
    pub fn is_isolated(&self) -> bool {
        self.isolated.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Builds one [`Peer`] per replication target.
#[derive(Clone)]
pub struct Network {
    client: PeerClient,
    health: PeerHealth,
}

impl Network {
    /// A network factory sending Raft RPC through `client`.
    pub fn new(client: PeerClient, health: PeerHealth) -> Network {
        Network { client, health }
    }
}

/// The connection to one peer.
pub struct Peer {
    target: NodeId,
    node: BasicNode,
    client: PeerClient,
    health: PeerHealth,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            target,
            node: node.clone(),
            client: self.client.clone(),
            health: self.health.clone(),
        }
    }
}

impl Peer {
    async fn call<Req, Resp, E>(
        &mut self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        self.call_with(path, encode(req), option).await
    }

    /// [`Peer::call`] with the request already encoded.
    async fn call_with<Resp, E>(
        &mut self,
        path: &str,
        body: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        if self.health.is_isolated() {
            return Err(RPCError::Unreachable(Unreachable::new(
                &std::io::Error::other("isolated (fault injection)"),
            )));
        }
        let r = self
            .client
            .post(&self.node.addr, &format!("/raft/{path}"))
            .timeout(option.hard_ttl())
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(TARGET_HEADER, self.target.to_string())
            .body(body);
        let resp = r.send().await.map_err(|e| {
            if e.is_connect() {
                RPCError::Unreachable(Unreachable::new(&e))
            } else {
                RPCError::Network(NetworkError::new(&e))
            }
        })?;
        let status = resp.status();
        // Any answer is a sign of life (a slow peer is not a dead one), except the 503 that an
        // isolated node (fault injection, `Cluster::set_isolated`) gives instead of silence.
        if status != reqwest::StatusCode::SERVICE_UNAVAILABLE {
            self.health.ok(self.target);
        }
        if status == reqwest::StatusCode::PAYLOAD_TOO_LARGE {
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(64),
            ));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if !status.is_success() {
            let msg = String::from_utf8_lossy(&bytes).to_string();
            return Err(RPCError::Network(NetworkError::new(
                &std::io::Error::other(format!("{status}: {msg}")),
            )));
        }
        let res: Result<Resp, RaftError<NodeId, E>> =
            decode(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        res.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let n = rpc.entries.len() as u64;
        if n > 1 && bincode::serialized_size(&rpc).unwrap_or(0) as usize > APPEND_BODY_SOFT_LIMIT {
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(n / 2),
            ));
        }
        self.call("append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let last_chunk = rpc.done.then(|| rpc.meta.snapshot_id.clone());
        let answer = self
            .call_with("snapshot", encode_chunk(&rpc), &option)
            .await;
        if let (Some(snapshot), Ok(_)) = (last_chunk, &answer) {
            tracing::info!(target = self.target, %snapshot, "snapshot sent");
        }
        answer
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("vote", &rpc, &option).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_chunks_round_trip_and_short_ones_are_refused() {
        let rpc = InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 7),
            meta: SnapshotMeta {
                last_log_id: None,
                last_membership: Default::default(),
                snapshot_id: "1-2-3".into(),
            },
            offset: 1 << 33,
            data: (0..=255u8).cycle().take(70_000).collect(),
            done: true,
        };
        let body = encode_chunk(&rpc);
        let back = decode_chunk(&body).unwrap();
        assert_eq!(back, rpc);
        for cut in [0, 7, 8, 20] {
            assert!(decode_chunk(&body[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = body.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_chunk(&huge).is_err());
    }
}

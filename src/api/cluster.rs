//! Cluster endpoints: Raft RPC (`/raft/*`, bincode), membership (`/cluster/*`), readiness, and the
//! forwarding of writes that reach a non-leader (one hop, with the client's auth).

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest,
};
use serde::Serialize;

use super::{key_eq, ApiJson, AppState};
use crate::cluster::{ClusterStatus, IndexResponse, JoinRequest, MemberRequest, WriteTarget};
use crate::error::{Error, Result};
use crate::proxy::{self, Outbound};
use crate::raft::{decode, encode, TypeConfig, SECRET_HEADER, TARGET_HEADER};
use quiver_client::routes;

/// Marks a request already forwarded once, so that it is never forwarded again.
const FORWARDED_HEADER: &str = "x-quiver-forwarded";

/// Whether a path is cluster-internal (authenticated by the cluster secret, not an API key).
pub fn is_internal(method: &Method, path: &str) -> bool {
    routes::classify(method.as_str(), path).is_internal()
}

/// Middleware for internal paths: the cluster secret is always required. A node started without
/// `--cluster-secret` holds a random one that nobody else knows, so its internal endpoints are
/// closed rather than open (see `Config::cluster_secret`).
pub async fn require_secret(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if is_internal(req.method(), req.uri().path()) {
        let given = req
            .headers()
            .get(SECRET_HEADER)
            .and_then(|v| v.to_str().ok());
        if !given.is_some_and(|g| key_eq(g, state.cluster.secret())) {
            return Error::Unauthorized.into_response();
        }
    }
    next.run(req).await
}

/// Whether a request must be handled by the leader (only known endpoints: anything else is
/// answered here, with a 404).
fn to_leader(method: &Method, path: &str) -> bool {
    routes::find(method.as_str(), path).is_some_and(|r| r.kind.to_leader())
}

/// Middleware: a write is proposed here when this node leads with a quorum; one that reaches a
/// follower or learner is forwarded to the leader, and the leader's answer returned as it is.
/// While no leader is known the write waits (bounded) for an election; see
/// [`crate::cluster::Cluster::write_target`]. While the leader this node knows cannot be
/// connected to (it died, and the election that replaces it has not ended), the write waits too,
/// for at most three election timeouts, and is forwarded to whichever leader is elected; a write
/// that never reached a leader is answered `not_leader`, which a client may safely resend.
pub async fn forward_writes(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !to_leader(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let leader = match state.cluster.write_target().await {
        Ok(WriteTarget::Here) => return next.run(req).await,
        Ok(WriteTarget::Leader(addr)) => addr,
        Err(e) => return e.into_response(),
    };
    if req.headers().contains_key(FORWARDED_HEADER) {
        return Error::NotLeader(Some(leader)).into_response();
    }
    let (parts, body) = req.into_parts();
    let limit = state.config.max_body_bytes;
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        return Error::PayloadTooLarge(limit).into_response();
    };
    let deadline = Instant::now() + state.cluster.election_timeout() * 3;
    let mut leader = leader;
    loop {
        let out = Outbound {
            method: &parts.method,
            path: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
            headers: &parts.headers,
            body: &bytes,
        };
        let sent = proxy::send(
            state.cluster.http(),
            &leader,
            &out,
            &[(FORWARDED_HEADER, "1")],
        );
        let error = match sent.await {
            Ok(answer) => return proxy::respond(&leader, answer),
            Err(e) if !e.is_connect() => {
                return Error::Unavailable(format!(
                    "forwarding to the leader at {leader} failed; the write may or may not have \
                     been applied: {e}"
                ))
                .into_response()
            }
            Err(e) => e,
        };
        // Never reached the leader: nothing was applied, so wait for the next one.
        if Instant::now() >= deadline {
            tracing::debug!(leader, %error, "no reachable leader before the deadline");
            return Error::NotLeader(None).into_response();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        leader = match state.cluster.write_target().await {
            Ok(WriteTarget::Here) => {
                return next
                    .run(Request::from_parts(parts, Body::from(bytes)))
                    .await
            }
            Ok(WriteTarget::Leader(addr)) => addr,
            Err(e) => return e.into_response(),
        };
    }
}

fn bincode_response<T: Serialize>(v: &T) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    (StatusCode::OK, headers, encode(v)).into_response()
}

fn bad_rpc(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::BAD_REQUEST,
        format!("undecodable raft rpc: {e}"),
    )
        .into_response()
}

/// Decodes a Raft RPC, runs it unless this node is isolated (fault injection), encodes the answer.
async fn rpc<Req, Resp, Fut>(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
    handle: impl FnOnce(Req) -> Fut,
) -> Response
where
    Req: serde::de::DeserializeOwned,
    Resp: Serialize,
    Fut: std::future::Future<Output = Resp>,
{
    rpc_with(state, headers, body, decode::<Req>, handle).await
}

/// [`rpc`] with its own decoder of the body.
async fn rpc_with<Req, Resp, Fut, E: std::fmt::Display>(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
    decode: impl FnOnce(&[u8]) -> Result<Req, E>,
    handle: impl FnOnce(Req) -> Fut,
) -> Response
where
    Resp: Serialize,
    Fut: std::future::Future<Output = Resp>,
{
    if state.cluster.is_isolated() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "isolated (fault injection)",
        )
            .into_response();
    }
    if let Some(target) = headers.get(TARGET_HEADER).and_then(|v| v.to_str().ok()) {
        if target != state.cluster.id.to_string() {
            // Meant for another member at this address (an earlier life of this node): never
            // answer for it. 503, like a node that is gone, so the sender does not count it.
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("this is node {}, not {target}", state.cluster.id),
            )
                .into_response();
        }
    }
    match decode(body) {
        Ok(req) => bincode_response(&handle(req).await),
        Err(e) => bad_rpc(e),
    }
}

/// `POST /raft/append`.
pub async fn raft_append(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    rpc(
        &state,
        &headers,
        &body,
        |req: AppendEntriesRequest<TypeConfig>| async {
            let commit = req.leader_commit.map(|l| l.index);
            let resp = state.cluster.raft.append_entries(req).await;
            // Contact counts only when Raft accepted the sender as the current leader: a deposed
            // leader's appends (answered HigherVote) must not make this node look fresh.
            if matches!(
                resp,
                Ok(AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_))
                    | Ok(AppendEntriesResponse::Conflict)
            ) {
                state.cluster.record_contact(commit);
            }
            resp
        },
    )
    .await
}

/// `POST /raft/vote`.
pub async fn raft_vote(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    rpc(&state, &headers, &body, |req: VoteRequest<u64>| {
        state.cluster.raft.vote(req)
    })
    .await
}

/// `POST /raft/snapshot` (one chunk; its data travels raw, see `raft::encode_chunk`).
pub async fn raft_snapshot(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    rpc_with(
        &state,
        &headers,
        &body,
        crate::raft::decode_chunk,
        |req: InstallSnapshotRequest<TypeConfig>| async {
            let vote = req.vote;
            let resp = state.cluster.raft.install_snapshot(req).await;
            if resp.as_ref().is_ok_and(|r| r.vote == vote) {
                state.cluster.record_contact(None);
            }
            resp
        },
    )
    .await
}

/// `GET /cluster`: this node's view of the cluster.
#[utoipa::path(get, path = "/cluster", responses((status = 200, body = ClusterStatus)))]
pub async fn cluster_status(State(state): State<AppState>) -> Json<ClusterStatus> {
    Json(state.cluster.status())
}

/// `POST /cluster/join` (leader; others forward).
#[utoipa::path(post, path = "/cluster/join", request_body = JoinRequest, responses((status = 200, body = IndexResponse)))]
pub async fn cluster_join(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<JoinRequest>,
) -> Result<Json<IndexResponse>> {
    if !req.addr.starts_with("http://") && !req.addr.starts_with("https://") {
        return Err(Error::invalid("addr", "must be an http(s) URL"));
    }
    Ok(Json(IndexResponse {
        index: state.cluster.join(&req).await?,
    }))
}

/// `POST /cluster/leave` (leader; others forward).
#[utoipa::path(post, path = "/cluster/leave", request_body = MemberRequest, responses((status = 200, body = IndexResponse)))]
pub async fn cluster_leave(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<MemberRequest>,
) -> Result<Json<IndexResponse>> {
    Ok(Json(IndexResponse {
        index: state.cluster.leave(req.id).await?,
    }))
}

/// `POST /cluster/promote` (leader; others forward).
#[utoipa::path(post, path = "/cluster/promote", request_body = MemberRequest, responses((status = 200, body = IndexResponse)))]
pub async fn cluster_promote(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<MemberRequest>,
) -> Result<Json<IndexResponse>> {
    Ok(Json(IndexResponse {
        index: state.cluster.promote(req.id).await?,
    }))
}

/// `POST /cluster/read_index`: the leader's read index, for linearizable reads on replicas.
pub async fn cluster_read_index(State(state): State<AppState>) -> Result<Json<IndexResponse>> {
    Ok(Json(IndexResponse {
        index: state.cluster.read_index().await?,
    }))
}

/// `GET /readyz`: 200 once this node is a member and caught up with the leader, and no
/// collection's indexer is recovering from a failure.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let ready = state.cluster.ready().and_then(|index| {
        match state.engine.indexer_failures().into_iter().next() {
            Some((name, why)) => Err(format!(
                "collection '{name}': indexer failed ({why}); rebuilding its graph from the store"
            )),
            None => Ok(index),
        }
    });
    match ready {
        Ok(index) => (
            StatusCode::OK,
            Json(serde_json::json!({"status": "ready", "index": index})),
        )
            .into_response(),
        Err(why) => Error::Unavailable(why).into_response(),
    }
}

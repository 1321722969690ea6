//! `quiver gateway`: a stateless entry point in front of a cluster.
//!
//! It learns the members from `GET /cluster` on any node it knows (the seeds, then every member
//! it has seen, so losing the seed does not blind it), probes each member's `/readyz`, sends
//! writes to the leader and spreads reads over the ready replicas with a [`Policy`]. A read is
//! retried once on another replica only when the first did no work: it could not be connected to,
//! or it answered 503 or a quiver 504 `read_timeout`. A read whose connection broke after it was
//! sent is not repeated (it may be what killed the node). A write is retried only when it
//! provably never reached a node (the connection was refused) or the node said it is not the
//! leader — never after it may have been applied. Bodies, query strings and
//! consistency tokens pass through untouched; each answer names the node that served it in
//! `x-quiver-node`. Several gateways can run side by side: they share nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Notify};

use crate::balance::{BackendStats, Balancer, Policy};
use crate::error::Error;
use crate::topology::{self, MemberView};

/// The header naming the node that answered.
pub const NODE_HEADER: &str = "x-quiver-node";

/// Settings of `quiver gateway` (flags, or `QUIVER_GATEWAY_*` / `QUIVER_*` environment variables).
#[derive(Clone, Debug, clap::Args)]
pub struct GatewayConfig {
    /// Address to listen on.
    #[arg(long, env = "QUIVER_GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Nodes to discover the cluster from (comma-separated URLs; any member will do).
    #[arg(
        long,
        env = "QUIVER_GATEWAY_NODES",
        value_delimiter = ',',
        required = true
    )]
    pub nodes: Vec<String>,
    /// How reads pick a replica.
    #[arg(long, env = "QUIVER_GATEWAY_POLICY", value_enum, default_value_t = Policy::PowerOfTwo)]
    pub policy: Policy,
    /// Also send reads to the leader (by default it serves reads only when no replica is ready).
    #[arg(long, env = "QUIVER_GATEWAY_READ_FROM_LEADER")]
    pub read_from_leader: bool,
    /// How often to refresh the membership and readiness, in ms.
    #[arg(long, env = "QUIVER_GATEWAY_REFRESH_MS", default_value_t = 1_000)]
    pub refresh_ms: u64,
    /// API key for the gateway's own discovery calls (client requests carry their own).
    #[arg(long, env = "QUIVER_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Longest a proxied request may take, in seconds.
    #[arg(long, env = "QUIVER_GATEWAY_TIMEOUT_SECS", default_value_t = 120)]
    pub timeout_secs: u64,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "QUIVER_MAX_BODY_BYTES", default_value_t = 64 << 20)]
    pub max_body_bytes: usize,
    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "QUIVER_LOG", default_value = "info")]
    pub log: String,
}

impl GatewayConfig {
    /// Defaults for tests: loopback, port 0, a fast refresh.
    pub fn for_test(nodes: Vec<String>, policy: Policy) -> GatewayConfig {
        GatewayConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            nodes,
            policy,
            read_from_leader: false,
            refresh_ms: 100,
            api_key: None,
            timeout_secs: 30,
            max_body_bytes: 64 << 20,
            log: "warn".into(),
        }
    }
}

/// `GET /gateway/status`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GatewayStatus {
    /// The read policy.
    pub policy: Policy,
    /// The leader's URL, if known.
    pub leader: Option<String>,
    /// Members at the last refresh.
    pub members: Vec<MemberView>,
    /// Where reads go now, with per-node counters.
    pub readers: Vec<BackendStats>,
    /// Completed membership refreshes.
    pub refreshes: u64,
}

struct Inner {
    config: GatewayConfig,
    http: reqwest::Client,
    probe: reqwest::Client,
    readers: Balancer,
    leader: RwLock<Option<String>>,
    members: RwLock<Vec<MemberView>>,
    /// URLs to ask for the membership: the seeds, then every member seen.
    known: RwLock<Vec<String>>,
    refreshes: std::sync::atomic::AtomicU64,
    refresh_now: Notify,
    refreshing: tokio::sync::Mutex<()>,
}

/// A running gateway.
pub struct Gateway {
    /// The bound address.
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Gateway {
    /// Binds, does a first discovery round, and serves until [`Gateway::stop`].
    pub async fn start(config: GatewayConfig) -> anyhow::Result<Gateway> {
        anyhow::ensure!(
            !config.nodes.is_empty(),
            "--nodes: give at least one node URL"
        );
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.timeout_secs))
            .connect_timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(256)
            .build()?;
        let probe = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()?;
        let known = topology::normalise(&config.nodes);
        let inner = Arc::new(Inner {
            readers: Balancer::new(config.policy),
            config,
            http,
            probe,
            leader: RwLock::new(None),
            members: RwLock::new(Vec::new()),
            known: RwLock::new(known),
            refreshes: Default::default(),
            refresh_now: Notify::new(),
            refreshing: tokio::sync::Mutex::new(()),
        });
        inner.refresh().await;
        let listener = TcpListener::bind(inner.config.listen).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let app = router(inner.clone());
        let refresher = tokio::spawn(refresh_loop(inner.clone()));
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "gateway server failed");
            }
            refresher.abort();
        });
        Ok(Gateway {
            addr,
            inner,
            stop: Some(stop),
            task,
        })
    }

    /// `http://` + the bound address.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What `GET /gateway/status` shows.
    pub fn status(&self) -> GatewayStatus {
        self.inner.status()
    }

    /// Stops serving (in-flight requests finish).
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Runs a gateway until `shutdown` resolves.
pub async fn run(
    config: GatewayConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let gw = Gateway::start(config).await?;
    let status = gw.status();
    tracing::info!(addr = %gw.addr, leader = ?status.leader, readers = status.readers.len(), policy = ?status.policy, "quiver gateway listening");
    shutdown.await;
    gw.stop().await;
    Ok(())
}

async fn refresh_loop(inner: Arc<Inner>) {
    let period = Duration::from_millis(inner.config.refresh_ms.max(10));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = inner.refresh_now.notified() => {}
        }
        inner.refresh().await;
    }
}

impl Inner {
    fn status(&self) -> GatewayStatus {
        GatewayStatus {
            policy: self.readers.policy(),
            leader: self.leader.read().clone(),
            members: self.members.read().clone(),
            readers: self.readers.stats(),
            refreshes: self.refreshes.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Rediscovers the leader and the ready members. One round at a time, so that an older view
    /// never overwrites a newer one. When no node answers, the last view stays: the requests
    /// themselves then fail over (reads) or answer 503 (writes).
    async fn refresh(&self) {
        let _one_at_a_time = self.refreshing.lock().await;
        let candidates = self.known.read().clone();
        let Some(topo) =
            topology::discover(&self.probe, &candidates, self.config.api_key.as_deref()).await
        else {
            tracing::warn!(
                ?candidates,
                "no node answered GET /cluster; keeping the last view"
            );
            return;
        };
        self.readers.set(topo.readers(self.config.read_from_leader));
        topology::merge_known(
            &mut self.known.write(),
            &topology::normalise(&self.config.nodes),
            &topo,
        );
        *self.members.write() = topo.members;
        *self.leader.write() = topo.leader;
        self.refreshes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sends `req` to `node` (counted and timed in the metrics) and reads the whole answer.
    async fn send(
        &self,
        node: &str,
        req: &Proxied<'_>,
    ) -> reqwest::Result<(reqwest::StatusCode, HeaderMap, Bytes)> {
        let started = std::time::Instant::now();
        let sent = self.send_untimed(node, req).await;
        let status = sent.as_ref().map_or(0, |(s, _, _)| s.as_u16());
        let _ = crate::api::metrics::handle();
        metrics::counter!("quiver_gateway_requests_total", "kind" => req.kind, "node" => node.to_string(), "status" => status.to_string())
            .increment(1);
        metrics::histogram!("quiver_gateway_request_duration_seconds", "kind" => req.kind)
            .record(started.elapsed().as_secs_f64());
        sent
    }

    async fn send_untimed(
        &self,
        node: &str,
        req: &Proxied<'_>,
    ) -> reqwest::Result<(reqwest::StatusCode, HeaderMap, Bytes)> {
        let head = *req.method == Method::HEAD;
        let method = reqwest::Method::from_bytes(req.method.as_str().as_bytes())
            .unwrap_or(reqwest::Method::GET);
        let headers = req.headers;
        let mut req = self
            .http
            .request(method, format!("{node}{}", req.path))
            .body(req.body.clone());
        for (name, value) in headers {
            if forwardable(name) {
                req = req.header(name, value);
            }
        }
        let resp = req.send().await?;
        let status = resp.status();
        let mut out = HeaderMap::new();
        for (name, value) in resp.headers() {
            // A HEAD answer has no body, so its length is the upstream's to tell.
            if forwardable(name) || (head && name == reqwest::header::CONTENT_LENGTH) {
                out.append(name.clone(), value.clone());
            }
        }
        let bytes = resp.bytes().await?;
        Ok((status, out, bytes))
    }
}

/// One client request as the proxy forwards it.
struct Proxied<'a> {
    /// `read` or `write`, for the metrics.
    kind: &'static str,
    method: &'a Method,
    path: &'a str,
    headers: &'a HeaderMap,
    body: &'a Bytes,
}

/// Hop-by-hop and framing headers are the proxy's own business. (Header names are stored in
/// lower case, so no case folding is needed.)
fn forwardable(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "host"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "content-length"
            | NODE_HEADER
    )
}

fn answer(node: &str, status: reqwest::StatusCode, headers: HeaderMap, body: Bytes) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    *resp.headers_mut() = headers;
    if let Ok(v) = HeaderValue::from_str(node) {
        resp.headers_mut().insert(NODE_HEADER, v);
    }
    resp
}

/// The `error.code` of a quiver error body.
fn error_code(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("error")?.get("code")?.as_str().map(str::to_string)
}

/// Worth another node: the node refused the read before doing any work (503, or a 504
/// `read_timeout` from quiver itself).
fn retryable(status: reqwest::StatusCode, body: &[u8]) -> bool {
    match status.as_u16() {
        503 => true,
        504 => error_code(body).as_deref() == Some("read_timeout"),
        _ => false,
    }
}

fn router(inner: Arc<Inner>) -> Router {
    let limit = inner.config.max_body_bytes;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/gateway/status", get(status))
        .route("/metrics", get(metrics))
        .fallback(proxy)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(inner)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok", "role": "gateway"}))
}

async fn readyz(State(inner): State<Arc<Inner>>) -> Response {
    let leader = inner.leader.read().clone();
    if leader.is_none() && inner.readers.is_empty() {
        return Error::Unavailable("the gateway knows no leader and no ready replica".into())
            .into_response();
    }
    Json(serde_json::json!({"status": "ready", "leader": leader, "readers": inner.readers.len()}))
        .into_response()
}

async fn status(State(inner): State<Arc<Inner>>) -> Json<GatewayStatus> {
    Json(inner.status())
}

/// `GET /metrics`: proxied requests by kind, node and status, their latency, retries, and each
/// reader's requests in flight.
async fn metrics(State(inner): State<Arc<Inner>>) -> Response {
    use std::fmt::Write;
    let mut out = crate::api::metrics::handle()
        .map(|h| h.render())
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "# HELP quiver_gateway_outstanding Requests in flight per reader."
    );
    let _ = writeln!(out, "# TYPE quiver_gateway_outstanding gauge");
    for r in inner.readers.stats() {
        let _ = writeln!(
            out,
            "quiver_gateway_outstanding{{node=\"{}\"}} {}",
            r.url, r.outstanding
        );
    }
    let leader = u8::from(inner.leader.read().is_some());
    let _ = writeln!(
        out,
        "# HELP quiver_gateway_leader_known 1 when the gateway knows a leader."
    );
    let _ = writeln!(out, "# TYPE quiver_gateway_leader_known gauge");
    let _ = writeln!(out, "quiver_gateway_leader_known {leader}");
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
        .into_response()
}

async fn proxy(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    // Raft RPC and membership changes are between nodes only: never reachable through the
    // public entry point, whatever credentials a caller sends.
    if crate::api::is_internal(req.uri().path()) {
        let error = crate::api::ErrorDetail {
            code: "not_found",
            message: "internal endpoint: not served by the gateway".into(),
            field: None,
        };
        return (StatusCode::NOT_FOUND, Json(crate::api::ErrorBody { error })).into_response();
    }
    let (parts, body) = req.into_parts();
    let limit = inner.config.max_body_bytes;
    let Ok(body) = axum::body::to_bytes(body, limit).await else {
        return Error::PayloadTooLarge(limit).into_response();
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let read_only = crate::api::is_read(&parts.method, parts.uri.path());
    let req = Proxied {
        kind: if read_only { "read" } else { "write" },
        method: &parts.method,
        path: &path,
        headers: &parts.headers,
        body: &body,
    };
    if read_only {
        read(&inner, &req).await
    } else {
        write(&inner, &req).await
    }
}

async fn read(inner: &Inner, req: &Proxied<'_>) -> Response {
    let mut tried: Vec<String> = Vec::new();
    let mut last: Option<Response> = None;
    for _ in 0..2 {
        let Some(lease) = inner.readers.pick(&tried) else {
            break;
        };
        let node = lease.url().to_string();
        let sent = inner.send(&node, req).await;
        if !tried.is_empty() {
            metrics::counter!("quiver_gateway_retries_total", "kind" => "read").increment(1);
        }
        match sent {
            Ok((status, h, b)) if retryable(status, &b) => {
                lease.failure();
                inner.refresh_now.notify_one();
                last = Some(answer(&node, status, h, b));
            }
            Ok((status, h, b)) => {
                // A 500 counts against the node (it is not retried: the node did answer).
                if status.is_server_error() {
                    lease.failure();
                } else {
                    lease.success();
                }
                return answer(&node, status, h, b);
            }
            Err(e) if e.is_connect() => {
                lease.failure();
                inner.refresh_now.notify_one();
                tracing::debug!(node, error = %e, "replica unreachable; trying another");
                last =
                    Some(Error::Unavailable(format!("replica {node} failed: {e}")).into_response());
            }
            Err(e) => {
                // Sent, then lost: the read may be what brought the node down. Not repeated.
                lease.failure();
                inner.refresh_now.notify_one();
                tracing::warn!(node, error = %e, "read failed after it was sent; not retried");
                return Error::Unavailable(format!(
                    "replica {node} failed after the read was sent (not retried): {e}"
                ))
                .into_response();
            }
        }
        tried.push(node);
    }
    if let Some(resp) = last {
        return resp;
    }
    // No replica is ready: the leader (if any) answers.
    let leader = inner.leader.read().clone();
    match leader {
        Some(node) => match inner.send(&node, req).await {
            Ok((status, h, b)) => answer(&node, status, h, b),
            Err(e) => Error::Unavailable(format!("leader {node} failed: {e}")).into_response(),
        },
        None => Error::Unavailable("no ready replica and no known leader".into()).into_response(),
    }
}

async fn write(inner: &Inner, req: &Proxied<'_>) -> Response {
    for attempt in 0..2 {
        let leader = inner.leader.read().clone();
        let Some(node) = leader else {
            if attempt == 0 {
                inner.refresh().await;
                continue;
            }
            return Error::NotLeader(None).into_response();
        };
        let sent = inner.send(&node, req).await;
        if attempt > 0 {
            metrics::counter!("quiver_gateway_retries_total", "kind" => "write").increment(1);
        }
        match sent {
            Ok((status, h, b)) => {
                let not_leader = status == reqwest::StatusCode::SERVICE_UNAVAILABLE
                    && error_code(&b) == Some("not_leader".into());
                if not_leader && attempt == 0 {
                    // Refused before it was applied: safe to send again to the new leader.
                    inner.refresh().await;
                    continue;
                }
                return answer(&node, status, h, b);
            }
            Err(e) if e.is_connect() && attempt == 0 => {
                // Never reached the node, so it cannot have been applied.
                tracing::info!(node, error = %e, "leader unreachable; rediscovering");
                inner.refresh().await;
            }
            Err(e) => {
                inner.refresh_now.notify_one();
                let why = if e.is_connect() {
                    format!("the leader {node} is unreachable: {e}")
                } else {
                    format!("the write to {node} failed and may or may not have been applied: {e}")
                };
                return Error::Unavailable(why).into_response();
            }
        }
    }
    Error::Unavailable("no reachable leader".into()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reads_refused_before_any_work_are_retried() {
        let timeout = br#"{"error":{"code":"read_timeout","message":"m"}}"#;
        let s = |c: u16| reqwest::StatusCode::from_u16(c).unwrap();
        assert!(retryable(s(503), b"{}"));
        assert!(retryable(s(504), timeout));
        // A 504 or 502 from anything between the gateway and the node says nothing of what the
        // node did; a 500 is an answer.
        assert!(!retryable(s(504), b"upstream timed out"));
        assert!(!retryable(s(502), b""));
        assert!(!retryable(s(500), timeout));
    }
}

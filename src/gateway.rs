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

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use quiver_client::routes;
use quiver_client::routing::{Failure, Routing, RoutingConfig};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::balance::{BackendStats, Policy};
use crate::error::Error;
use crate::model::ErrorBody;
use crate::proxy::{self, Outbound};
use crate::topology::MemberView;

pub use crate::proxy::NODE_HEADER;

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
    #[arg(long, env = "QUIVER_MAX_BODY_BYTES", default_value_t = crate::config::MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "QUIVER_LOG", default_value = crate::telemetry::DEFAULT_LOG)]
    pub log: String,
}

impl GatewayConfig {
    /// Defaults for tests: `quiver gateway`'s, on an ephemeral loopback port, with a fast
    /// refresh, a 30 s request timeout and quiet logs.
    pub fn for_test(nodes: Vec<String>, policy: Policy) -> GatewayConfig {
        GatewayConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            nodes,
            policy,
            refresh_ms: 100,
            timeout_secs: 30,
            log: "warn".into(),
            ..crate::config::defaults_of(&["--nodes", "http://127.0.0.1:1"])
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
    routing: Arc<Routing>,
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
        let routing = Routing::new(RoutingConfig {
            seeds: config.nodes.clone(),
            policy: config.policy,
            api_key: config.api_key.clone(),
            discover: true,
            read_from_leader: config.read_from_leader,
            refresh_every: Duration::from_millis(config.refresh_ms.max(10)),
            probe_timeout: Duration::from_secs(1),
        })?;
        let inner = Arc::new(Inner {
            config,
            http,
            routing: Arc::new(routing),
        });
        inner.routing.refresh().await;
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

/// Refreshes the view every `refresh_ms`, and at once when a request saw a node fail.
async fn refresh_loop(inner: Arc<Inner>) {
    let period = inner.routing.config().refresh_every;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = inner.routing.wanted() => {}
        }
        inner.routing.refresh().await;
    }
}

impl Inner {
    fn status(&self) -> GatewayStatus {
        let routing = &self.routing;
        GatewayStatus {
            policy: routing.readers().policy(),
            leader: routing.leader(),
            members: routing.members(),
            readers: routing.readers().stats(),
            refreshes: routing.refreshes(),
        }
    }

    /// Sends `req` to `node` (counted and timed in the metrics).
    async fn send(
        &self,
        node: &str,
        kind: &'static str,
        attempt: usize,
        req: &Outbound<'_>,
    ) -> reqwest::Result<quiver_client::routing::Answer<axum::http::HeaderMap>> {
        let _ = crate::telemetry::prometheus();
        if attempt > 0 {
            metrics::counter!("quiver_gateway_retries_total", "kind" => kind).increment(1);
        }
        let started = std::time::Instant::now();
        let sent = proxy::send(&self.http, node, req, &[]).await;
        let status = sent.as_ref().map_or(0, |a| a.status.as_u16());
        metrics::counter!("quiver_gateway_requests_total", "kind" => kind, "node" => node.to_string(), "status" => status.to_string())
            .increment(1);
        metrics::histogram!("quiver_gateway_request_duration_seconds", "kind" => kind)
            .record(started.elapsed().as_secs_f64());
        sent
    }
}

fn router(inner: Arc<Inner>) -> Router {
    let limit = inner.config.max_body_bytes;
    // The layer covers the routes above it: status and metrics, not the probes.
    Router::new()
        .route("/gateway/status", get(status))
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            inner.clone(),
            own_auth,
        ))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(proxy)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(inner)
}

/// The gateway's own endpoints (status, metrics: they name every member and its address) need
/// the gateway's `--api-key` when one is set, as the nodes' would (review L7). The probes stay
/// open; proxied requests carry the caller's own key to the nodes.
async fn own_auth(
    State(inner): State<Arc<Inner>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    match &inner.config.api_key {
        Some(key)
            if !crate::auth::api_key(req.headers())
                .is_some_and(|given| crate::auth::key_eq(key, given)) =>
        {
            Error::Unauthorized.into_response()
        }
        _ => next.run(req).await,
    }
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok", "role": "gateway"}))
}

async fn readyz(State(inner): State<Arc<Inner>>) -> Response {
    let leader = inner.routing.leader();
    let readers = inner.routing.readers().len();
    if inner.routing.refreshes() == 0 || leader.is_none() && readers == 0 {
        return Error::Unavailable("the gateway knows no leader and no ready replica".into())
            .into_response();
    }
    Json(serde_json::json!({"status": "ready", "leader": leader, "readers": readers}))
        .into_response()
}

async fn status(State(inner): State<Arc<Inner>>) -> Json<GatewayStatus> {
    Json(inner.status())
}

/// `GET /metrics`: proxied requests by kind, node and status, their latency, retries, and each
/// reader's requests in flight.
async fn metrics(State(inner): State<Arc<Inner>>) -> Response {
    use std::fmt::Write;
    let mut out = crate::telemetry::prometheus()
        .map(|h| h.render())
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "# HELP quiver_gateway_outstanding Requests in flight per reader."
    );
    let _ = writeln!(out, "# TYPE quiver_gateway_outstanding gauge");
    for r in inner.routing.readers().stats() {
        let _ = writeln!(
            out,
            "quiver_gateway_outstanding{{node=\"{}\"}} {}",
            r.url, r.outstanding
        );
    }
    let leader = u8::from(inner.routing.leader().is_some());
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
    let kind = routes::classify(req.method().as_str(), req.uri().path());
    // Raft RPC and membership changes are between nodes only: never reachable through the
    // public entry point, whatever credentials a caller sends.
    if kind.is_internal() {
        let body = ErrorBody::new(
            "not_found",
            "internal endpoint: not served by the gateway",
            None,
        );
        return (StatusCode::NOT_FOUND, Json(body)).into_response();
    }
    let (parts, body) = req.into_parts();
    let limit = inner.config.max_body_bytes;
    let Ok(body) = axum::body::to_bytes(body, limit).await else {
        return Error::PayloadTooLarge(limit).into_response();
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let req = Outbound {
        method: &parts.method,
        path,
        headers: &parts.headers,
        body: &body,
    };
    let (label, read) = if kind.is_read() {
        ("read", true)
    } else {
        ("write", false)
    };
    let req = &req;
    let inner = &inner;
    let send = |node: String, attempt| async move { inner.send(&node, label, attempt, req).await };
    let served = if read {
        inner.routing.read(send).await
    } else {
        inner.routing.write(send).await
    };
    match served {
        Ok(served) => proxy::respond(&served.node, served.answer),
        Err(Failure::NoNode(why)) => Error::Unavailable(why).into_response(),
        Err(Failure::Transport { node, error, sent }) => {
            let why = match (read, sent) {
                (_, false) => format!("{node} is unreachable: {error}"),
                (true, true) => {
                    format!("replica {node} failed after the read was sent (not retried): {error}")
                }
                (false, true) => format!(
                    "the write to {node} failed and may or may not have been applied: {error}"
                ),
            };
            tracing::warn!(node, %error, sent, label, "proxied request failed");
            Error::Unavailable(why).into_response()
        }
    }
}

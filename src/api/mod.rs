//! The HTTP API: routers, authentication, request parsing and the error → JSON mapping.
//!
//! Handlers validate input and name the offending field in a 4xx JSON error; nothing a client
//! sends can panic the server. Writes go through the [`Writer`] (durable before the answer);
//! reads go straight to the engine on the blocking pool.

mod cluster;
mod handlers;
pub(crate) mod metrics;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use utoipa::OpenApi;

use crate::config::Config;
use crate::engine::Engine;
use crate::error::Error;
use crate::writer::Writer;
use quiver_client::routes::{self, Endpoint, Kind, Route, ROUTES};

pub use handlers::ApiDoc;

/// What every handler sees.
#[derive(Clone)]
pub struct AppState {
    /// The state machine.
    pub engine: Arc<Engine>,
    /// The write path.
    pub writer: Writer,
    /// Settings.
    pub config: Arc<Config>,
    /// Raft and membership.
    pub cluster: Arc<crate::cluster::Cluster>,
}

pub use crate::model::{ErrorBody, ErrorDetail};

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = self.classify();
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self, "internal error");
            "internal error; see the server log".to_string()
        } else {
            self.to_string()
        };
        let field = match &self {
            Error::InvalidInput { field, .. } => Some(field.clone()),
            Error::UnsupportedMediaType(_) => Some("content-type".to_string()),
            _ => None,
        };
        let mut resp = (status, Json(ErrorBody::new(code, message, field))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

/// A JSON body whose parse errors name the field (`points[3].vector[7]: invalid type ...`) and
/// whose size is bounded. It must be sent as `Content-Type: application/json` (or another
/// `application/*+json` type): anything else is 415, so that a browser's "simple" cross-origin
/// POST (`text/plain`, forms) cannot reach a handler.
pub struct ApiJson<T>(pub T);

/// Whether a `Content-Type` value names JSON (`application/json`, `application/x+json`, with
/// any parameters such as `charset`).
pub(crate) fn is_json_content_type(value: Option<&header::HeaderValue>) -> bool {
    let Some(v) = value.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = v
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json"))
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        let ctype = req.headers().get(header::CONTENT_TYPE);
        if !is_json_content_type(ctype) {
            let got = ctype
                .and_then(|v| v.to_str().ok())
                .map_or_else(|| "none".to_string(), |v| format!("'{v}'"));
            return Err(Error::UnsupportedMediaType(format!(
                "the body must be sent as Content-Type: application/json (got {got})"
            )));
        }
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map(|l| l.0)
            .unwrap_or(usize::MAX);
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Error::PayloadTooLarge(limit)
            } else {
                Error::invalid("body", e.body_text())
            }
        })?;
        if bytes.is_empty() {
            return Err(Error::invalid("body", "a JSON body is required"));
        }
        // Parsed plainly first: serde_path_to_error wraps every element it reads (a search's
        // 384 floats), which took about 5 % of a replica's CPU under search load. Only a body
        // that fails is parsed again with it, for the path of what is wrong; the parse is
        // deterministic, so it fails the same way.
        if let Ok(v) = serde_json::from_slice(&bytes) {
            return Ok(ApiJson(v));
        }
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        match serde_path_to_error::deserialize(de) {
            Ok(v) => Ok(ApiJson(v)),
            Err(e) => {
                let path = e.path().to_string();
                let field = if path == "." || path == "?" || path.is_empty() {
                    "body".to_string()
                } else {
                    path
                };
                Err(Error::invalid(field, e.into_inner().to_string()))
            }
        }
    }
}

#[derive(Clone, Copy)]
struct BodyLimit(usize);

/// Path parameters whose rejections are JSON errors naming `path`.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> axum::extract::FromRequestParts<S> for ApiPath<T> {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Error> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| Error::invalid("path", e.body_text()))
    }
}

/// Query parameters whose rejections are JSON errors naming `query`.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Error> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| Error::invalid("query", e.body_text()))
    }
}

pub(crate) use crate::auth::key_eq;

async fn auth(state: axum::extract::State<AppState>, req: Request, next: Next) -> Response {
    let cfg = &state.config;
    let path = req.uri().path();
    let kind = routes::classify(req.method().as_str(), path);
    // Health probes stay open; cluster-internal calls are checked against the cluster secret.
    let open = kind == Kind::Open || kind.is_internal();
    if cfg.api_key.is_none() && cfg.read_only_api_key.is_none() || open {
        return next.run(req).await;
    }
    let Some(given) = crate::auth::api_key(req.headers()) else {
        return Error::Unauthorized.into_response();
    };
    if cfg.api_key.as_deref().is_some_and(|k| key_eq(k, given)) {
        return next.run(req).await;
    }
    if cfg
        .read_only_api_key
        .as_deref()
        .is_some_and(|k| key_eq(k, given))
    {
        if kind.is_read() {
            return next.run(req).await;
        }
        return Error::Forbidden.into_response();
    }
    Error::Unauthorized.into_response()
}

async fn body_limit(
    state: axum::extract::State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    req.extensions_mut()
        .insert(BodyLimit(state.config.max_body_bytes));
    next.run(req).await
}

async fn not_found() -> Response {
    let body = ErrorBody::new("not_found", "no such endpoint; see /openapi.json", None);
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

async fn openapi() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}

/// Largest Raft RPC body (an append of large batches, or a snapshot chunk).
const RAFT_BODY_LIMIT: usize = 1 << 30;

/// The handler of each endpoint of the route table, which says its method and path.
fn handler(route: &Route) -> MethodRouter<AppState> {
    use handlers::*;
    use Endpoint as E;
    let m = match route.method {
        "GET" => MethodFilter::GET,
        "PUT" => MethodFilter::PUT,
        "DELETE" => MethodFilter::DELETE,
        _ => MethodFilter::POST,
    };
    match route.endpoint {
        E::Healthz => on(m, healthz),
        E::Readyz => on(m, cluster::readyz),
        E::Metrics => on(m, metrics::render),
        E::OpenApi => on(m, openapi),
        E::ClusterStatus => on(m, cluster::cluster_status),
        E::ClusterJoin => on(m, cluster::cluster_join),
        E::ClusterLeave => on(m, cluster::cluster_leave),
        E::ClusterPromote => on(m, cluster::cluster_promote),
        E::ClusterReadIndex => on(m, cluster::cluster_read_index),
        // Raft RPC bodies carry whole batches of vectors and snapshot chunks.
        E::RaftAppend => on(m, cluster::raft_append).layer(DefaultBodyLimit::max(RAFT_BODY_LIMIT)),
        E::RaftVote => on(m, cluster::raft_vote).layer(DefaultBodyLimit::max(RAFT_BODY_LIMIT)),
        E::RaftSnapshot => {
            on(m, cluster::raft_snapshot).layer(DefaultBodyLimit::max(RAFT_BODY_LIMIT))
        }
        E::ListCollections => on(m, list_collections),
        E::CreateCollection => on(m, create_collection),
        E::GetCollection => on(m, get_collection),
        E::DeleteCollection => on(m, delete_collection),
        E::Compact => on(m, compact_collection),
        E::Upsert => on(m, upsert_points),
        E::DeletePoints => on(m, delete_points),
        E::GetPoints => on(m, get_points),
        E::Search => on(m, search),
        E::SearchBatch => on(m, search_batch),
        E::GetPoint => on(m, get_point),
    }
}

/// The public router, built from the route table ([`quiver_client::routes::ROUTES`]).
pub fn router(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    let mut router = Router::new();
    for route in ROUTES {
        router = router.route(route.path, handler(route));
    }
    router
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(state.clone(), body_limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            cluster::forward_writes,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            cluster::require_secret,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(middleware::from_fn(metrics::track))
        .with_state(state)
}

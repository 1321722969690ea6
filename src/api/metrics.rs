//! Prometheus metrics: request counts and latency histograms per route (through the `metrics`
//! facade and its Prometheus exporter), plus per-collection gauges read from the engine at scrape
//! time, so that they are per node even when several nodes share a process (tests).

use std::fmt::Write;
use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use super::AppState;

const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The process-wide Prometheus recorder (installed on first use).
pub(crate) fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS_SECONDS)
                .ok()?
                .install_recorder()
                .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
                .ok()
        })
        .as_ref()
}

/// The `method` label: one of the standard methods, or `other`. Anyone may send any extension
/// method, and each distinct label is a new series kept forever.
pub(crate) fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// Middleware: counts requests and times them, labelled by method, route template and status.
pub async fn track(req: Request, next: Next) -> Response {
    let _ = handle();
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = method_label(req.method());
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("quiver_http_requests_total", "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("quiver_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// `GET /metrics`: Prometheus text format.
pub async fn render(State(state): State<AppState>) -> Response {
    let mut out = handle().map(|h| h.render()).unwrap_or_default();
    // Collection info takes each collection's state lock, which a long search or an apply may
    // hold: never on an async worker (review M7).
    let engine = state.engine.clone();
    let cols = tokio::task::spawn_blocking(move || engine.list())
        .await
        .unwrap_or_default();
    type Gauge = fn(&crate::model::CollectionInfo) -> usize;
    let gauges: [(&str, &str, Gauge); 3] = [
        (
            "quiver_collection_points",
            "Live points per collection.",
            |c| c.points,
        ),
        (
            "quiver_collection_tombstones",
            "Deleted points still in the graph.",
            |c| c.tombstones,
        ),
        (
            "quiver_collection_unindexed",
            "Points applied but not yet in the graph.",
            |c| c.unindexed,
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for c in &cols {
            let _ = writeln!(out, "{name}{{collection=\"{}\"}} {}", c.name, value(c));
        }
    }
    let _ = writeln!(
        out,
        "# HELP quiver_last_applied_index Index of the last applied log entry."
    );
    let _ = writeln!(out, "# TYPE quiver_last_applied_index gauge");
    let _ = writeln!(
        out,
        "quiver_last_applied_index {}",
        state.engine.last_applied()
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

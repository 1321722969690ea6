//! Prometheus metrics: request counts and latency histograms per route (through the `metrics`
//! facade and its Prometheus exporter), plus per-collection gauges read from the engine at scrape
//! time, so that they are per node even when several nodes share a process (tests).

use std::fmt::Write;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::telemetry::{method_label, prometheus};

/// Middleware: counts requests and times them, labelled by method, route template and status.
pub async fn track(req: Request, next: Next) -> Response {
    let _ = prometheus();
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
    let mut out = prometheus().map(|h| h.render()).unwrap_or_default();
    // Collection info takes each collection's state lock, which a long search or an apply may
    // hold: never on an async worker (review M7).
    let engine = state.engine.clone();
    let cols =
        tokio::task::spawn_blocking(move || engine.each(|c| (c.info(), c.payload_index_bytes())))
            .await
            .unwrap_or_default();
    type Gauge = fn(&(crate::model::CollectionInfo, usize)) -> usize;
    let gauges: [(&str, &str, Gauge); 4] = [
        (
            "quiver_collection_points",
            "Live points per collection.",
            |c| c.0.points,
        ),
        (
            "quiver_collection_tombstones",
            "Deleted points still in the graph.",
            |c| c.0.tombstones,
        ),
        (
            "quiver_collection_unindexed",
            "Points applied but not yet in the graph.",
            |c| c.0.unindexed,
        ),
        (
            "quiver_collection_payload_index_bytes",
            "Heap bytes of the payload index (which values of which keys each point holds).",
            |c| c.1,
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for c in &cols {
            let _ = writeln!(out, "{name}{{collection=\"{}\"}} {}", c.0.name, value(c));
        }
    }
    let cache = state.engine.query_cache().stats();
    let counters: [(&str, &str, &str, u64); 7] = [
        (
            "quiver_query_cache_hits_total",
            "counter",
            "Searches answered from the query cache.",
            cache.hits,
        ),
        (
            "quiver_query_cache_misses_total",
            "counter",
            "Searches computed (the cache on, no current answer in it).",
            cache.misses,
        ),
        (
            "quiver_query_cache_stale_total",
            "counter",
            "Misses that found an answer computed before a change to its collection.",
            cache.stale,
        ),
        (
            "quiver_query_cache_evictions_total",
            "counter",
            "Answers pushed out of the query cache by its bound.",
            cache.evictions,
        ),
        (
            "quiver_query_cache_bytes",
            "gauge",
            "Bytes held by the query cache (estimated).",
            cache.bytes,
        ),
        (
            "quiver_query_cache_entries",
            "gauge",
            "Answers held by the query cache.",
            cache.entries,
        ),
        (
            "quiver_query_cache_capacity_bytes",
            "gauge",
            "The query cache's bound (--query-cache-mb).",
            cache.capacity,
        ),
    ];
    for (name, kind, help, value) in counters {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
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

//! Logs and metrics for every quiver process (node, gateway, CLI): the log filter, the
//! process-wide Prometheus recorder, and the bounded label for HTTP methods.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// The default log filter: quiver's own events (started, listening, joined, leader changed,
/// snapshot sent and installed, graph loaded) at `info`, and only the warnings and errors of
/// openraft, whose `info` lines are internal state dumps, and of hnsw_rs, which prints its
/// parameters on every graph built. `--log info` (or `debug`) opens everything.
pub const DEFAULT_LOG: &str = "info,openraft=warn,hnsw_rs=warn";

/// Installs the log subscriber: `RUST_LOG` when set, else `filter`.
pub fn init_logging(filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(filter)
        .init();
}

const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The process-wide Prometheus recorder (installed on first use).
pub fn prometheus() -> Option<&'static PrometheusHandle> {
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
pub fn method_label(m: &axum::http::Method) -> &'static str {
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

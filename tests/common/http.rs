//! A node's `/cluster` view and its readiness, over HTTP.

use reqwest::StatusCode;
use serde_json::Value;

/// A node's `GET /cluster` answer, or `None` while it does not give one.
pub async fn cluster_json(url: &str) -> Option<Value> {
    reqwest::get(format!("{url}/cluster"))
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// Whether a node answers `GET /readyz` with 200.
pub async fn ready(url: &str) -> bool {
    reqwest::get(format!("{url}/readyz"))
        .await
        .is_ok_and(|r| r.status() == StatusCode::OK)
}

//! One HTTP request as the API and gateway tests send it, a node's `/cluster` view and its
//! readiness.

use std::fmt;

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// A request body.
#[derive(Clone, Debug)]
pub enum Body<'a> {
    Empty,
    /// Serialised, with `content-type: application/json`.
    Json(Value),
    /// Sent as is, with `content-type: application/json` (for text that is not valid JSON).
    Raw(&'a str),
}

/// How a request carries an API key.
#[derive(Clone, Copy, Debug)]
pub enum Key<'a> {
    Anonymous,
    /// `authorization: Bearer <key>`.
    Bearer(&'a str),
    /// `api-key: <key>`.
    Header(&'a str),
}

/// An answer: its status, headers and body (JSON, or the text as a JSON string if it is not).
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

pub async fn send(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    body: &Body<'_>,
    key: Key<'_>,
) -> Reply {
    let mut req = http.request(method, url);
    req = match body {
        Body::Empty => req,
        Body::Json(v) => req.json(v),
        Body::Raw(text) => req
            .header("content-type", "application/json")
            .body(text.to_string()),
    };
    req = match key {
        Key::Anonymous => req,
        Key::Bearer(k) => req.bearer_auth(k),
        Key::Header(k) => req.header("api-key", k),
    };
    let resp = req.send().await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Reply {
        status,
        headers,
        body,
    }
}

/// A node's `GET /cluster` answer, or `None` while it does not give one.
pub async fn cluster_json(url: &str) -> Option<Value> {
    reqwest::get(format!("{url}/cluster"))
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// The text of `GET {url}/metrics` (Prometheus format).
pub async fn metrics_text(url: &str) -> String {
    reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Whether a node answers `GET /readyz` with 200.
pub async fn ready(url: &str) -> bool {
    reqwest::get(format!("{url}/readyz"))
        .await
        .is_ok_and(|r| r.status() == StatusCode::OK)
}

impl fmt::Display for Body<'_> {
    /// At most 100 characters, for failure messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Body::Empty => return f.write_str("no body"),
            Body::Json(v) => v.to_string(),
            Body::Raw(text) => text.to_string(),
        };
        match text.char_indices().nth(100) {
            Some((end, _)) => write!(f, "{}...", &text[..end]),
            None => f.write_str(&text),
        }
    }
}

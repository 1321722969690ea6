//! Credentials on requests, for the node's API and the gateway alike: the API key a caller sends
//! and the equal-time comparison of secrets.

use axum::http::{header, HeaderMap};

/// The API key a request carries: `Authorization: Bearer <key>`, or `api-key: <key>`.
pub fn api_key(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("api-key").and_then(|v| v.to_str().ok()))
}

/// Equal-time comparison, so that a key cannot be guessed byte by byte from response times.
pub fn key_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

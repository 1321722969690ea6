//! The one HTTP proxy: a node forwarding a write to its leader and the gateway passing requests
//! to the nodes both send a request on with [`send`] and hand the answer back with [`respond`],
//! under one header policy ([`forwardable`]).

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use quiver_client::routing::Answer;

/// The header naming the node that answered.
pub const NODE_HEADER: &str = "x-quiver-node";

/// One request as the proxy sends it on.
pub struct Outbound<'a> {
    /// The method.
    pub method: &'a Method,
    /// Path and query string.
    pub path: &'a str,
    /// The caller's headers (only [`forwardable`] ones are sent).
    pub headers: &'a HeaderMap,
    /// The whole body.
    pub body: &'a Bytes,
}

/// Hop-by-hop and framing headers are each connection's own business, and `x-quiver-node` is
/// set by whoever answers. (Header names are stored in lower case, so no case folding is needed.)
pub fn forwardable(name: &HeaderName) -> bool {
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

/// Sends `req` to `node` with `extra` headers added, and reads the whole answer (so that a
/// connection lost mid-answer is a transport error, not a truncated body).
pub async fn send(
    http: &reqwest::Client,
    node: &str,
    req: &Outbound<'_>,
    extra: &[(&str, &str)],
) -> reqwest::Result<Answer<HeaderMap>> {
    let head = *req.method == Method::HEAD;
    // Every `http::Method` is a valid token, so this conversion cannot fail.
    let method =
        reqwest::Method::from_bytes(req.method.as_str().as_bytes()).unwrap_or(reqwest::Method::GET);
    let url = format!("{}{}", node.trim_end_matches('/'), req.path);
    let mut out = http.request(method, url).body(req.body.clone());
    for (name, value) in req.headers {
        if forwardable(name) {
            out = out.header(name, value);
        }
    }
    for (name, value) in extra {
        out = out.header(*name, *value);
    }
    let resp = out.send().await?;
    let status = resp.status();
    let mut headers = HeaderMap::new();
    for (name, value) in resp.headers() {
        // A HEAD answer has no body, so its length is the upstream's to tell.
        if forwardable(name) || (head && name == reqwest::header::CONTENT_LENGTH) {
            headers.append(name.clone(), value.clone());
        }
    }
    let body = resp.bytes().await?;
    Ok(Answer {
        status,
        body,
        extra: headers,
    })
}

/// The response for an answer `node` gave, naming the node in `x-quiver-node`.
pub fn respond(node: &str, answer: Answer<HeaderMap>) -> Response {
    let mut resp = Response::new(Body::from(answer.body));
    *resp.status_mut() =
        StatusCode::from_u16(answer.status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    *resp.headers_mut() = answer.extra;
    if let Ok(v) = HeaderValue::from_str(node) {
        resp.headers_mut().insert(NODE_HEADER, v);
    }
    resp
}
